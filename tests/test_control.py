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

    from engine.demo.builder import build_controlnet, build_depth_estimator, build_hed

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
    build_hed(root / "annotators" / "ControlNetHED.pth")
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


def test_normal_map_follows_the_extensions_normal_midas(models, monkeypatch):
    from engine import preprocess

    image = _gradient(64, 48)
    out = preprocess.run("normal", image, models)  # through the tiny estimator
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8 and len(np.unique(out.reshape(-1, 3), axis=0)) > 10
    # On a known depth: a left-to-right ramp (near on the right) and a background strip at the left.
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (48, 1))
    monkeypatch.setattr(preprocess, "relative_depth", lambda *a, **k: ramp)
    normal = preprocess.run("normal", image, models).astype(float)
    slope = 8 * 255 / 63  # Sobel's 3x3 kernel reads 8x the per-pixel slope of the depth in 0..255
    nx = slope / np.hypot(slope, preprocess.NORMAL_Z)
    assert np.abs(normal[10:-10, 20:-2] - [nx * 127.5 + 127.5, 127.5, 127.5 + 127.5 * (1 - nx**2) ** 0.5]).max() <= 1
    assert (normal[:, :6] == [128, 128, 255]).all()  # depth below 10%: background, facing the viewer


def test_softedge_hed_from_the_annotators_file(models, tmp_path):
    import torch

    from engine import preprocess, softedge

    image = _gradient(70, 50)
    edges = preprocess.run("softedge", image, models)
    assert edges.shape == (50, 70, 3) and edges.dtype == np.uint8
    assert np.array_equal(edges[..., 0], edges[..., 2]) and edges.max() > edges.min()
    state = torch.load(models / "annotators" / "ControlNetHED.pth", weights_only=True)
    net = softedge._network(dict(state))
    assert set(net.state_dict()) == set(state)  # every tensor of the file is used, none missing
    # The fusion: the sigmoid of the mean of the five side outputs. With the convolutions zeroed
    # every side output is its projection's bias.
    biases = [-2.0, -1.0, 0.0, 1.0, 4.0]
    zeroed = {k: torch.zeros_like(v) for k, v in state.items()}
    for i, b in enumerate(biases, 1):
        zeroed[f"block{i}.projection.bias"] = torch.tensor([b])
    (tmp_path / "annotators").mkdir()
    torch.save(zeroed, tmp_path / "annotators" / "ControlNetHED.pth")
    flat = softedge.softedge(image, tmp_path / "annotators")
    assert (flat == round(255 / (1 + np.exp(-np.mean(biases))))).all()
    # A file carrying code is refused, unrun; an absent one is named.
    class Evil:
        def __reduce__(self):
            return (print, ("never",))

    torch.save({"norm": Evil()}, tmp_path / "annotators" / "ControlNetHED.pth")
    with pytest.raises(EngineError) as err:
        softedge.softedge(image, tmp_path / "annotators")
    assert err.value.code == "unsafe_file"
    (tmp_path / "annotators" / "ControlNetHED.pth").unlink()
    with pytest.raises(EngineError) as err:
        preprocess.check("softedge", tmp_path, "controls[0].preprocess")
    assert err.value.code == "unknown_model" and "ControlNetHED.pth" in err.value.message
    assert err.value.field == "controls[0].preprocess"


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
    """Two tiny depth models: one carrying its MiDaS as the original does, one
    pruned of it (its depth comes from annotators/)."""
    from engine.demo.builder import build_depth_checkpoint
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    root = tmp_path_factory.mktemp("depth-models")
    build_depth_checkpoint(root / "Stable-diffusion" / "512-depth-ema.safetensors")
    build_depth_checkpoint(root / "Stable-diffusion" / "512-depth-pruned.safetensors", midas=False)
    shutil.copytree(models / "annotators", root / "annotators")
    return Engine(Registry(root).scan(), ModelManager(device="cpu"))


def _depth_job(model: str, **kw) -> JobParams:
    return JobParams(**{"kind": "img2img", "image": _gradient(80, 64), "steps": 2, "seed": 1, "strength": 0.8,
                        "prompt": "a room", "model": model, **kw})


def test_sd2_depth_model_is_recognised_and_takes_the_depth_from_its_own_midas(depth_engine, monkeypatch):
    from engine import midas, preprocess
    from engine.kpipeline import depth_latent
    from engine.registry import CHECKPOINT

    entries = {e.name: e for e in depth_engine.registry.list(CHECKPOINT)}
    assert set(entries) == {"512-depth-ema", "512-depth-pruned"}
    assert all(e.family.name == "sd2" and e.depth and not e.inpainting for e in entries.values())

    def no_annotators(*args, **kw):
        raise AssertionError("the checkpoint's own MiDaS should give the depth")

    monkeypatch.setattr(preprocess, "depth", no_annotators)
    out = depth_engine.run(_depth_job("512-depth-ema"))
    assert out.images[0].shape == (64, 80, 4)
    model = depth_engine.models.loaded
    assert model.depth and model.base.unet.config.in_channels == 5
    net = model.attached["midas"]
    assert net.config.is_hybrid and type(net).__name__ == "DPTForDepthEstimation"
    # The map: MiDaS's input size (the picture kept in aspect near 64 px, multiples of 32), a real relief.
    image = _gradient(80, 64)
    depth = midas.depth_map(model, image, depth_engine.registry.root, "cpu")
    expected = midas.processor(net.config)(images=[image], return_tensors="pt")["pixel_values"].shape[2:]
    assert depth.shape == tuple(expected) and all(side % 32 == 0 for side in depth.shape)
    assert np.isfinite(depth).all() and depth.min() >= 0 and depth.max() > depth.min()  # MiDaS ends in a ReLU
    latent = depth_latent(depth, 8, 10, "cpu")
    assert latent.shape == (1, 1, 8, 10) and float(latent.min()) == -1.0 and float(latent.max()) == 1.0
    # The fifth channel steers the result: another depth, another picture.
    monkeypatch.setattr(midas, "depth_map", lambda *a, **k: np.zeros((64, 64), np.float32))
    assert not np.array_equal(out.images[0], depth_engine.run(_depth_job("512-depth-ema")).images[0])


def test_every_tensor_of_the_checkpoints_midas_is_used(depth_engine):
    import re

    import torch
    from safetensors import safe_open

    from engine import midas
    from engine.registry import CHECKPOINT

    entry = depth_engine.registry.get("512-depth-ema", CHECKPOINT)
    with safe_open(str(entry.path), framework="pt") as f:
        original = {k[len(midas.PREFIX):]: f.get_tensor(k) for k in f.keys() if k.startswith("depth_model.")}
    converted, used = midas.to_transformers(original)
    assert set(original) - used == {"pretrained.model.head.weight", "pretrained.model.head.bias"}  # timm's classifier
    net = midas.build(entry, "cpu", torch.float32)
    state = net.state_dict()
    assert set(state) == set(converted) and all(torch.equal(state[k], converted[k]) for k in state)  # none missing
    # The original layout (MiDaS's DPT with timm's vit_base_resnet50_384), spelled out, and where a few land.
    patterns = {re.sub(r"\d+", "#", k) for k in original}
    assert patterns >= {
        "pretrained.model.patch_embed.backbone.stem.conv.weight",
        "pretrained.model.patch_embed.backbone.stages.#.blocks.#.downsample.conv.weight",
        "pretrained.model.patch_embed.backbone.stages.#.blocks.#.norm#.weight", "pretrained.model.patch_embed.proj.weight",
        "pretrained.model.pos_embed", "pretrained.model.cls_token", "pretrained.model.blocks.#.attn.qkv.weight",
        "pretrained.model.blocks.#.mlp.fc#.weight", "pretrained.act_postprocess#.#.project.#.weight",
        "scratch.layer#_rn.weight", "scratch.refinenet#.resConfUnit#.conv#.weight", "scratch.output_conv.#.weight",
    }
    qkv = original["pretrained.model.blocks.1.attn.qkv.weight"]
    hidden = qkv.shape[1]
    assert torch.equal(state["dpt.encoder.layer.1.attention.attention.key.weight"], qkv[hidden : 2 * hidden])
    assert torch.equal(state["neck.fusion_stage.layers.0.residual_layer2.convolution1.weight"],
                       original["scratch.refinenet4.resConfUnit2.conv1.weight"])  # refinenet4 fuses first
    assert torch.equal(state["neck.reassemble_stage.layers.3.resize.weight"], original["pretrained.act_postprocess4.4.weight"])
    assert torch.equal(state["dpt.embeddings.backbone.bit.encoder.stages.1.layers.1.conv2.weight"],
                       original["pretrained.model.patch_embed.backbone.stages.1.blocks.1.conv2.weight"])
    assert torch.equal(state["head.head.4.weight"], original["scratch.output_conv.4.weight"])


def test_the_bundled_config_is_dpt_hybrid_at_its_real_size():
    import json

    import torch
    from transformers import DPTConfig, DPTForDepthEstimation

    from engine import midas

    with torch.device("meta"):
        net = DPTForDepthEstimation(DPTConfig.from_dict(json.loads(midas.CONFIG.read_text())))
    state = net.state_dict()
    assert 122e6 < sum(v.numel() for v in state.values()) < 123e6  # DPT-Hybrid's 123 M parameters
    assert state["dpt.embeddings.position_embeddings"].shape == (1, 577, 768)  # 24 x 24 patches + the class token
    assert state["dpt.embeddings.projection.weight"].shape == (768, 1024, 1, 1)  # BiT stage 3 -> ViT-B


def test_a_depth_model_pruned_of_its_midas_takes_the_annotators_estimator(depth_engine, monkeypatch):
    from engine import preprocess

    seen = []
    real = preprocess.depth

    def spy(image, root, device="cpu"):
        seen.append(image.shape)
        return real(image, root, device)

    monkeypatch.setattr(preprocess, "depth", spy)
    assert depth_engine.run(_depth_job("512-depth-pruned")).images[0].shape == (64, 80, 4)
    assert seen == [(64, 80, 3)]  # the init image at the working size
    assert depth_engine.models.loaded.attached["midas"] is None


def test_sd2_depth_model_refusals(depth_engine, tmp_path):
    for params, field in (
        (JobParams(kind="txt2img", steps=1, model="512-depth-ema"), "model"),
    ):
        with pytest.raises(EngineError) as err:
            depth_engine.check(params)
        assert err.value.code == "invalid_request" and err.value.field == field
    shutil.rmtree(depth_engine.registry.root / "annotators")
    depth_engine.check(_depth_job("512-depth-ema"))  # its own MiDaS: no annotators needed
    with pytest.raises(EngineError) as err:
        depth_engine.check(_depth_job("512-depth-pruned"))
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


# -- regions and units together ------------------------------------------------------------
LEFT = np.zeros((64, 64), np.uint8)
LEFT[:, :32] = 255
OTHER = "a red dog on the beach, oil painting"


@pytest.mark.parametrize("mode", ["balanced", "control"])
def test_a_whole_image_region_with_the_base_prompt_and_a_unit_is_the_unit_alone(engine, mode):
    from engine.params import RegionParams

    alone = run(engine, [unit(mode=mode)]).astype(np.int16)
    same = run(engine, [unit(mode=mode)], regions=[RegionParams(np.full((64, 64), 255, np.uint8), "a cat")])
    # The same UNet and ControlNet inputs, batched in another order: equal up to float rounding.
    assert np.abs(alone - same.astype(np.int16)).max() <= 2


def test_regions_and_a_unit_together(engine):
    from engine.params import RegionParams

    regions = [RegionParams(LEFT, OTHER)]
    both = run(engine, [unit()], regions=regions).astype(np.int16)
    only_regions = run(engine, regions=regions).astype(np.int16)
    only_unit = run(engine, [unit()]).astype(np.int16)
    assert np.abs(both - only_regions).mean() > 1.0 and np.abs(both - only_unit).mean() > 1.0
    # The region's prompt still shows mostly inside its mask with the unit on.
    change = np.abs(both - only_unit)[..., :3].mean(axis=2)
    assert change[:, :24].mean() > 2 * change[:, 40:].mean()


def test_each_region_prompt_gets_residuals_under_its_own_text(engine, monkeypatch):
    """One ControlNet call per UNet call, with the batch's own text per entry
    (base, region and their shared negative) and the control image for each."""
    import torch

    from engine import control
    from engine.params import RegionParams

    calls = []
    original = control.Control.residuals

    def spy(self, x, t, hidden, added, guided, crops=None, conditional=None):
        calls.append((x.shape[0], hidden.clone(), conditional))
        return original(self, x, t, hidden, added, guided, crops, conditional)

    monkeypatch.setattr(control.Control, "residuals", spy)
    run(engine, [unit()], regions=[RegionParams(LEFT, OTHER)], steps=1)
    (batch, hidden, conditional), = calls  # Euler a, one step: one model call
    assert batch == 3 and list(conditional) == [True, False, True]  # "a cat", the empty negative, the region
    assert not torch.equal(hidden[0], hidden[2]) and not torch.equal(hidden[0], hidden[1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["img2img", "inpaint", "hires", "upscale"])
def test_regions_and_units_in_every_job_kind(engine, kind):
    from engine.params import RegionParams

    case = _job_kinds().get(kind) or {"kind": "upscale", "image": _gradient(64, 64),
                                      "upscale": UpscaleParams(scale=1.0, upscaler="Lanczos", denoise=0.8, tile=4,
                                                               overlap=1, tile_batch=3)}
    regions = [RegionParams(LEFT, OTHER)]  # the input's size (txt2img: stretched to the picture)
    both = run(engine, [unit()], regions=regions, **case).astype(np.int16)
    assert np.abs(both - run(engine, regions=regions, **case)).mean() > 0.5
    assert np.abs(both - run(engine, [unit()], **case)).mean() > 0.5
