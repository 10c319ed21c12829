"""The jobs, on the tiny demo checkpoint loaded through the users' loading code."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.errors import EngineError, JobCancelled
from engine.params import JobParams

FAST = {"steps": 3, "prompt": "a cat", "negative_prompt": "blurry"}


def test_demo_checkpoint_is_a_single_file_in_ldm_layout(demo_models):
    from engine.registry import read_safetensors_shapes

    path = demo_models / "Stable-diffusion" / "paintbridge-demo.safetensors"
    keys = read_safetensors_shapes(path)
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert any(k.startswith("first_stage_model.decoder.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)


def test_single_file_load_reproduces_the_weights(engine, demo_models):
    """The LDM-layout file, converted back by diffusers, equals what was saved."""
    import json

    import torch
    from diffusers import UNet2DConditionModel

    from engine.registry import CHECKPOINT

    model = engine.models.get(engine.registry.list(CHECKPOINT)[0])
    sidecar = demo_models / "Stable-diffusion" / "paintbridge-demo.config"
    torch.manual_seed(0)  # the builder's seed: the UNet is built first
    unet = UNet2DConditionModel.from_config(json.loads((sidecar / "unet" / "config.json").read_text()))
    loaded = model.base.unet.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in unet.state_dict().items())


def test_txt2img_size_and_determinism(engine):
    a = engine.run(JobParams(width=128, height=96, seed=1234, **FAST))
    b = engine.run(JobParams(width=128, height=96, seed=1234, **FAST))
    c = engine.run(JobParams(width=128, height=96, seed=1235, **FAST))
    assert a.images[0].shape == (96, 128, 4) and a.images[0].dtype == np.uint8
    assert a.seeds == [1234]
    assert np.array_equal(a.images[0], b.images[0])
    assert not np.array_equal(a.images[0], c.images[0])
    assert "Seed: 1234" in a.infotext and "Size: 128x96" in a.infotext and "Negative prompt: blurry" in a.infotext


def test_default_size_is_native_and_random_seed_is_reported(engine):
    out = engine.run(JobParams(seed=-1, steps=1))
    assert out.images[0].shape[:2] == (512, 512)
    assert 0 <= out.seeds[0] < 2**32 and out.parameters["seed"] == out.seeds[0]


def test_batch_gets_consecutive_seeds(engine):
    out = engine.run(JobParams(width=64, height=64, seed=7, batch_size=2, **FAST))
    assert out.seeds == [7, 8] and len(out.images) == 2
    single = engine.run(JobParams(width=64, height=64, seed=8, **FAST))
    assert np.abs(out.images[1].astype(int) - single.images[0].astype(int)).max() <= 2


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DDIM"])
def test_required_samplers(engine, sampler):
    out = engine.run(JobParams(width=64, height=64, seed=3, sampler=sampler, **FAST))
    assert out.parameters["sampler"] == sampler and out.images[0].shape == (64, 64, 4)


def test_img2img_keeps_the_layer_size_and_strength_matters(engine):
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 4), dtype=np.uint8)
    weak = engine.run(JobParams(kind="img2img", image=image, strength=0.3, seed=5, steps=10, prompt="x"))
    strong = engine.run(JobParams(kind="img2img", image=image, strength=0.9, seed=5, steps=10, prompt="x"))
    assert weak.images[0].shape == (70, 90, 4)
    assert weak.parameters["denoising_strength"] == 0.3
    assert not np.array_equal(weak.images[0], strong.images[0])


def test_inpaint_leaves_mask_zero_pixels_byte_identical(engine):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (120, 160, 4), dtype=np.uint8)
    image[..., 3] = 255
    mask = np.zeros((120, 160), np.uint8)
    mask[40:80, 50:110] = 255
    mask[60, 30] = 128  # a soft pixel far from the rest
    out = engine.run(JobParams(kind="inpaint", image=image, mask=mask, strength=1.0, seed=9, mask_blur=4, **FAST))
    result = out.images[0]
    assert result.shape == image.shape
    assert np.array_equal(result[mask == 0], image[mask == 0])
    inside = mask == 255
    assert (result[inside] != image[inside]).any(axis=1).mean() > 0.5


def test_inpaint_with_an_all_black_mask_is_refused_before_any_work(engine):
    image = np.full((64, 64, 3), 90, np.uint8)
    params = JobParams(kind="inpaint", image=image, mask=np.zeros((64, 64), np.uint8), **FAST)
    for call in (engine.check, engine.run):
        with pytest.raises(EngineError) as caught:
            call(params)
        assert caught.value.code == "invalid_request" and caught.value.field == "mask"
        assert "nothing to repaint" in caught.value.message


def test_inpaint_infotext_size_is_the_result_size(engine):
    image = np.full((80, 96, 3), 90, np.uint8)
    mask = np.zeros((80, 96), np.uint8)
    mask[20:40, 30:50] = 255
    out = engine.run(JobParams(kind="inpaint", image=image, mask=mask, inpaint_padding=8, **FAST))
    assert out.images[0].shape[:2] == (80, 96)
    assert "Size: 96x80" in out.infotext


def test_progress_every_step_and_previews(engine):
    events = []
    engine.run(JobParams(width=64, height=64, seed=1, **FAST),
               lambda s, t, stage, p: events.append((s, t, p, stage)))
    assert [(s, t, stage) for s, t, _, stage in events] == [(1, 3, "sampling"), (2, 3, "sampling"),
                                                            (3, 3, "sampling"), (3, 3, "decoding")]
    assert events[0][2] is not None and events[0][2].shape == (8, 8, 4)


def test_batch_count_progress_says_which_batch(engine):
    stages = []
    engine.run(JobParams(width=64, height=64, seed=1, batch_count=2, steps=1, prompt="x"),
               lambda s, t, stage, p: stages.append(stage))
    assert stages == ["sampling, batch 1/2", "decoding, batch 1/2", "sampling, batch 2/2", "decoding, batch 2/2"]


def test_cancel_is_checked_every_step(engine):
    flag = threading.Event()
    steps = []

    def progress(step, total, stage, preview):
        steps.append(step)
        flag.set()

    with pytest.raises(JobCancelled):
        engine.run(JobParams(width=64, height=64, steps=20), progress, flag)
    assert steps == [1]


def test_unknown_sampler_and_model_fail_before_loading(engine):
    with pytest.raises(EngineError) as caught:
        engine.run(JobParams(sampler="Eular"))
    assert caught.value.code == "unknown_sampler" and "DPM++ 2M Karras" in caught.value.message
    with pytest.raises(EngineError) as caught:
        engine.run(JobParams(model="../../etc/passwd"))
    assert caught.value.code == "invalid_request" and caught.value.field == "model"
    with pytest.raises(EngineError) as caught:
        engine.run(JobParams(model="nope"))
    assert caught.value.code == "unknown_model" and "paintbridge-demo" in caught.value.message


def test_out_of_memory_is_typed_and_the_next_job_runs(engine, monkeypatch):
    import engine.jobs as jobs

    real = jobs._generate

    def explode(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(jobs, "_generate", explode)
    with pytest.raises(EngineError) as caught:
        engine.run(JobParams(width=64, height=64, **FAST))
    assert caught.value.code == "out_of_memory"
    assert engine.models.loaded is None  # freed
    monkeypatch.setattr(jobs, "_generate", real)
    assert engine.run(JobParams(width=64, height=64, **FAST)).images


@pytest.mark.parametrize(("steps", "strength"), [(2, 0.3), (1, 0.01), (5, 0.0)])
def test_low_strength_runs_at_least_one_step(engine, steps, strength):
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    events = []
    out = engine.run(JobParams(kind="img2img", image=image, steps=steps, strength=strength),
                     lambda *a: events.append(a[0]) if a[2] == "sampling" else None)
    assert out.images[0].shape == (64, 64, 4)
    if strength == 0:
        assert np.array_equal(out.images[0], image) and events == []
    else:
        assert events == [1]


def test_switching_back_to_the_previous_model_does_not_reload(demo_models, tmp_path):
    import shutil

    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    source = demo_models / "Stable-diffusion"
    for name in ("a", "b"):
        shutil.copy(source / "paintbridge-demo.safetensors", tmp_path / f"{name}.safetensors")
        shutil.copytree(source / "paintbridge-demo.config", tmp_path / f"{name}.config")
    manager = ModelManager(device="cpu")
    engine = Engine(Registry(tmp_path).scan(), manager)
    loads = []
    real_load = manager._load
    manager._load = lambda entry: loads.append(entry.name) or real_load(entry)
    for name in ("a", "b", "a", "b"):
        out = engine.run(JobParams(model=name, width=64, height=64, steps=1, seed=1))
        assert out.parameters["model"] == name
    assert loads == ["a", "b"]


@pytest.mark.parametrize(("bias", "v"), [(0.5, False), (0.0, False), (-2.0, True)])
def test_v_prediction_probe(bias, v):
    """SD2 768-v and 512-base files have the same keys: the UNet's answer at
    t=999 for an input of 0.5 tells them apart (the WebUI's test)."""
    import torch
    from diffusers import UNet2DConditionModel

    from engine.demo.builder import UNET
    from engine.models import predicts_v

    unet = UNet2DConditionModel.from_config(UNET)
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.fill_(bias)
    assert predicts_v(unet) is v


@pytest.mark.slow  # six jobs
def test_infotext_size_matches_the_image_for_every_job_kind(engine):
    """`--from-png` reads Size back: it must be the written picture's size (for the hires
    fix, as the WebUI writes it, the first pass's, with the upscale factor beside it)."""
    from engine.params import HiresParams, UpscaleParams
    from protocol.infotext import parse_infotext

    image = np.random.default_rng(3).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    mask = np.zeros((80, 96), np.uint8)
    mask[10:30, 20:50] = 255
    jobs = [
        JobParams(width=96, height=64, **FAST),
        JobParams(kind="img2img", image=image, strength=0.5, **FAST),
        JobParams(kind="img2img", image=image, width=128, strength=0.5, **FAST),
        JobParams(kind="inpaint", image=image, mask=mask, inpaint_padding=4, **FAST),
        JobParams(kind="upscale", image=image, upscale=UpscaleParams(scale=2, upscaler="Lanczos", denoise=0), **FAST),
    ]
    for params in jobs:
        out = engine.run(params)
        h, w = out.images[0].shape[:2]
        assert parse_infotext(out.infotext).get("Size", f"{w}x{h}") == f"{w}x{h}", (params.kind, out.infotext)
    hires = engine.run(JobParams(width=64, height=64, hires=HiresParams(scale=2, upscaler="Lanczos"), **FAST))
    fields = parse_infotext(hires.infotext)
    assert fields["Size"] == "64x64" and float(fields["Hires upscale"]) == 2 and hires.images[0].shape[:2] == (128, 128)


@pytest.mark.slow  # bf16 on this CPU: about a minute
def test_every_task_keeps_the_models_dtype(demo_models):
    """diffusers' from_pipe casts the shared components to float32 unless told:
    the first img2img / inpaint / upscale on a GPU turned the whole fp16 model
    into float32 (twice the VRAM; in bf16 the upscale's prompt went NaN). A bf16
    engine on the CPU shows the same: every task leaves the model in bf16."""
    import numpy as np
    import torch

    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.params import JobParams, UpscaleParams
    from engine.registry import Registry

    engine = Engine(Registry(demo_models).scan(), ModelManager(device="cpu", dtype=torch.bfloat16, keep_spare=False))
    image = np.full((64, 64, 3), 128, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    jobs = [JobParams(width=64, height=64, steps=2, seed=1),
            JobParams(kind="img2img", image=image, steps=2, seed=1),
            JobParams(kind="inpaint", image=image, mask=mask, steps=2, seed=1),
            JobParams(kind="upscale", image=image, steps=2, seed=1,
                      upscale=UpscaleParams(scale=2.0, upscaler="Lanczos", tile=8, overlap=4, vae_tile=64))]
    for job in jobs:
        out = engine.run(job)
        assert np.isfinite(out.images[0]).all() and out.images[0][..., :3].std() > 0, job.kind
        pipe = engine.models.loaded.base
        dtypes = {p.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()}
        assert dtypes == {torch.bfloat16}, (job.kind, dtypes)


def test_only_sdxls_vae_is_upcast_on_a_half_precision_device():
    """As diffusers: its SDXL pipelines upcast a float16 VAE whose config says
    force_upcast; its SD 1.x/2.x pipelines never do (AutoencoderKL defaults
    force_upcast to true and SD 1.5's config leaves it unset)."""
    import json

    from diffusers import AutoencoderKL

    from engine.families import FAMILIES
    from engine.vae_precision import needs_upcast

    def vae(family: str, **override):
        config = json.loads((FAMILIES[family].config_dir / "vae" / "config.json").read_text())
        # The file's own keys, with a tiny network: what is decided is read from the config.
        small = {"block_out_channels": [32], "down_block_types": ["DownEncoderBlock2D"],
                 "up_block_types": ["UpDecoderBlock2D"], "layers_per_block": 1, "norm_num_groups": 32}
        return AutoencoderKL.from_config({**config, **small, **override})

    assert vae("sd15").config.force_upcast  # diffusers' default, unset in the file
    assert not needs_upcast(vae("sd15")) and not needs_upcast(vae("sd2"))
    assert needs_upcast(vae("sdxl"))
    assert not needs_upcast(vae("sdxl", force_upcast=False))  # an fp16-fixed SDXL VAE's own config


def test_a_float16_decode_that_gives_nan_is_decoded_again_in_float32():
    """The WebUI's "revert VAE to 32-bit floats": the picture comes from the float32
    decode, and the VAE stays resident in float16 afterwards."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    from engine.kpipeline import decode_images

    vae = AutoencoderKL(block_out_channels=[32], down_block_types=["DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D"], norm_num_groups=32).to(torch.float16)
    seen, decode = [], vae.decode

    def overflowing(z, *args, **kwargs):
        seen.append(vae.dtype)
        out = decode(z, *args, **kwargs)
        if vae.dtype == torch.float16:
            out.sample[:] = float("nan")
        return out

    vae.decode = overflowing
    pictures = decode_images(vae, torch.zeros(1, 4, 8, 8))
    assert seen == [torch.float16, torch.float32] and vae.dtype == torch.float16
    assert np.isfinite(pictures).all()
