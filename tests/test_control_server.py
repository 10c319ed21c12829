"""ControlNet over the wire: `serve --demo` (with its tiny ControlNet and depth
estimator) driven by the CLI and a raw websocket."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from PIL import Image
from websockets.sync.client import connect

from protocol import PROTOCOL_VERSION, Error, Hello, Welcome, decode, encode
from tests.conftest import run_cli

pytestmark = pytest.mark.slow
CONTROLNET = "paintbridge-demo-control"


def _control_png(path, size=(80, 48)):
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    Image.fromarray(np.dstack([x * 3 % 256, y * 5 % 256, (x + y) % 256]).astype(np.uint8)).save(path)
    return path


def test_models_list_the_controlnet_with_its_family(server):
    done = run_cli("models", "--server", server.url)
    assert done.returncode == 0, done.stderr
    line = next(row for row in done.stdout.splitlines() if CONTROLNET in row)
    assert "controlnet" in line and "sd15" in line


def test_generate_with_a_unit_writes_infotext_that_reads_back(server, tmp_path):
    control = _control_png(tmp_path / "control.png")
    first = tmp_path / "first.png"
    common = ["--server", server.url, "--prompt", "a fox", "--steps", "3", "--seed", "3", "--width", "64",
              "--height", "64"]
    done = run_cli("generate", *common, "--control", f"{CONTROLNET}={control}:0.8:0:0.5",
                   "--control-preprocess", "canny", "--control-mode", "prompt", "--out", str(first))
    assert done.returncode == 0, done.stderr
    text = Image.open(first).info["parameters"]
    assert ('ControlNet 0: "Module: canny, Model: paintbridge-demo-control, Weight: 0.8, Resize Mode: Crop and '
            'Resize, Guidance Start: 0, Guidance End: 0.5, Control Mode: My prompt is more important"') in text
    plain = tmp_path / "plain.png"
    assert run_cli("generate", *common, "--out", str(plain)).returncode == 0
    assert not np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(plain)))
    # --from-png restores the unit's settings; the control image comes with --control (its model from the PNG).
    again = tmp_path / "again.png"
    done = run_cli("generate", "--server", server.url, "--from-png", str(first), "--control", f"={control}",
                   "--out", str(again))
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    assert Image.open(again).info["parameters"] == text


def test_img2img_depth_from_the_init_image(server, tmp_path):
    image = _control_png(tmp_path / "init.png", (64, 64))
    out = tmp_path / "depth2img.png"
    done = run_cli("img2img", "--server", server.url, "--image", str(image), "--steps", "2", "--seed", "1",
                   "--control", f"{CONTROLNET}=", "--control-preprocess", "depth", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "Module: depth" in Image.open(out).info["parameters"]


def test_preprocess_command(server, tmp_path):
    image = _control_png(tmp_path / "a.png", (90, 60))
    out = tmp_path / "d.png"
    done = run_cli("preprocess", "--server", server.url, "--kind", "depth", "--image", str(image), "--out", str(out))
    assert done.returncode == 0, done.stderr
    depth = np.asarray(Image.open(out).convert("RGB"))
    assert depth.shape == (60, 90, 3) and depth.min() == 0 and depth.max() == 255


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--control", "nope=x.png"], "no such file"),
        (["--control", "no-equals-sign"], "MODEL=IMAGE"),
        (["--control", "missing-model=CONTROL"], "no controlnet named 'missing-model'"),
        (["--control", f"{CONTROLNET}=CONTROL", "--sampler", "Euler z"], "unknown sampler"),
        (["--control", f"{CONTROLNET}=CONTROL:1:0.9:0.1"], "after end"),
    ],
)
def test_cli_control_errors_are_one_line(server, tmp_path, args, needle):
    control = str(_control_png(tmp_path / "c.png"))
    args = [a.replace("CONTROL", control) for a in args]
    done = run_cli("generate", "--server", server.url, "--steps", "1", "--out", str(tmp_path / "x.png"), *args)
    assert done.returncode != 0
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_bad_control_image_is_refused_over_the_socket(server):
    image = {"width": 8, "height": 8, "channels": 3, "data": b"\0" * 100}
    with connect(server.url) as ws:
        ws.send(encode(Hello(protocol=PROTOCOL_VERSION)))
        assert isinstance(decode(ws.recv()), Welcome)
        request = {"kind": "txt2img", "steps": 1, "controls": [{"model": CONTROLNET, "image": image}]}
        ws.send(msgpack.packb({"type": "submit", "request": request}))
        reply = decode(ws.recv())
        assert isinstance(reply, Error) and reply.code == "invalid_request"
        assert reply.field.startswith("controls[0].image") and "8x8x3 needs 192" in reply.message  # relative to the request
        ok = {"width": 8, "height": 8, "channels": 3, "data": b"\0" * 192}
        request["controls"] = [{"model": CONTROLNET, "image": ok}] * 5
        ws.send(msgpack.packb({"type": "submit", "request": request}))
        reply = decode(ws.recv())
        assert reply.code == "invalid_request" and reply.field.endswith("controls") and "at most 4" in reply.message
