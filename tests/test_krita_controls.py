"""The plugin's control-layer logic (plain Python), and its requests on the real demo server."""

from __future__ import annotations

import numpy as np
import pytest

from krita_plugin.paintbridge import controls, requests
from protocol import RawImage


def _raw(w: int, h: int) -> RawImage:
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.dstack([x * 4 % 256, y * 4 % 256, (x + y) % 256, np.full((h, w), 255)]).astype(np.uint8)
    return RawImage(w, h, 4, pixels.tobytes())


SERVER_NETS = [("control_v11p_sd15_canny", "sd15"), ("controlnet-depth-sdxl-1.0", "sdxl"),
               ("control_v11f1p_sd15_depth", "sd15"), ("control_v11f1e_sd15_tile", "sd15")]


def test_units_from_layers_pick_the_model_and_preprocessor():
    layers = [controls.ControlLayer("a", "depth", strength=0.6, end=0.5),
              controls.ControlLayer("b", "depth", is_control_image=True),
              controls.ControlLayer("c", "tile", model="my_tile", mode="control")]
    units = controls.control_units(layers, lambda layer: _raw(30, 20), SERVER_NETS, "sd15")
    assert [(u.model, u.preprocess, u.strength, u.end, u.mode) for u in units] == [
        ("control_v11f1p_sd15_depth", "depth", 0.6, 0.5, "balanced"),
        ("control_v11f1p_sd15_depth", "none", 1.0, 1.0, "balanced"),
        ("my_tile", "tile", 1.0, 1.0, "control"),
    ]
    assert controls.pick_model("depth", SERVER_NETS, "sdxl") == "controlnet-depth-sdxl-1.0"
    with pytest.raises(ValueError, match="no scribble ControlNet for sd15"):
        controls.control_units([controls.ControlLayer("d", "scribble")], lambda layer: _raw(8, 8), SERVER_NETS, "sd15")
    with pytest.raises(ValueError, match="unknown control kind"):
        controls.ControlLayer("e", "pose")


def test_every_request_kind_carries_the_units_and_validates():
    units = controls.control_units([controls.ControlLayer("a", "canny")], lambda layer: _raw(50, 40), SERVER_NETS,
                                   "sd15")
    settings = requests.Settings(prompt="x", steps=2)
    image = _raw(64, 64)
    mask = RawImage(64, 64, 1, bytes(64 * 64))
    for request in (requests.generate_request(settings, 64, 64, None),
                    requests.generate_request(requests.Settings(strength=0.5), 64, 64, image),
                    requests.inpaint_request(settings, image, mask),
                    requests.upscale_request(requests.Settings(upscale_denoise=0.3), image)):
        sent = controls.with_controls(request, units)
        sent.validate()
        assert sent.controls[0].model == "control_v11p_sd15_canny" and sent.controls[0].preprocess == "canny"
    pre = controls.preprocess_request("depth", image)
    pre.validate()
    assert pre.kind == "preprocess" and pre.controls[0].preprocess == "depth"


@pytest.mark.slow
def test_control_layer_from_the_canvas_then_generate_with_it(server):
    from protocol.shell.client import Client

    with Client(server.url) as client:
        listing = client.list_models()
        nets = [(m.name, m.family) for m in listing.models if m.kind == "controlnet"]
        depth_layer = client.run(controls.preprocess_request("depth", _raw(72, 48)))
        assert (depth_layer.images[0].width, depth_layer.images[0].height) == (72, 48)
        layer = controls.ControlLayer("canvas-depth", "depth", model=nets[0][0], is_control_image=True, strength=0.9)
        units = controls.control_units([layer], lambda _: depth_layer.images[0], nets, "sd15")
        request = controls.with_controls(requests.generate_request(requests.Settings(prompt="a hill", steps=2),
                                                                   64, 64, None), units)
        result = client.run(request)
    assert 'ControlNet 0: "Module: none, Model: paintbridge-demo-control, Weight: 0.9' in result.infotext


def test_resolve_names_the_controlnet_on_the_ui_thread_and_skips_disabled_ones():
    layers = [controls.ControlLayer("a", "canny"), controls.ControlLayer("b", "depth", enabled=False),
              controls.ControlLayer("c", "tile", model="control_v11f1e_sd15_tile", strength=0.4)]
    chosen = controls.resolve(layers, SERVER_NETS, "sd15")
    assert [(c.layer_id, c.model, c.strength) for c in chosen] == [
        ("a", "control_v11p_sd15_canny", 1.0), ("c", "control_v11f1e_sd15_tile", 0.4)]
    with pytest.raises(ValueError, match="no scribble ControlNet for sd15 on the server: choose one"):
        controls.resolve([controls.ControlLayer("d", "scribble")], SERVER_NETS, "sd15")
    with pytest.raises(ValueError, match="is for sdxl, the checkpoint is sd15"):
        controls.resolve([controls.ControlLayer("e", "depth", model="controlnet-depth-sdxl-1.0")], SERVER_NETS, "sd15")
    # The model combo: the kind's nets first, then the family's others; never another family's.
    assert controls.choices("depth", SERVER_NETS, "sd15") == [
        "control_v11f1p_sd15_depth", "control_v11p_sd15_canny", "control_v11f1e_sd15_tile"]
    assert controls.choices("canny", SERVER_NETS, "sdxl") == ["controlnet-depth-sdxl-1.0"]


def test_units_go_where_the_server_takes_them():
    image = _raw(64, 64)
    assert controls.applies(requests.upscale_request(requests.Settings(upscale_denoise=0.3), image))
    assert not controls.applies(requests.upscale_request(requests.Settings(upscale_denoise=0.0), image))
    assert controls.applies(requests.generate_request(requests.Settings(), 64, 64, None))


def test_the_list_is_saved_with_the_document_and_read_back_tolerantly():
    layers = [controls.ControlLayer("{1}", "lineart", model="m", strength=0.7, start=0.1, end=0.8, mode="prompt",
                                    is_control_image=True, enabled=False)]
    assert controls.from_json(controls.to_json(layers)) == layers
    # A newer plugin's fields and unknown kinds are left out, broken data is no list at all.
    data = b'{"version": 2, "controls": [{"layer_id": "x", "kind": "pose"}, {"layer_id": "y", "kind": "depth", "new": 1}]}'
    assert controls.from_json(data) == [controls.ControlLayer("y", "depth")]
    assert controls.from_json(b"\xff not json") == [] and controls.from_json(b"") == []
    assert controls.layer_name("canny").startswith(controls.MARK)


def test_every_control_kind_has_a_label_for_the_docker_menu():
    # The docker builds its Control menu from KINDS: a kind without a label stopped the docker
    # from being created at all (a KeyError inside Krita).
    assert set(controls.KIND_LABELS) == set(controls.KINDS)
