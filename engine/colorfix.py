"""Colour fix after decoding: the result's colours put back onto the input's.

Diffusion restorers drift in colour: a tile, a whole picture, comes back a
little warmer or darker than what went in. SUPIR's authors (and StableSR's,
whose colorfix module theirs is) correct this after decoding:

- wavelet: split both images into high and low frequencies by an a-trous
  wavelet (5 levels of a 3x3 binomial blur dilated 1, 2, 4, 8, 16 pixels, with
  edge replication) and keep the result's high frequencies (the restored
  detail) over the input's low frequencies (its colours and shading):
  result - low(result) + low(input). The authors' default.
- adain: adaptive instance normalisation (Huang & Belongie 2017, eq. 8):
  each channel of the result moved to the input's mean and standard deviation.
- none: the decoded result as it is.

Written here on plain torch ops because no maintained library ships it (the
authors' and StableSR's copies are script modules, not packages). Both work
on horizontal strips so a 16-megapixel upscale needs a few strips' worth of
float memory (STRIP_PIXELS), not the whole picture's: the wavelet's reach is 31 pixels
(1 + 2 + 4 + 8 + 16), so a strip read with 32 rows of context either side is
exact, and AdaIN's statistics are sums gathered strip by strip.
"""

from __future__ import annotations

import numpy as np

MODES = ("wavelet", "adain", "none")
LABELS = {"wavelet": "Wavelet", "adain": "AdaIN", "none": "None"}  # the authors' spelling, for infotext
LEVELS = 5
REACH = sum(2**i for i in range(LEVELS))  # 31 pixels: how far the low frequencies look
STRIP_PIXELS = 128 * 128  # pixels per strip: its float working set is a few of these, whatever the image
MIN_ROWS = 32


def rows(width: int) -> int:
    """Rows per strip for an image this wide."""
    return max(MIN_ROWS, STRIP_PIXELS // max(1, width))
_EPS = 1e-5  # the authors' calc_mean_std, on [-1, 1] pixels


def resolve(mode: str, supir: bool) -> str:
    """"auto" is the authors' wavelet for SUPIR and none for the plain tiled
    upscale (which keeps meaning what it meant before the option existed)."""
    if mode == "auto":
        return "wavelet" if supir else "none"
    return mode


def apply(mode: str, result: np.ndarray, reference: np.ndarray, device="cpu") -> np.ndarray:
    """HxWx3 uint8 result, its colours taken from the HxWx3 uint8 reference
    (resized to the result's size first when they differ)."""
    if mode == "none":
        return result
    if reference.shape[:2] != result.shape[:2]:
        from PIL import Image

        reference = np.asarray(Image.fromarray(reference).resize((result.shape[1], result.shape[0]), Image.BICUBIC))
    if mode == "wavelet":
        return wavelet(result, reference, device)
    if mode == "adain":
        return adain(result, reference)
    raise ValueError(f"colour fix must be one of {', '.join(MODES)}")


def _low(image, levels: int = LEVELS):
    """The a-trous wavelet's last low-frequency band of a 1 x 3 x H x W tensor:
    `levels` blurs by the 3x3 binomial kernel [1 2 1]^T [1 2 1] / 16 dilated
    1, 2, 4... pixels, edges replicated. The high band the authors sum level
    by level telescopes to image - low. Applied as two 1-D passes of shifted
    sums: the same numbers as the dilated 3x3 convolution, without PyTorch's
    slow CPU path for dilated depthwise convolutions (about 15x faster here)."""
    import torch.nn.functional as F

    for i in range(levels):
        r = 2**i
        p = F.pad(image, (r, r, r, r), mode="replicate")
        p = (p[..., :, : -2 * r] + 2.0 * p[..., :, r:-r] + p[..., :, 2 * r :]) * 0.25  # along x
        image = (p[..., : -2 * r, :] + 2.0 * p[..., r:-r, :] + p[..., 2 * r :, :]) * 0.25  # along y
    return image


def wavelet(result: np.ndarray, reference: np.ndarray, device="cpu") -> np.ndarray:
    """result - low(result) + low(reference), strip by strip (exact: each strip
    is filtered with REACH + 1 rows of real context on both sides)."""
    import torch

    h = result.shape[0]
    out = np.empty_like(result)
    pad = REACH + 1

    def tensor(a: np.ndarray):
        return torch.from_numpy(np.array(a, dtype=np.float32)).to(device).permute(2, 0, 1)[None]

    with torch.inference_mode():
        step = rows(result.shape[1])
        for top in range(0, h, step):
            bottom = min(h, top + step)
            a, b = max(0, top - pad), min(h, bottom + pad)
            x, ref = tensor(result[a:b]), tensor(reference[a:b])
            fixed = x - _low(x) + _low(ref)
            kept = fixed[0, :, top - a : bottom - a].permute(1, 2, 0)
            out[top:bottom] = kept.round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    return out


def _stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (unbiased + eps, as the authors)
    of an HxWx3 uint8 image in [-1, 1] units, gathered strip by strip."""
    total = np.zeros(3)
    squares = np.zeros(3)
    step = rows(image.shape[1])
    for top in range(0, image.shape[0], step):
        strip = image[top : top + step].reshape(-1, 3).astype(np.float64) / 127.5 - 1.0
        total += strip.sum(0)
        squares += (strip * strip).sum(0)
    n = image.shape[0] * image.shape[1]
    mean = total / n
    var = (squares - n * mean * mean) / max(1, n - 1)
    return mean, np.sqrt(np.maximum(var, 0.0) + _EPS)


def adain(result: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each channel of the result normalised, then given the reference's mean and spread."""
    mean, std = _stats(result)
    ref_mean, ref_std = _stats(reference)
    out = np.empty_like(result)
    step = rows(result.shape[1])
    for top in range(0, result.shape[0], step):
        strip = result[top : top + step].astype(np.float32) / 127.5 - 1.0
        fixed = (strip - mean) / std * ref_std + ref_mean
        out[top : top + step] = np.clip(np.round((fixed + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return out
