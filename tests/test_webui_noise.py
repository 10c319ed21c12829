"""Noise as the WebUI makes it (engine/noise.py, engine/philox.py), and its infotext fields."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.noise import Generator, ImageNoise, slerp
from engine.philox import PhiloxGenerator

# The WebUI's documented output of its CUDA-generator emulation (modules/rng_philox.py):
# Generator(seed=0).randn(shape=(3, 4)), which equals torch.randn((3, 4), device="cuda") after seed 0.
CUDA_SEED_0 = [[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
               [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
               [-1.07454231, -0.36314407, -1.67105067, 2.26550497]]


def test_nv_source_gives_the_cuda_generators_numbers():
    assert np.allclose(PhiloxGenerator(0).randn((3, 4)), CUDA_SEED_0, atol=1e-6)
    g = PhiloxGenerator(0)
    first, second = g.randn((3, 4)), g.randn((3, 4))
    assert not np.allclose(first, second)  # each draw advances the offset, as torch's CUDA generator
    big = PhiloxGenerator(12345).randn((4, 64, 64))
    assert abs(big.mean()) < 0.03 and abs(big.std() - 1) < 0.03 and big.dtype == np.float32
    assert np.allclose(Generator(0, "nv").randn((3, 4)).numpy(), CUDA_SEED_0, atol=1e-6)


def webui_slerp(t: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The WebUI's slerp written out column by column: for every channel c and
    column x, the vectors low[c, :, x] and high[c, :, x] (the norm is taken over
    dim 1 of a C x H x W tensor), interpolated on the great circle."""
    out = np.empty_like(low)
    c_count, _, w_count = low.shape
    cosines = np.empty((c_count, w_count))
    for c in range(c_count):
        for x in range(w_count):
            a, b = low[c, :, x], high[c, :, x]
            cosines[c, x] = float(np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b)))
    if cosines.mean() > 0.9995:
        return low * t + high * (1 - t)
    for c in range(c_count):
        for x in range(w_count):
            omega = math.acos(cosines[c, x])
            out[c, :, x] = (math.sin((1 - t) * omega) * low[c, :, x] + math.sin(t * omega) * high[c, :, x]) / math.sin(omega)
    return out


@pytest.mark.parametrize("shape", [(4, 8, 8), (4, 16, 8), (4, 8, 12)])
@pytest.mark.parametrize("strength", [0.1, 0.5, 0.9])
def test_variation_noise_is_the_webuis_slerp(shape, strength):
    noise = ImageNoise(shape, [7], [99], strength, source="cpu").first()[0]
    a = torch.randn(shape, generator=torch.Generator().manual_seed(7)).numpy()
    b = torch.randn(shape, generator=torch.Generator().manual_seed(99)).numpy()
    assert np.allclose(noise.numpy(), webui_slerp(strength, a, b), atol=1e-5)
    # Not one global slerp over the whole tensor (what PaintBridge did before).
    flat = torch.from_numpy(np.stack([a.ravel(), b.ravel()]))
    omega = math.acos(float(torch.dot(flat[0] / flat[0].norm(), flat[1] / flat[1].norm())))
    global_slerp = (math.sin((1 - strength) * omega) * a + math.sin(strength * omega) * b) / math.sin(omega)
    assert not np.allclose(noise.numpy(), global_slerp, atol=1e-4)


def test_slerp_ends_and_parallel_case():
    a, b = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    assert torch.allclose(slerp(0.0, a, b), a, atol=1e-5) and torch.allclose(slerp(1.0, a, b), b, atol=1e-5)
    assert torch.allclose(slerp(0.25, a, a * 2), a * 0.25 + a * 2 * 0.75)  # the WebUI's weights, that way round


def test_step_noise_continues_each_images_generator_and_ensd_reseeds():
    shape = (4, 8, 8)
    rng = ImageNoise(shape, [5, 6], source="cpu")
    first, second = rng.first(), rng.next()
    for i, seed in enumerate((5, 6)):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(first[i], torch.randn(shape, generator=g))
        assert torch.equal(second[i], torch.randn(shape, generator=g))
    delta = ImageNoise(shape, [5], source="cpu", eta_noise_seed_delta=31337)
    assert torch.equal(delta.first()[0], first[0])
    assert torch.equal(delta.next()[0], torch.randn(shape, generator=torch.Generator().manual_seed(5 + 31337)))


def test_resize_seed_keeps_the_middle_of_the_other_sizes_noise():
    # Made at 64x64 (8x8 latent), now 96x64 (12 wide): the old noise sits centred, 2 columns in.
    small = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(3))
    wide = ImageNoise((4, 8, 12), [3], resize_from=(64, 64), source="cpu").first()[0]
    assert torch.equal(wide[:, :, 2:10], small)
    assert torch.equal(wide[:, :, :2], torch.randn((4, 8, 12), generator=torch.Generator().manual_seed(3))[:, :, :2])
    # ...and smaller than the seed's: its middle is cut out.
    big = torch.randn((4, 16, 16), generator=torch.Generator().manual_seed(3))
    cut = ImageNoise((4, 8, 8), [3], resize_from=(128, 128), source="cpu").first()[0]
    assert torch.equal(cut, big[:, 4:12, 4:12])


def test_nv_and_cpu_sources_differ_and_bad_source_is_typed():
    from engine.errors import EngineError

    shape = (4, 8, 8)
    cpu = ImageNoise(shape, [1], source="cpu").first()
    nv = ImageNoise(shape, [1], source="nv").first()
    assert not torch.allclose(cpu, nv)
    assert torch.allclose(nv[0], torch.from_numpy(PhiloxGenerator(1).randn(shape)))
    with pytest.raises(EngineError) as caught:
        ImageNoise(shape, [1], source="quantum")
    assert caught.value.field == "rng"
