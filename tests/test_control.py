"""ControlNet units, preprocessors and depth-to-image on tiny random-init models
saved as users have them (lllyasviel's `control_model.*` single files, diffusers
single files and folders, a transformers Depth Anything folder), loaded through
the users' code path."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.errors import EngineError
from engine.params import ControlParams, HiresParams, JobParams, UpscaleParams

FAST = {"steps": 2, "prompt": "a cat", "seed": 7, "sampler": "Euler a", "width": 64, "height": 64}


def _gradient(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), (x + y) % 256]).astype(np.uint8)


@pytest.fixture(scope="module")
def models(demo_models, tmp_path_factory) -> Path:
    from diffusers import UNet2DConditionModel  # noqa: F401  (imported once for the builders)

    from engine.demo.builder import build_controlnet, build_depth_estimator

    root = tmp_path_factory.mktemp("control-models")
    shutil.copytree(demo_models / "Stable-diffusion", root / "Stable-diffusion")
    build_controlnet(root / "ControlNet" / "control_v11p_sd15_tiny.safetensors", seed=0, layout="ldm")
    build_controlnet(root / "ControlNet" / "tiny_diffusers.safetensors", seed=0, layout="diffusers")
    build_controlnet(root / "controlnet" / "tiny_folder", seed=3, layout="folder")
    build_controlnet(root / "ControlNet" / "second.safetensors", seed=5, layout="ldm")
    xl_unet = {
        "block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1, "cross_attention_dim": 64,
        "attention_head_dim": [2, 4], "use_linear_projection": True, "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 80, "norm_num_groups": 32,
        "sample_size": 64,
    }
    build_controlnet(root / "ControlNet" / "tiny_xl.safetensors", layout="diffusers", unet=xl_unet)
    build_depth_estimator(root / "annotators" / "depth-anything-tiny")
    return root


@pytest.fixture(scope="module")
def engine(models):
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    return Engine(Registry(models).scan(), ModelManager(device="cpu"))


def unit(model: str = "control_v11p_sd15_tiny", image: np.ndarray | None = None, **kw) -> ControlParams:
    return ControlParams(model=model, image=_gradient(96, 64) if image is None else image, **kw)


def run(engine, controls=(), **kw) -> np.ndarray:
    return engine.run(JobParams(**{**FAST, **kw}, controls=list(controls))).images[0]


# -- models ----------------------------------------------------------------------
def test_registry_lists_controlnets_with_their_family(engine):
    from engine.registry import CONTROLNET

    found = {e.name: (e.family.name, e.format) for e in engine.registry.list(CONTROLNET)}
    assert found == {
        "control_v11p_sd15_tiny": ("sd15", "safetensors"),
        "tiny_diffusers": ("sd15", "safetensors"),
        "tiny_folder": ("sd15", "diffusers"),
        "second": ("sd15", "safetensors"),
        "tiny_xl": ("sdxl", "safetensors"),
    }


def test_original_layout_loads_the_same_weights_as_diffusers_layout(engine):
    import torch

    from engine.registry import CONTROLNET

    ldm, _ = engine.controlnets.get(engine.registry.get("control_v11p_sd15_tiny", CONTROLNET))
    dif, _ = engine.controlnets.get(engine.registry.get("tiny_diffusers", CONTROLNET))
    a, b = ldm.state_dict(), dif.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert any(float(v.abs().sum()) > 0 for k, v in a.items() if k.startswith("controlnet_down_blocks"))


@pytest.mark.slow  # several tiny jobs: ~10 s alone, over a minute on a loaded machine
def test_unit_changes_the_result_and_strength_zero_is_no_unit(engine):
    plain = run(engine)
    ldm = run(engine, [unit()])
    dif = run(engine, [unit("tiny_diffusers")])
    folder = run(engine, [unit("tiny_folder")])
    zero = run(engine, [unit(strength=0.0)])
    assert not np.array_equal(plain, ldm)
    assert np.array_equal(ldm, dif)  # the same weights in two layouts
    assert not np.array_equal(plain, folder)
    assert np.array_equal(plain, zero)


def test_guidance_range(engine):
    full = run(engine, [unit()], steps=4)
    half = run(engine, [unit(end=0.5)], steps=4)  # steps 0-2 of 4 (i/N <= 0.5, as the extension)
    late = run(engine, [unit(start=0.5)], steps=4)
    assert not np.array_equal(full, half) and not np.array_equal(half, late)
    assert not np.array_equal(run(engine, steps=4), half)


def test_control_modes_and_two_units(engine):
    full = run(engine, [unit()])
    prompt = run(engine, [unit(mode="prompt")])
    ctrl = run(engine, [unit(mode="control")])
    assert len({full.tobytes(), prompt.tobytes(), ctrl.tobytes()}) == 3
    two = run(engine, [unit(), unit("second", image=_gradient(64, 64)[::-1])])
    assert not np.array_equal(two, full) and not np.array_equal(two, run(engine, [unit("second", image=_gradient(64, 64)[::-1])]))


def test_step_fraction_follows_the_extension():
    from engine.control import Control

    c = Control([])
    c.schedule([999.0, 750.0, 500.0, 250.0])
    assert [c.fraction(t) for t in (999.0, 750.0, 600.0, 250.0, 10.0)] == [0.0, 0.25, 0.25, 0.75, 0.75]


def _job_kinds() -> dict[str, dict]:
    image = _gradient(64, 64)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    return {
        "img2img": {"kind": "img2img", "image": image, "strength": 0.8},
        "inpaint": {"kind": "inpaint", "image": image, "mask": mask, "strength": 1.0, "inpaint_padding": 8},
        "hires": {"kind": "txt2img", "hires": HiresParams(scale=1.5, denoise=0.6, upscaler="Latent")},
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["img2img", "inpaint", "hires"])
def test_every_job_kind_gets_the_units(engine, kind):
    case = _job_kinds()[kind]
    assert not np.array_equal(run(engine, **case), run(engine, [unit()], **case))


@pytest.mark.slow  # several tiny jobs: ~10 s alone, over a minute on a loaded machine
def test_tiled_upscale_gives_each_tile_its_crop(engine, monkeypatch):
    import torch

    from engine import control

    seen = []
    original = control.Control.residuals

    def spy(self, x, t, hidden, added, guided, crops=None):
        seen.append((crops, self.units[0].image.copy() if self.units else None))
        return original(self, x, t, hidden, added, guided, crops)

    image = _gradient(48, 48)
    options = UpscaleParams(scale=2.0, upscaler="Lanczos", denoise=0.5, tile=4, overlap=1, tile_batch=3)
    params = {"kind": "upscale", "image": image, "steps": 2, "upscale": options}
    plain = run(engine, **params)
    monkeypatch.setattr(control.Control, "residuals", spy)
    recorded = []
    real_net_call = None

    class Recorder(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        dtype = property(lambda self: self.net.dtype)
        device = property(lambda self: self.net.device)

        def forward(self, x, t, **kw):
            recorded.append(kw["controlnet_cond"].clone())
            return self.net(x, t, **kw)

    from engine.registry import CONTROLNET

    net, fam = engine.controlnets.get(engine.registry.get("control_v11p_sd15_tiny", CONTROLNET))
    real_net_call = net
    engine.controlnets._nets[engine.registry.get("control_v11p_sd15_tiny", CONTROLNET)] = (Recorder(net), fam)
    try:
        controlled = run(engine, [unit(image=_gradient(200, 200))], **params)
    finally:
        engine.controlnets._nets[engine.registry.get("control_v11p_sd15_tiny", CONTROLNET)] = (real_net_call, fam)
    assert controlled.shape == plain.shape == (96, 96, 4)
    assert not np.array_equal(plain, controlled)
    crops, full = next((c, im) for c, im in seen if c)
    assert full.shape == (96, 96, 3)  # the control image fitted to the whole upscale
    n = len(crops)
    hints = recorded[0]
    assert hints.shape[0] == 2 * n  # CFG: both halves
    for j, (y, x, h, w) in enumerate(crops):
        expected = torch.from_numpy(full[y * 8 : (y + h) * 8, x * 8 : (x + w) * 8]).permute(2, 0, 1).float() / 255
        assert torch.allclose(hints[n + j], expected, atol=1e-6)
    assert len({c for c, _ in seen if c for c in c}) > 4  # many different tiles


# -- fitting ------------------------------------------------------------------------
def test_fit_crop_and_resize_keeps_the_centre():
    from engine.control import fit

    wide = np.zeros((100, 200, 3), np.uint8)
    wide[:, 50:150] = 255  # the centre square is white
    out = fit(wide, 64, 64)
    assert out.shape == (64, 64, 3) and out.min() == 255
    filled = fit(wide, 64, 64, "resize and fill")
    assert filled.shape == (64, 64, 3) and filled[0, 32, 0] == 0 and filled[32, 32, 0] == 255
    assert fit(wide, 30, 40, "just resize").shape == (40, 30, 3)


# -- preprocessors and depth -----------------------------------------------------------
def test_depth_map_has_the_image_size_and_full_range(models):
    from engine import preprocess

    image = _gradient(130, 90)
    depth = preprocess.run("depth", image, models)
    assert depth.shape == (90, 130, 3) and depth.dtype == np.uint8
    assert depth.min() == 0 and depth.max() == 255
    assert np.array_equal(depth[..., 0], depth[..., 1])


def test_painted_layer_preprocessors(models):
    from engine import preprocess

    layer = np.full((32, 32, 3), 255, np.uint8)
    layer[10:12, :] = 0  # a black stroke on white
    layer[20, :] = 200  # a faint one
    line = preprocess.run("lineart", layer, models)
    scribble = preprocess.run("scribble", layer, models)
    assert line[11, 5, 0] == 255 and line[0, 0, 0] == 0 and 0 < line[20, 5, 0] < 128
    assert set(np.unique(scribble)) == {0, 255} and scribble[20, 5, 0] == 0
    edges = preprocess.run("canny", _gradient(64, 64) // 128 * 255, models)
    assert edges.shape == (64, 64, 3) and edges.max() == 255
    assert np.array_equal(preprocess.run("tile", layer, models), layer)


def test_depth_to_image_with_a_depth_controlnet_from_the_init_image(engine):
    image = _gradient(64, 64)
    plain = run(engine, kind="img2img", image=image, strength=0.8)
    depth = run(engine, [ControlParams(model="control_v11p_sd15_tiny", preprocess="depth")], kind="img2img",
                image=image, strength=0.8)
    assert not np.array_equal(plain, depth)


# -- refusals ------------------------------------------------------------------------
def test_refusals_before_any_work(engine, models, tmp_path):
    def refused(controls, **kw) -> EngineError:
        with pytest.raises(EngineError) as err:
            engine.check(JobParams(**{**FAST, **kw}, controls=controls))
        return err.value

    e = refused([unit("tiny_xl")])
    assert e.code == "invalid_request" and e.field == "controls[0].model" and "SDXL" in e.message
    e = refused([unit("nope")])
    assert e.code == "unknown_model" and e.field == "controls[0].model"
    e = refused([ControlParams(model="control_v11p_sd15_tiny")])
    assert e.code == "invalid_request" and e.field == "controls[0].image"
    e = refused([unit(image=np.zeros((8, 8, 2), np.uint8))])
    assert e.field == "controls[0].image"
    e = refused([unit(start=0.8, end=0.2)])
    assert e.field == "controls[0].start"
    e = refused([unit()], sampler="Euler z")
    assert e.code == "unknown_sampler" and e.field == "sampler"
    e = refused([unit(preprocess="sketchy")])
    assert e.field == "controls[0].preprocess"

    from engine.jobs import Engine
    from engine.registry import Registry

    bare = tmp_path / "bare"
    shutil.copytree(models / "Stable-diffusion", bare / "Stable-diffusion")
    shutil.copytree(models / "ControlNet", bare / "ControlNet")
    other = Engine(Registry(bare).scan(), engine.models)
    with pytest.raises(EngineError) as err:
        other.check(JobParams(**FAST, controls=[unit(preprocess="depth")]))
    assert err.value.code == "unknown_model" and "annotators" in err.value.message
    assert "model.safetensors" in err.value.message and "Depth-Anything-V2-Small-hf" in err.value.message


def test_pickled_code_in_a_controlnet_is_refused(engine, models, tmp_path):
    import torch

    from engine.jobs import Engine
    from engine.registry import Registry

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    root = tmp_path / "evil"
    shutil.copytree(models / "Stable-diffusion", root / "Stable-diffusion")
    (root / "ControlNet").mkdir()
    torch.save({"control_model.input_hint_block.0.weight": torch.zeros(1), "x": Evil()},
               root / "ControlNet" / "control_evil.pth", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    other = Engine(Registry(root).scan(), engine.models)
    with pytest.raises(EngineError) as err:
        other.run(JobParams(**FAST, controls=[unit("control_evil")]))
    assert err.value.code == "unsafe_file"


def test_infotext_reads_back(engine):
    from protocol.infotext import parse_infotext

    out = engine.run(JobParams(**FAST, controls=[unit(strength=0.7, end=0.5, mode="prompt")]))
    fields = parse_infotext(out.infotext)
    assert fields["ControlNet 0"] == ("Module: none, Model: control_v11p_sd15_tiny, Weight: 0.7, Resize Mode: Crop and "
                                      "Resize, Guidance Start: 0, Guidance End: 0.5, Control Mode: My prompt is more important")


# -- SD 2's depth model (512-depth-ema) ----------------------------------------------
@pytest.fixture(scope="module")
def depth_engine(models, tmp_path_factory):
    from engine.demo.builder import build_depth_checkpoint
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    root = tmp_path_factory.mktemp("depth-models")
    build_depth_checkpoint(root / "Stable-diffusion" / "512-depth-ema.safetensors")
    shutil.copytree(models / "annotators", root / "annotators")
    return Engine(Registry(root).scan(), ModelManager(device="cpu"))


def test_sd2_depth_model_is_recognised_and_runs_depth_to_image(depth_engine, monkeypatch):
    from engine import preprocess
    from engine.registry import CHECKPOINT

    (entry,) = depth_engine.registry.list(CHECKPOINT)
    assert entry.family.name == "sd2" and entry.depth and not entry.inpainting
    image = _gradient(80, 64)
    job = JobParams(kind="img2img", image=image, steps=2, seed=1, strength=0.8, prompt="a room")
    out = depth_engine.run(job)
    assert out.images[0].shape == (64, 80, 4)
    model = depth_engine.models.loaded
    assert model.depth and model.base.unet.config.in_channels == 5
    seen = []
    real = preprocess.depth

    def flat(image, root, device="cpu"):
        seen.append(image.shape)
        return np.zeros_like(real(image, root, device))

    monkeypatch.setattr(preprocess, "depth", flat)
    other = depth_engine.run(job)
    assert seen == [(64, 80, 3)]  # the init image at the working size
    assert not np.array_equal(out.images[0], other.images[0])  # the fifth channel steers the result


def test_sd2_depth_model_refusals(depth_engine, tmp_path):
    for params, field in (
        (JobParams(kind="txt2img", steps=1), "model"),
    ):
        with pytest.raises(EngineError) as err:
            depth_engine.check(params)
        assert err.value.code == "invalid_request" and err.value.field == field
    shutil.rmtree(depth_engine.registry.root / "annotators")
    with pytest.raises(EngineError) as err:
        depth_engine.check(JobParams(kind="img2img", image=_gradient(64, 64), steps=1))
    assert err.value.code == "unknown_model" and "annotators" in err.value.message


# -- SDXL ------------------------------------------------------------------------------
def test_sdxl_controlnet_steers_an_sdxl_checkpoint(models, tmp_path_factory):
    """The SDXL path: pooled text and size conditioning reach the ControlNet too,
    and an SD1.5 ControlNet is refused for an SDXL checkpoint."""
    from engine.demo.builder import build_sdxl_folder
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    root = tmp_path_factory.mktemp("xl-control")
    build_sdxl_folder(root / "checkpoints" / "tiny-xl")
    shutil.copytree(models / "ControlNet", root / "ControlNet")
    xl = Engine(Registry(root).scan(), ModelManager(device="cpu"))
    job = {**FAST, "width": 64, "height": 64}
    plain = xl.run(JobParams(**job)).images[0]
    steered = xl.run(JobParams(**job, controls=[unit("tiny_xl")])).images[0]
    assert not np.array_equal(plain, steered)
    with pytest.raises(EngineError) as err:
        xl.check(JobParams(**job, controls=[unit()]))
    assert err.value.field == "controls[0].model" and "SD 1.x ControlNet" in err.value.message


def test_controlnet_family_from_tensor_names():
    from engine.control import controlnet_family, looks_like_controlnet

    attn = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    sd15 = {"control_model.input_hint_block.0.weight": [16, 3, 3, 3], f"control_model.{attn}": [320, 768]}
    sd21 = {"input_hint_block.0.weight": [16, 3, 3, 3], attn: [320, 1024]}  # thibaud's layout, no prefix
    xl = {"controlnet_cond_embedding.conv_in.weight": [16, 3, 3, 3], "add_embedding.linear_1.weight": [1280, 2816]}
    assert [controlnet_family(s).name for s in (sd15, sd21, xl)] == ["sd15", "sd2", "sdxl"]
    assert not looks_like_controlnet({"model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3]})
    assert controlnet_family({"lora_unet_x.lora_down.weight": [4, 4]}) is None
