"""Upscale mode's "Restore (SUPIR)" (krita_plugin/paintbridge/restore.py): the slider's
mapping, the request the plugin sends, the option shown only when the server lists a
SUPIR model, and the server's answers to it (tiny SDXL + SUPIR models, the users' code path)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from krita_plugin.paintbridge import requests, restore
from protocol import ModelInfo, RawImage


def _raw(w: int, h: int) -> RawImage:
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.dstack([x * 9 % 256, y * 9 % 256, (x + y) * 5 % 256, np.full((h, w), 255)]).astype(np.uint8)
    return RawImage(w, h, 4, pixels.tobytes())


MODELS = [ModelInfo("sd15-model", "checkpoint", "sd15", 512), ModelInfo("xl-a", "checkpoint", "sdxl", 1024),
          ModelInfo("xl-b", "checkpoint", "sdxl", 1024), ModelInfo("SUPIR-v0Q", "supir", "sdxl", 1024),
          ModelInfo("4x-ultra", "upscaler")]


def test_slider_maps_fidelity_to_detail_on_tau_r():
    assert restore.tau(0) == 1.0 and restore.tau(50) == 4.0 and restore.tau(100) == 16.0
    values = [restore.tau(s) for s in range(0, 101, 5)]
    assert values == sorted(values) and len(set(values)) == len(values)  # monotone: right = more detail
    assert all(restore.slider(restore.tau(s)) == s for s in range(101))
    assert restore.tau(-5) == 1.0 and restore.tau(400) == 16.0
    assert restore.describe(0).startswith("fidelity") and restore.describe(50) == "balanced (τ 4)"
    assert restore.describe(100).startswith("detail")


def test_the_option_needs_a_supir_model_and_picks_an_sdxl_checkpoint():
    assert restore.supir_models(MODELS) == ["SUPIR-v0Q"]
    assert restore.supir_models([m for m in MODELS if m.kind != "supir"]) == []
    assert restore.pick_checkpoint(MODELS, "sd15-model") == "xl-a"  # the docker's SD1.5 model cannot restore
    assert restore.pick_checkpoint(MODELS, "xl-b") == "xl-b"
    assert restore.pick_checkpoint(MODELS, "xl-a", wanted="xl-b") == "xl-b"
    assert restore.pick_checkpoint(MODELS[:1], "sd15-model") == ""


def test_request_carries_the_authors_settings_and_the_painters_choices():
    from engine import supir_upscale as engine_defaults

    settings = requests.Settings(prompt="a castle", negative_prompt="blurry", upscale_factor=3.0, upscaler="4x-ultra",
                                 steps=12, sampler="DPM++ 2M", cfg_scale=5.0)
    request = restore.supir_request(settings, _raw(40, 30), "SUPIR-v0Q", "xl-a", 25)
    request.validate()
    assert request.kind == "upscale" and request.model == "xl-a" and request.prompt == "a castle"
    assert (request.sampler, request.steps, request.cfg_scale) == ("Euler", engine_defaults.STEPS, engine_defaults.CFG)
    r = request.restore
    assert (r.supir, r.guidance, r.s_churn, r.s_noise, r.cfg_start) == (
        "SUPIR-v0Q", restore.tau(25), engine_defaults.S_CHURN, engine_defaults.S_NOISE, engine_defaults.CFG_START)
    assert request.upscale.scale == 3.0 and request.upscale.upscaler == "4x-ultra"
    assert request.upscale.tile == engine_defaults.TILE and request.upscale.tile - request.upscale.overlap == engine_defaults.STRIDE
    assert request.controls == []
    with pytest.raises(ValueError, match="SDXL checkpoint"):
        restore.supir_request(settings, _raw(8, 8), "SUPIR-v0Q", "", 50)


@pytest.fixture(scope="module")
def supir_models(tmp_path_factory):
    from engine.demo.builder import build_sdxl_folder
    from engine.demo.supir import build_supir_file

    root = tmp_path_factory.mktemp("krita-supir")
    folder = build_sdxl_folder(root / "checkpoints" / "tiny-xl")
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    build_supir_file(root / "SUPIR" / "SUPIR-v0Q.safetensors", unet, vae, seed=1)
    (root / "upscale_models" / "old").mkdir(parents=True)
    (root / "upscale_models" / "old" / "SUPIR-v0F.ckpt").write_bytes(b"a pickle: listed by its name, never opened")
    return root


def test_registry_lists_supir_files_with_their_kind(supir_models):
    from engine.registry import SUPIR, UPSCALER, Registry
    from engine.supir import find_supir

    registry = Registry(supir_models).scan()
    assert [(e.name, e.family.name) for e in registry.list(SUPIR)] == [("SUPIR-v0Q", "sdxl"), ("old/SUPIR-v0F", "sdxl")]
    assert registry.list(UPSCALER) == []
    assert find_supir(supir_models, "old/SUPIR-v0F").name == "SUPIR-v0F.ckpt"  # the listed name finds the file


@pytest.mark.slow
def test_the_plugins_supir_request_on_the_real_server(supir_models, tmp_path):
    """hello lists the SUPIR model; the plugin's request restores; without an SDXL
    checkpoint the server refuses clearly before queueing."""
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry
    from protocol.shell.client import Client, ClientError
    from tests.conftest import running_server

    engine = Engine(Registry(supir_models).scan(), ModelManager(device="cpu"))
    with running_server(engine, tmp_path) as (_server, url), Client(url) as client:
        models = client.list_models().models
        assert restore.supir_models(models) == ["SUPIR-v0Q", "old/SUPIR-v0F"]
        checkpoint = restore.pick_checkpoint(models, "")
        assert checkpoint == "tiny-xl"
        settings = requests.Settings(prompt="a cat", upscale_factor=2.0, upscaler="Lanczos")
        request = restore.supir_request(settings, _raw(24, 20), "SUPIR-v0Q", checkpoint, 50, steps=1)
        result = client.run(request)
        assert (result.images[0].width, result.images[0].height) == (48, 40)
        assert "SUPIR: SUPIR-v0Q, Restore guidance: 4" in result.infotext
        # An SD1.5 checkpoint named, or none at all: refused with the reason.
        request.model = "no-such-xl"
        with pytest.raises(ClientError, match="no-such-xl"):
            client.run(request)


def test_server_refuses_supir_without_an_sdxl_checkpoint(tmp_path):
    from engine.demo.builder import build_checkpoint
    from engine.errors import EngineError
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.params import JobParams, RestoreParams, UpscaleParams
    from engine.registry import Registry

    build_checkpoint(tmp_path / "checkpoints" / "sd15-only.safetensors")
    engine = Engine(Registry(tmp_path).scan(), ModelManager(device="cpu"))
    params = JobParams(kind="upscale", image=np.zeros((8, 8, 3), np.uint8), sampler="Euler",
                       upscale=UpscaleParams(scale=2, upscaler="Lanczos"), restore=RestoreParams(supir="SUPIR-v0Q"))
    with pytest.raises(EngineError) as info:
        engine.check(params)  # no checkpoint named: the first SDXL one, and there is none
    assert info.value.field == "model" and "SUPIR needs an SDXL checkpoint" in info.value.message
    assert "has none: put one in Stable-diffusion/ or checkpoints/" in info.value.message
    params.model = "sd15-only"
    with pytest.raises(EngineError) as info:
        engine.check(params)
    assert info.value.message == "SUPIR needs an SDXL checkpoint; sd15-only is sd15"
