"""Every WebUI sampler name through the real engine, and the k-diffusion-style
path (engine/kpipeline.py) checked against diffusers where both exist."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from engine.errors import JobCancelled
from engine.params import HiresParams, JobParams, UpscaleParams
from engine.samplers import SAMPLER_NAMES, lookup

WEBUI_NAMES = ["Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
               "DPM fast", "DPM adaptive", "LMS Karras", "DPM2 Karras", "DPM2 a Karras", "DPM++ 2S a Karras",
               "DPM++ 2M Karras", "DPM++ SDE Karras", "DDIM", "PLMS", "UniPC"]
BASE = {"prompt": "a cat", "width": 64, "height": 64, "steps": 6, "seed": 8}


@pytest.fixture(scope="module")
def first_images(engine):
    return {name: engine.run(JobParams(sampler=name, **BASE)).images[0] for name in SAMPLER_NAMES}


def test_the_table_has_every_webui_name_in_its_order():
    assert [n for n in SAMPLER_NAMES if n in WEBUI_NAMES] == WEBUI_NAMES


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_each_sampler_runs_and_is_deterministic(engine, first_images, name):
    out = engine.run(JobParams(sampler=name, **BASE))
    assert out.parameters["sampler"] == name and f"Sampler: {name}," in out.infotext
    assert np.array_equal(out.images[0], first_images[name])


def test_distinct_samplers_give_distinct_images(first_images):
    seen: dict[bytes, str] = {}
    for name, image in first_images.items():
        assert image.tobytes() not in seen, f"{name} gave the same image as {seen.get(image.tobytes())}"
        seen[image.tobytes()] = name


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_k_path_equals_diffusers_euler(engine, prediction):
    """Euler a at eta 0 is Euler; with 4 steps (integer timesteps, where the
    interpolations agree) KPipeline and diffusers' Euler must give the same latent."""
    from diffusers import EulerDiscreteScheduler

    from engine.conditioning import encode_prompts
    from engine.kpipeline import KPipeline

    model = engine.models.get(engine.registry.default_checkpoint())
    own = model.base.scheduler
    config = {**own.config, "prediction_type": prediction, "timestep_spacing": "linspace"}
    model.base.scheduler = EulerDiscreteScheduler.from_config(config)
    try:
        kwargs = {**encode_prompts(model, "a cat", "blurry").pipeline_kwargs(1), "num_inference_steps": 4,
                  "guidance_scale": 7.0, "output_type": "latent", "width": 64, "height": 64}
        noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
        reference = model.base(**kwargs, latents=noise, generator=[torch.Generator().manual_seed(1)]).images
        ours = KPipeline(model, "sample_euler_ancestral", False, 0.0)(
            **kwargs, latents=noise, generator=[torch.Generator().manual_seed(1)]).images
    finally:
        model.base.scheduler = own
    assert torch.allclose(ours.float(), reference.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # ~20 s on a quiet 2-core machine: the quick tier keeps the exact-denoiser tests instead
def test_eta_for_ancestral_samplers(engine):
    default = engine.run(JobParams(sampler="Euler a", **BASE))
    one = engine.run(JobParams(sampler="Euler a", eta=1.0, **BASE))
    half = engine.run(JobParams(sampler="Euler a", eta=0.5, **BASE))
    zero = engine.run(JobParams(sampler="Euler a", eta=0.0, **BASE))
    assert np.array_equal(default.images[0], one.images[0]) and "Eta" not in one.infotext  # 1 is the default
    assert "Eta: 0.5" in half.infotext and half.parameters["eta"] == 0.5
    images = [one.images[0], half.images[0], zero.images[0]]
    assert len({im.tobytes() for im in images}) == 3
    for name in ("DPM2 a", "DPM++ 2S a Karras", "DPM fast", "DPM adaptive"):
        a = engine.run(JobParams(sampler=name, eta=0.0, **BASE)).images[0]
        b = engine.run(JobParams(sampler=name, **BASE)).images[0]
        assert not np.array_equal(a, b), name
    ddim = engine.run(JobParams(sampler="DDIM", eta=1.0, **BASE))
    assert "Eta DDIM: 1" in ddim.infotext


@pytest.mark.slow  # every job kind per sampler: 10-50 s each
@pytest.mark.parametrize("name", ["DPM++ 2S a", "DPM fast", "DPM adaptive"])
def test_k_samplers_in_every_job_kind(engine, name):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (64, 80, 4), dtype=np.uint8)
    image[..., 3] = 255
    faint, weak, strong = (
        engine.run(JobParams(kind="img2img", image=image, strength=s, sampler=name, steps=10, seed=1)).images[0]
        for s in (0.1, 0.3, 0.9)
    )
    assert weak.shape == (64, 80, 4) and not np.array_equal(weak, strong)
    # A weaker refine stays nearer the (VAE's reconstruction of the) input.
    def distance(a, b):
        return np.abs(a[..., :3].astype(int) - b[..., :3]).mean()

    assert distance(weak, faint) < distance(strong, faint)
    mask = np.zeros((64, 80), np.uint8)
    mask[16:48, 20:60] = 255
    painted = engine.run(JobParams(kind="inpaint", image=image, mask=mask, strength=1.0, sampler=name, steps=4, seed=1))
    assert np.array_equal(painted.images[0][mask == 0], image[mask == 0])
    assert (painted.images[0][mask == 255] != image[mask == 255]).any(axis=1).mean() > 0.5
    for upscaler in ("Latent", "Lanczos"):  # the second pass starts from a latent, or from images
        hires = engine.run(JobParams(sampler=name, width=64, height=64, steps=4, seed=1, batch_size=2,
                                     hires=HiresParams(scale=1.5, upscaler=upscaler)))
        assert [im.shape for im in hires.images] == [(96, 96, 4)] * 2, upscaler
        assert not np.array_equal(*hires.images)
    up = engine.run(JobParams(kind="upscale", image=image, sampler=name, steps=4, seed=1,
                              upscale=UpscaleParams(scale=2, upscaler="Lanczos", denoise=0.5, tile=8, overlap=2)))
    assert up.images[0].shape == (128, 160, 4)


def test_dpm_adaptive_reports_progress_and_cancels(engine):
    events = []
    engine.run(JobParams(sampler="DPM adaptive", **BASE), lambda s, t, stage, p: events.append((s, t)))
    steps = [s for s, _ in events]
    assert steps == sorted(steps) and events[-1] == (6, 6)
    flag = threading.Event()
    calls = []

    def progress(step, total, stage, preview):
        calls.append(step)
        flag.set()

    with pytest.raises(JobCancelled):
        engine.run(JobParams(sampler="DPM adaptive", **BASE), progress, flag)
    assert len(calls) == 1


def test_k_sampler_batches_get_their_own_seeds(engine):
    batch = engine.run(JobParams(sampler="DPM++ 2S a", batch_size=2, **BASE))
    second = engine.run(JobParams(sampler="DPM++ 2S a", **{**BASE, "seed": BASE["seed"] + 1}))
    assert batch.seeds == [8, 9]
    assert not np.array_equal(batch.images[0], batch.images[1])
    # Image 2 of a batch is the image its own seed gives alone: noise is drawn per image.
    assert np.abs(batch.images[1].astype(int) - second.images[0]).max() <= 1


@pytest.mark.parametrize("name", ["Euler a", "DPM++ 2S a"])
def test_inpainting_model_with_nine_channels(tmp_path, name):
    from engine.demo.builder import build_checkpoint
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    build_checkpoint(tmp_path / "Stable-diffusion" / "tiny-inpainting.safetensors", inpainting=True)
    engine = Engine(Registry(tmp_path).scan(), ModelManager(device="cpu"))
    entry = engine.registry.get("tiny-inpainting")
    assert entry.inpainting
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    image[..., 3] = 255
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 255
    params = {"kind": "inpaint", "image": image, "mask": mask, "strength": 1.0, "steps": 4, "sampler": name,
              "model": "tiny-inpainting"}
    a = engine.run(JobParams(seed=1, **params)).images[0]
    b = engine.run(JobParams(seed=2, **params)).images[0]
    assert engine.models.loaded.base.unet.config.in_channels == 9
    assert np.array_equal(a[mask == 0], image[mask == 0]) and not np.array_equal(a, b)
    assert lookup(name).function  # every name runs through KPipeline
