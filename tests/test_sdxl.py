"""The SDXL code paths (two text encoders, pooled text, size conditioning) on a
tiny SDXL-shaped model saved as a diffusers folder."""

from __future__ import annotations

import numpy as np
import pytest

from engine.params import HiresParams, JobParams, UpscaleParams


@pytest.fixture(scope="module")
def xl_engine(tmp_path_factory):
    from engine.demo.builder import build_sdxl_folder
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    root = tmp_path_factory.mktemp("xl-models")
    build_sdxl_folder(root / "checkpoints" / "tiny-xl")
    return Engine(Registry(root).scan(), ModelManager(device="cpu"))


def test_detected_as_sdxl_with_native_1024(xl_engine):
    entry = xl_engine.registry.default_checkpoint()
    assert entry.name == "tiny-xl" and entry.format == "diffusers" and entry.family.name == "sdxl"
    assert entry.native_size == 1024


def test_sdxl_txt2img_is_deterministic_and_uses_weights(xl_engine):
    params = {"width": 96, "height": 64, "steps": 3, "seed": 11}
    a = xl_engine.run(JobParams(prompt="a (cat:1.4)", **params))
    b = xl_engine.run(JobParams(prompt="a (cat:1.4)", **params))
    c = xl_engine.run(JobParams(prompt="a cat", **params))
    assert a.images[0].shape == (64, 96, 4) and a.parameters["model_family"] == "sdxl"
    assert np.array_equal(a.images[0], b.images[0]) and not np.array_equal(a.images[0], c.images[0])


def test_sdxl_conditioning_has_pooled_text(xl_engine):
    from engine.conditioning import encode_prompts

    model = xl_engine.models.get(xl_engine.registry.default_checkpoint())
    cond = encode_prompts(model, "a cat", "")
    assert cond.cond.shape == (1, 77, 64) and cond.pooled.shape == (1, 32)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2S a Karras"])  # a diffusers scheduler; written here
def test_sdxl_img2img_inpaint_upscale_hires(xl_engine, sampler):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    image[..., 3] = 255
    refined = xl_engine.run(JobParams(kind="img2img", image=image, strength=0.5, steps=4, seed=1, sampler=sampler))
    assert refined.images[0].shape == (64, 64, 4)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    painted = xl_engine.run(JobParams(kind="inpaint", image=image, mask=mask, strength=1.0, steps=3, seed=1, sampler=sampler))
    assert np.array_equal(painted.images[0][mask == 0], image[mask == 0])
    up = xl_engine.run(JobParams(kind="upscale", image=image, steps=4, seed=1, sampler=sampler,
                                 upscale=UpscaleParams(scale=2, upscaler="Lanczos", denoise=0.5, tile=8, overlap=2)))
    assert up.images[0].shape == (128, 128, 4)
    hires = xl_engine.run(JobParams(width=64, height=64, steps=2, seed=1, hires=HiresParams(scale=2), sampler=sampler))
    assert hires.images[0].shape == (128, 128, 4)


def test_sdxl_embedding_with_two_parts(tmp_path):
    import torch
    from safetensors.torch import save_file

    from engine.demo.builder import build_sdxl_folder
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    build_sdxl_folder(tmp_path / "checkpoints" / "xl")
    (tmp_path / "embeddings").mkdir()
    gen = torch.Generator().manual_seed(0)
    save_file({"clip_l": torch.randn(2, 32, generator=gen), "clip_g": torch.randn(2, 32, generator=gen)},
              str(tmp_path / "embeddings" / "xlstyle.safetensors"))
    engine = Engine(Registry(tmp_path).scan(), ModelManager(device="cpu"))
    params = {"width": 64, "height": 64, "steps": 2, "seed": 1, "sampler": "Euler"}
    before = engine.run(JobParams(prompt="a cat", **params)).images[0]
    styled = engine.run(JobParams(prompt="a cat in xlstyle", **params)).images[0]
    after = engine.run(JobParams(prompt="a cat", **params)).images[0]
    assert not np.array_equal(before, styled) and np.array_equal(before, after)
