"""Issue 13 over the socket and in the CLI: auto resolution, soft masks, expand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from protocol import JobRequest, ProtocolError, RawImage
from protocol.fields import from_wire
from protocol.infotext import parse_infotext
from protocol.shell.client import Client, ClientError
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("wire", "field"),
    [
        ({"resolution": "big"}, "resolution"),
        ({"kind": "img2img", "inpaint_mode": "fill"}, "inpaint_mode"),
        ({"kind": "img2img", "result_alpha": "mask"}, "result_alpha"),
        ({"inpaint_mode": "erase"}, "inpaint_mode"),
        ({"mask_feather": -2}, "mask_feather"),
        ({"kind": "img2img", "mask_grow": 8}, "mask_grow"),
        ({"kind": "img2img", "hires": {}}, "hires"),  # hires on refine: only as auto's second pass
        ({"hires": {"resize_width": 100}}, "hires.resize_width"),
    ],
)
def test_new_fields_are_validated(wire, field):
    image = RawImage(8, 8, 4, bytes(256)).to_wire()
    if wire.get("kind") == "img2img":
        wire = {**wire, "image": image}
    with pytest.raises(ProtocolError) as caught:
        from_wire(JobRequest, wire).validate()
    assert caught.value.field == field


def test_protocol_2_requests_mean_what_they_meant():
    request = from_wire(JobRequest, {"kind": "txt2img"})
    assert (request.resolution, request.inpaint_mode, request.mask_grow, request.mask_feather,
            request.result_alpha) == ("exact", "original", 0, 0, "opaque")
    auto = from_wire(JobRequest, {"kind": "img2img", "resolution": "auto", "image": RawImage(8, 8, 4, bytes(256)).to_wire(),
                                  "hires": {"denoise": 0.4}})
    auto.validate()  # hires as the second pass of an auto refine


def test_selection_refine_over_the_socket_comes_back_as_a_layer(server):
    yy, xx = np.mgrid[:64, :96]
    selection = np.clip((1.2 - np.hypot((xx - 48) / 30, (yy - 32) / 20)) / 0.4 * 255, 0, 255).astype(np.uint8)
    image = np.full((64, 96, 4), 180, np.uint8)
    request = JobRequest(kind="inpaint", image=RawImage(96, 64, 4, image.tobytes()),
                         mask=RawImage(96, 64, 1, selection.tobytes()), strength=0.5, steps=2, seed=1, mask_blur=0,
                         result_alpha="mask", preview=False)
    with Client(server.url) as client:
        result = client.run(request)
    layer = np.frombuffer(result.images[0].data, np.uint8).reshape(64, 96, 4)
    assert np.abs(layer[..., 3].astype(int) - selection).max() <= 1 and (layer[selection == 0] == 0).all()
    with Client(server.url) as client, pytest.raises(ClientError) as caught:
        client.run(JobRequest(kind="img2img", image=request.image, inpaint_mode="add"))
    assert caught.value.code == "invalid_request" and caught.value.field == "inpaint_mode"


def test_cli_generate_defaults_to_auto_resolution(server, tmp_path):
    out = tmp_path / "big.png"
    done = run_cli("generate", "--server", server.url, "--prompt", "a cat", "--width", "768", "--height", "640",
                   "--steps", "2", "--seed", "4", "--out", str(out))
    assert done.returncode == 0, done.stderr
    image = Image.open(out)
    assert image.size == (768, 640) and "hires" in done.stderr
    fields = parse_infotext(image.info["parameters"])
    assert fields["Size"] == "560x464" and fields["Hires resize"] == "768x640"


def test_cli_expand_right_and_soft_inpaint(server, tmp_path):
    source = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (30, 140, 60)).save(source)
    out = tmp_path / "wide.png"
    done = run_cli("inpaint", "--server", server.url, "--image", str(source), "--expand-right", "32", "--steps", "2",
                   "--strength", "1", "--mask-blur", "0", "--exact-size", "--out", str(out))
    assert done.returncode == 0, done.stderr
    wide = np.asarray(Image.open(out).convert("RGBA"))  # written as RGB: the result is opaque everywhere
    assert wide.shape == (64, 96, 4) and Image.open(out).mode == "RGB"
    assert (wide[:, :64] == (30, 140, 60, 255)).all()  # the painter's pixels, unchanged
    assert (wide[:, 64:, 3] == 255).all() and "Inpaint mode" not in Image.open(out).info["parameters"]
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    done = run_cli("inpaint", "--server", server.url, "--image", str(source), "--mask", str(tmp_path / "m.png"),
                   "--mode", "fill", "--grow", "auto", "--feather", "8", "--layer", "--steps", "2", "--strength", "1",
                   "--exact-size", "--out", str(tmp_path / "layer.png"))
    assert done.returncode == 0, done.stderr
    alpha = np.asarray(Image.open(tmp_path / "layer.png"))[..., 3]
    assert (alpha[16:48, 16:48] == 255).all() and alpha[0, 0] == 0 and 0 < alpha[32, 16 + 32 + 4 + 4] < 255
    bad = run_cli("inpaint", "--server", server.url, "--image", str(source), "--feather", "soft", "--out", str(out))
    assert bad.returncode == 2 and "--feather" in bad.stderr
    nomask = run_cli("inpaint", "--server", server.url, "--image", str(source), "--out", str(out))
    assert nomask.returncode == 1 and "--mask" in nomask.stderr
