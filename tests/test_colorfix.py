"""The colour fix after decoding (engine/colorfix.py): SUPIR's wavelet and AdaIN
corrections, and the plain tiled upscale's option."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine import colorfix
from engine.params import JobParams, UpscaleParams

SHIFT = np.array([24, -18, 11])


def _picture(h: int = 128, w: int = 96, seed: int = 0) -> np.ndarray:
    """Smooth colour fields with some texture, well inside 0..255 so a shift does not clip."""
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 190, (4, 3, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)).astype(np.int16)
    return np.clip(base + rng.integers(-8, 9, (h, w, 3)), 40, 215).astype(np.uint8)


def _checker(h: int, w: int, amplitude: int = 20) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (np.where((yy + xx) % 2 == 0, amplitude, -amplitude)[..., None] * np.ones(3, int)).astype(np.int16)


def _shifted(image: np.ndarray, extra: np.ndarray | int = 0) -> np.ndarray:
    return np.clip(image.astype(np.int16) + SHIFT + extra, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["wavelet", "adain"])
def test_a_constant_colour_shift_of_the_result_is_removed(mode):
    reference = _picture()
    fixed = colorfix.apply(mode, _shifted(reference), reference)
    assert np.abs(_shifted(reference).astype(int) - reference).mean() > 15
    assert np.abs(fixed.astype(int) - reference).max() <= 1


def test_wavelet_keeps_the_results_detail():
    """out = result - low(result) + low(reference) is linear: for result =
    reference + shift + detail it is reference + detail - low(detail). A
    checkerboard at the finest scale has no low frequencies away from the
    borders (the binomial blur averages it to 0), so there it survives whole."""
    reference = _picture()
    detail = _checker(*reference.shape[:2])
    fixed = colorfix.apply("wavelet", _shifted(reference, detail), reference).astype(int)
    inner = (slice(colorfix.REACH + 1, -colorfix.REACH - 1),) * 2
    assert np.abs(fixed - reference - detail)[inner].max() <= 1
    # Everywhere: the shift is gone and the detail is what is left.
    change = (fixed - reference).astype(float)
    assert abs(change.mean()) < 0.5
    assert np.corrcoef(change.ravel(), detail.ravel())[0, 1] > 0.95
    # Random texture keeps most of itself too (its low band is small).
    noise = np.random.default_rng(4).integers(-15, 16, reference.shape)
    kept = colorfix.apply("wavelet", _shifted(reference, noise), reference).astype(int) - reference
    assert np.corrcoef(kept.ravel(), noise.ravel())[0, 1] > 0.9


def test_adain_matches_mean_and_spread_per_channel():
    reference = _picture(seed=2)
    faded = (reference.astype(float) * 0.5 + 90).astype(np.uint8)  # half the contrast, lighter
    fixed = colorfix.apply("adain", faded, reference).astype(float)
    ref = reference.reshape(-1, 3).astype(float)
    assert np.abs(fixed.reshape(-1, 3).mean(0) - ref.mean(0)).max() < 0.6
    assert np.abs(fixed.reshape(-1, 3).std(0) - ref.std(0)).max() < 0.6


def test_strips_give_the_whole_image_result():
    """The strips' context (REACH + 1 rows) makes strip-by-strip filtering exact."""
    import torch

    reference = _picture(h=600, w=40, seed=5)
    result = _shifted(_picture(h=600, w=40, seed=6))
    whole = torch.from_numpy(result).float().permute(2, 0, 1)[None]
    ref = torch.from_numpy(reference).float().permute(2, 0, 1)[None]
    expected = (whole - colorfix._low(whole) + colorfix._low(ref))[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
    assert colorfix.rows(40) < 600  # several strips
    # The separable passes are the dilated 3x3 binomial convolution of the authors' wavelet_blur.
    kernel = (torch.tensor([1.0, 2.0, 1.0])[:, None] * torch.tensor([1.0, 2.0, 1.0])[None] / 16)[None, None]
    conv = whole[:, :, :80]
    for i in range(colorfix.LEVELS):
        r = 2**i
        conv = torch.nn.functional.conv2d(torch.nn.functional.pad(conv, (r,) * 4, mode="replicate"),
                                          kernel.repeat(3, 1, 1, 1), groups=3, dilation=r)
    assert torch.allclose(colorfix._low(whole[:, :, :80]), conv, atol=1e-3)
    assert np.abs(colorfix.wavelet(result, reference).astype(int) - expected).max() <= 1


def test_none_and_auto():
    reference = _picture()
    result = _shifted(reference)
    assert colorfix.apply("none", result, reference) is result
    assert colorfix.resolve("auto", supir=True) == "wavelet" and colorfix.resolve("auto", supir=False) == "none"
    # A reference of another size is brought to the result's first.
    small = np.asarray(Image.fromarray(reference).resize((48, 64), Image.BICUBIC))
    assert colorfix.apply("wavelet", result, small).shape == result.shape


def _low_error(a: np.ndarray, b: np.ndarray) -> float:
    """How far two images' colours are apart at the wavelet's scale (blocks of 32 pixels)."""
    def coarse(x):
        return np.asarray(Image.fromarray(np.ascontiguousarray(x[..., :3])).resize((a.shape[1] // 32, a.shape[0] // 32), Image.BOX), float)

    return float(np.abs(coarse(a) - coarse(b)).mean())


def test_tiled_upscale_color_fix_option(engine):
    image = _picture(64, 64, seed=8)
    job = {"kind": "upscale", "image": image, "steps": 3, "seed": 1, "prompt": "a red dog", "sampler": "Euler"}

    def run(fix: str):
        options = UpscaleParams(scale=2.0, upscaler="Lanczos", denoise=0.9, tile=8, overlap=2, color_fix=fix)
        return engine.run(JobParams(**job, upscale=options))

    auto, none, wavelet, adain = (run(f) for f in ("auto", "none", "wavelet", "adain"))
    assert np.array_equal(auto.images[0], none.images[0])  # the plain upscale keeps its old meaning
    assert "Color fix" not in auto.infotext and "Color fix: Wavelet" in wavelet.infotext
    assert "Color fix: AdaIN" in adain.infotext
    upscaled = np.asarray(Image.fromarray(image).resize((128, 128), Image.LANCZOS))
    drift = _low_error(none.images[0], upscaled)
    assert drift > 5  # the tiny random model paints its own colours
    # The wavelet's low band is a blur of sigma ~13 pixels: block colours come most of the way back,
    # the picture's mean colour all the way.
    assert _low_error(wavelet.images[0], upscaled) < 0.3 * drift
    assert _low_error(adain.images[0], upscaled) < drift

    def mean_gap(out):
        return float(np.abs(out[..., :3].reshape(-1, 3).mean(0) - upscaled.reshape(-1, 3).mean(0)).max())

    assert mean_gap(none.images[0]) > 5
    assert mean_gap(wavelet.images[0]) < 0.15 * mean_gap(none.images[0]) and mean_gap(adain.images[0]) < 1
