"""High resolution: upscaler models, hires fix, tiled diffusion and tiled VAE."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
import torch

from engine import tiled
from engine.errors import EngineError, JobCancelled
from engine.params import HiresParams, JobParams, UpscaleParams
from engine.registry import Registry
from engine.upscalers import Upscalers, run_tiled

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (30, 40, 4), dtype=np.uint8)


@pytest.mark.parametrize("scale", [1.5, 2, 3, 4])
def test_upscale_sizes_are_exact(engine, scale):
    out = engine.run(JobParams(kind="upscale", image=IMAGE, upscale=UpscaleParams(scale=scale, denoise=0)))
    assert out.images[0].shape == (round(30 * scale), round(40 * scale), 4)
    assert out.parameters["upscaler"] == "paintbridge-demo-x4"


def test_upscale_keeps_alpha(engine):
    image = IMAGE.copy()
    image[..., 3] = 0
    image[10:20, 10:30, 3] = 255
    out = engine.run(JobParams(kind="upscale", image=image, upscale=UpscaleParams(scale=2, denoise=0))).images[0]
    assert out[0, 0, 3] == 0 and out[30, 40, 3] == 255


def test_tiled_upscaler_equals_untiled(engine):
    upscaler = engine.upscalers.load(engine.upscalers.resolve("paintbridge-demo-x4"))
    image = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    whole = run_tiled(upscaler.model, upscaler.scale, image, tile=1024, overlap=0)
    tiles = run_tiled(upscaler.model, upscaler.scale, image, tile=16, overlap=8)
    diff = np.abs(whole.astype(int) - tiles.astype(int))
    assert diff.max() <= 2
    borders = [16 * 4 * k for k in (1, 2, 3)]  # output rows/columns where tiles meet
    assert diff[:, [b - 1 for b in borders] + borders].max() <= 2
    assert diff[[64 - 1, 64, 128 - 1, 128]].max() <= 2


def test_upscaler_halves_its_tile_on_out_of_memory(engine, monkeypatch):
    import engine.upscalers as up

    tiles_seen = []
    real = up.run_tiled

    def flaky(model, scale, image, tile, overlap, progress=None, cancel=None):
        tiles_seen.append(tile)
        if tile > 64:
            raise RuntimeError("CUDA out of memory")
        return real(model, scale, image, tile, overlap, progress, cancel)

    monkeypatch.setattr(up, "run_tiled", flaky)
    out = engine.upscalers.upscale(IMAGE[..., :3], (160, 120), "paintbridge-demo-x4", tile=256)
    assert out.shape == (120, 160, 3) and tiles_seen == [256, 128, 64]


def test_pth_upscaler_loads_through_weights_only(tmp_path):
    from engine.demo.builder import rrdbnet_state_dict

    (tmp_path / "ESRGAN").mkdir()
    torch.save({"params_ema": rrdbnet_state_dict()}, tmp_path / "ESRGAN" / "RealESRGAN_x4plus.pth")
    upscalers = Upscalers(Registry(tmp_path).scan())
    out = upscalers.upscale(IMAGE[..., :3], (80, 60), "RealESRGAN_x4plus")
    assert out.shape == (60, 80, 3)


class Sentinel:
    """A pickle that would create a file when unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("name", ["evil.pth", "evil.safetensors"])
def test_malicious_pickle_never_runs(tmp_path, name):
    sentinel = tmp_path / "pwned"
    (tmp_path / "ESRGAN").mkdir()
    (tmp_path / "ESRGAN" / name).write_bytes(pickle.dumps({"conv_first.weight": Sentinel(sentinel)}))
    upscalers = Upscalers(Registry(tmp_path).scan())
    with pytest.raises(EngineError) as caught:
        upscalers.upscale(IMAGE[..., :3], (80, 60), "evil")
    assert caught.value.code == ("unsafe_file" if name.endswith(".pth") else "unknown_model")
    assert not sentinel.exists()


def test_tiled_vae_decode_is_close_to_plain(engine):
    model = engine.models.get(engine.registry.default_checkpoint())
    latent = torch.randn(1, 4, 64, 96, generator=torch.Generator().manual_seed(0))
    plain = tiled.decode(model.base.vae, latent, 4096).astype(float)
    tiles = tiled.decode(model.base.vae, latent, 256).astype(float)
    psnr = 10 * np.log10(255**2 / ((plain - tiles) ** 2).mean())
    print(f"tiled VAE decode PSNR vs plain: {psnr:.1f} dB")
    assert psnr > 30


def test_tiled_vae_encode_colour_fix_keeps_statistics(engine):
    model = engine.models.get(engine.registry.default_checkpoint())
    vae = model.base.vae
    image = np.zeros((256, 384, 3), np.uint8)
    image[:, :192] = (200, 40, 40)
    image[:, 192:] = (30, 60, 220)
    gen = torch.Generator().manual_seed(0)
    plain = tiled.encode(vae, image, 4096, gen, "cpu", torch.float32)
    fixed = tiled.encode(vae, image, 128, gen, "cpu", torch.float32)
    assert plain.shape == fixed.shape == (1, 4, 32, 48)
    assert torch.allclose(plain.mean(dim=(2, 3)), fixed.mean(dim=(2, 3)), atol=0.15 * float(plain.std()))


def test_views_cover_the_latent():
    grid = tiled.views(40, 100, 16, 4)
    covered = np.zeros((40, 100), int)
    for v in grid:
        covered[v.y : v.y + v.size_h, v.x : v.x + v.size_w] += 1
    assert covered.min() >= 1 and all(v.y + 16 <= 40 and v.x + 16 <= 100 for v in grid)


def test_tiled_diffusion_of_a_uniform_image_has_no_seams(engine):
    image = np.full((256, 256, 4), 128, np.uint8)
    options = UpscaleParams(scale=1, upscaler="Lanczos", denoise=0.5, tile=16, overlap=8, tile_batch=3)
    out = engine.run(JobParams(kind="upscale", image=image, steps=10, seed=3, upscale=options)).images[0]
    rgb = out[..., :3].astype(float)
    starts = sorted({v.x for v in tiled.views(32, 32, 16, 8)})
    edges = sorted({x * 8 for x in starts if x} | {(x + 16) * 8 for x in starts if (x + 16) * 8 < 256})
    for axis in (0, 1):
        step = np.abs(np.diff(rgb, axis=1 - axis)).mean(axis=(axis, 2))  # jump between neighbours
        ratio = step[[e - 1 for e in edges]].mean() / step.mean()
        print(f"seam ratio (tile borders / everywhere), axis {axis}: {ratio:.3f}")
        assert ratio < 1.2


def test_tiled_diffusion_reports_tiles_and_cancels_between_batches(engine):
    flag = threading.Event()
    events = []

    def progress(step, total, stage, preview, tile=0, tiles=0):
        events.append((stage, step, total, tile, tiles))
        if stage == "tiled diffusion":
            flag.set()

    options = UpscaleParams(scale=2, denoise=0.5, tile=16, overlap=4, tile_batch=2)
    with pytest.raises(JobCancelled):
        image = RNG.integers(0, 256, (128, 128, 4), dtype=np.uint8)
        engine.run(JobParams(kind="upscale", image=image, steps=10, upscale=options), progress, flag)
    assert events[0][0] == "upscaling"
    diffusion = [e for e in events if e[0] == "tiled diffusion"]
    # 3x3 tiles of 16 on a 32x32 latent; denoise 0.5 of 10 steps runs the WebUI's int(0.5 * 10) + 1 = 6
    assert diffusion == [("tiled diffusion", 1, 6, 2, 9)]


def test_hires_fix_size_and_both_passes(engine):
    events: list[tuple] = []
    for upscaler in ("Latent", "paintbridge-demo-x4"):
        events.clear()
        hires = HiresParams(scale=2, upscaler=upscaler, steps=0, denoise=0.5)
        out = engine.run(
            JobParams(width=96, height=64, steps=4, seed=2, hires=hires),
            lambda step, total, stage, preview, *tiles: events.append((stage, step, total)),
        )
        assert out.images[0].shape == (128, 192, 4)
        # Every phase says what runs: the upscaler model between the passes, the VAE at the end; the
        # WebUI's hires pass runs its steps in full (of a schedule of steps / denoise).
        between = [] if upscaler == "Latent" else [("hires upscaling", 4)]
        hires = [("hires", 5), ("hires", 6), ("hires", 7), ("hires", 8), ("decoding", 8)]
        expected = [("sampling", s) for s in (1, 2, 3, 4)] + between + hires
        assert [e[:2] for e in events] == expected and {e[2] for e in events} == {8}
        assert f"Hires upscaler: {upscaler}" in out.infotext


def test_unknown_upscaler_fails_before_work(engine):
    with pytest.raises(EngineError) as caught:
        engine.run(JobParams(kind="upscale", image=IMAGE, upscale=UpscaleParams(upscaler="../x")))
    assert caught.value.field == "upscale.upscaler"
