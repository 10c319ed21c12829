"""The tiled upscale's lean path (issue 20): evenly spread equal tiles, batched
VAE tiles, the seam guard, TAESD from the models folder, glibc heap control."""

from __future__ import annotations

import itertools
import math
import shutil

import numpy as np
import pytest
import torch

from engine import heap, taesd, tiled, tiled_vae
from engine.demo.builder import build_taesd
from engine.errors import EngineError
from engine.params import JobParams, UpscaleParams


def gradient(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = [40 + 160 * xx / w, 60 + 120 * yy / h, 200 - 150 * (xx + yy) / (h + w)]
    return np.stack(rgb, -1).round().astype(np.uint8)


@pytest.mark.parametrize("length,tile,overlap,multiple", [(256, 64, 16, 8), (128, 64, 16, 8), (100, 16, 4, 1),
                                                         (1024, 512, 32, 8), (64, 64, 16, 8), (72, 64, 8, 1)])
def test_spread_covers_with_equal_tiles_and_no_wasted_overlap(length, tile, overlap, multiple):
    size, starts = tiled_vae.spread(length, tile, overlap, multiple)
    assert size == length or (size <= tile and size % multiple == 0)
    assert starts[0] == 0 and starts[-1] + size == length
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(size - g >= min(overlap, tile // 2) for g in gaps)  # every overlap at least the asked one
    # As few tiles as fixed stride needs, and no larger than covering the length takes (+ rounding).
    count = 1 if length <= tile else math.ceil((length - overlap) / (tile - overlap))
    assert len(starts) == count and count * size <= length + (count - 1) * overlap + count * multiple
    weights = tiled_vae._partition(length, size, starts)
    total = np.zeros(length)
    for s, w in zip(starts, weights, strict=True):
        total[s : s + size] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_even_tiles_cut_the_redundant_unet_work():
    # 1024 px output = 128 latent pixels: fixed stride 48 made tiles at 0, 48, 64 (2.25x the
    # UNet work); spread evenly they are three tiles of 56 (1.72x), overlaps still >= 16.
    grid = tiled.even_views(128, 128, 64, 16, 8)
    work = sum(v.size_h * v.size_w for v in grid) / 128**2
    old = sum(v.size_h * v.size_w for v in tiled.views(128, 128, 64, 16)) / 128**2
    assert work < 0.8 * old and {v.size_h for v in grid} == {56}


def test_batched_vae_tiles_equal_one_at_a_time(engine):
    vae = engine.models.get(engine.registry.default_checkpoint()).base.vae
    image = np.random.default_rng(0).integers(0, 256, (192, 320, 3), dtype=np.uint8)
    one = tiled.encode(vae, image, 128, torch.Generator().manual_seed(1), "cpu", torch.float32, batch=1)
    four = tiled.encode(vae, image, 128, torch.Generator().manual_seed(1), "cpu", torch.float32, batch=4)
    torch.testing.assert_close(one, four, atol=1e-4, rtol=1e-4)
    a = tiled.decode(vae, one, 128, batch=1).astype(int)
    b = tiled.decode(vae, one, 128, batch=3).astype(int)
    assert np.abs(a - b).max() <= 1


@pytest.fixture(scope="module")
def taesd_models(demo_models, tmp_path_factory):
    """The demo checkpoint and upscaler with a random-init TAESD in the WebUI's VAE-approx/."""
    root = tmp_path_factory.mktemp("models")
    for folder in ("Stable-diffusion", "ESRGAN"):
        shutil.copytree(demo_models / folder, root / folder)
    build_taesd(root / "VAE-approx")
    return root


def test_taesd_is_found_and_loaded_from_the_models_folder(taesd_models, tmp_path):
    files = taesd.find(taesd_models, "sd15")
    assert files is not None and files.decoder.name == "taesd_decoder.safetensors" and files.can_encode
    assert taesd.find(taesd_models, "sdxl") is None  # taesdxl_* is another file
    vae = taesd.load(files)
    from safetensors.torch import load_file

    original = load_file(str(files.decoder))
    torch.testing.assert_close(vae.decoder.layers[0].weight, original["1.weight"])  # index shifted by the clamp
    # ComfyUI's folder, a weights-only .pth decoder alone: previews and decode, no encoder.
    comfy = tmp_path / "vae_approx"
    comfy.mkdir()
    torch.save(original, comfy / "taesd_decoder.pth")
    alone = taesd.find(tmp_path, "sd15")
    assert alone is not None and alone.encoder is None and not alone.can_encode
    torch.testing.assert_close(taesd.load(alone).decoder.layers[0].weight, original["1.weight"])
    (comfy / "taesd_decoder.pth").write_bytes(b"not a pickle")
    with pytest.raises(EngineError):
        taesd.load(taesd.find(tmp_path, "sd15"))


def test_seam_guard_taesd_tiled_equals_untiled_on_a_smooth_gradient(taesd_models):
    """The overlaps' guard: on a smooth gradient, tiled encode and decode (tiles of
    128 px, the overlaps of engine/tiled_vae.py) equal one whole-image pass to 1 level."""
    vae = taesd.load(taesd.find(taesd_models, "sd15"))
    image = gradient(256, 384)
    gen = torch.Generator().manual_seed(0)
    whole = tiled.encode(vae, image, 4096, gen, "cpu", torch.float32)
    tiles = tiled.encode(vae, image, 128, gen, "cpu", torch.float32)
    plain = tiled.decode(vae, whole, 4096).astype(int)
    roundtrip = tiled.decode(vae, tiles, 128).astype(int)
    print(f"latent max diff {float((whole - tiles).abs().max()):.2e}, pixels max diff {np.abs(plain - roundtrip).max()}")
    assert np.abs(plain - roundtrip).max() <= 1


@pytest.mark.slow  # loads the demo models into a second engine: ~10 s quiet, a minute loaded
def test_upscale_with_taesd_through_the_engine(taesd_models):
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    engine = Engine(Registry(taesd_models).scan(), ModelManager(device="cpu"))
    image = gradient(48, 64)
    options = UpscaleParams(scale=4, upscaler="Lanczos", denoise=0.3, tile=16, overlap=4, vae_tile=128, vae="taesd")
    result = engine.run(JobParams(kind="upscale", image=image, steps=2, seed=1, upscale=options))
    out = result.images[0]
    assert out.shape == (192, 256, 4)
    assert "VAE Encoder: TAESD, VAE Decoder: TAESD" in result.infotext  # the WebUI's record of another VAE
    own = engine.run(JobParams(kind="upscale", image=image, steps=2, seed=1,
                               upscale=UpscaleParams(**{**options.__dict__, "vae": ""})))
    plain = own.images[0]
    assert np.abs(out.astype(int) - plain.astype(int)).mean() > 1  # another VAE really decoded it
    assert "VAE Decoder" not in own.infotext


def test_upscale_taesd_missing_is_a_clear_error(engine):
    options = UpscaleParams(scale=2, upscaler="Lanczos", denoise=0.3, vae="taesd")
    with pytest.raises(EngineError) as caught:
        engine.check(JobParams(kind="upscale", image=gradient(32, 32), steps=2, upscale=options))
    assert caught.value.code == "invalid_request" and caught.value.field == "upscale.vae"
    assert "VAE-approx" in str(caught.value)


def test_heap_controls_run_on_this_glibc():
    assert heap.cap_retention() is True
    heap.trim()


@pytest.mark.slow  # loads the demo models into a second engine: ~10 s quiet, a minute loaded
def test_previews_use_taesd_from_the_models_folder(taesd_models, engine):
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    def previews_of(eng) -> list[np.ndarray]:
        seen = []
        eng.run(JobParams(kind="txt2img", prompt="a cat", width=64, height=64, steps=3, seed=1),
                lambda step, total, stage, preview, *tiles: seen.append(preview) if preview is not None else None)
        return seen

    with_taesd = previews_of(Engine(Registry(taesd_models).scan(), ModelManager(device="cpu")))
    cheap = previews_of(engine)  # the demo folder has no TAESD: the linear map at latent size
    assert with_taesd and with_taesd[0].shape == (64, 64, 4)  # decoded to image size
    assert cheap and cheap[0].shape == (8, 8, 4)


def test_previewer_spaces_costly_previews():
    from engine.preview import Previewer

    previewer = Previewer("sd15", None, interval=0.0)
    assert previewer.due()
    previewer(torch.zeros(4, 8, 8))
    previewer.cost = 10.0  # a preview that took 10 s: the next waits 90 s
    assert not previewer.due()
