"""Inpainting geometry: crop to the mask, pick a working size, paste back.

Pure numpy/Pillow. The contract that matters to a painter: wherever the mask
is 0, the result's pixels are byte-identical to the input.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


def mask_box(mask: np.ndarray) -> Box | None:
    # Row and column reductions, not np.nonzero: nonzero returns two int64
    # indices per masked pixel (16 bytes a pixel: 4 GiB for a full 16384^2 mask).
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(cols) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def expand_box(box: Box, padding: int, width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    return max(0, x0 - padding), max(0, y0 - padding), min(width, x1 + padding), min(height, y1 + padding)


def round8(value: float) -> int:
    return max(64, round(value / 8) * 8)


def working_size(width: int, height: int, native: int) -> tuple[int, int]:
    """Same aspect ratio, about native*native pixels, multiples of 8.

    Small crops are scaled up (the model draws detail at its native size, as
    the WebUI's "only masked" inpainting does); large ones are scaled down.
    """
    scale = native / (width * height) ** 0.5
    # A long thin crop (a 16384x8 stroke) would work at native*sqrt(aspect) on
    # its long side (65536 px): cap it at 4x native; the short side keeps 64.
    longest = 4 * native
    w, h = width * scale, height * scale
    if max(w, h) > longest:
        shrink = longest / max(w, h)
        w, h = w * shrink, h * shrink
    return round8(w), round8(h)


def feather(mask: np.ndarray, blur: int) -> np.ndarray:
    """Soft alpha in 0..1 that stays inside the mask: min(mask, blur(mask)).

    A plain blur would leak outside the mask; taking the minimum keeps the
    soft edge on the inside, so mask-0 pixels get exactly alpha 0.
    """
    alpha = mask.astype(np.float32) / 255.0
    if blur > 0:
        blurred = Image.fromarray(mask).filter(ImageFilter.GaussianBlur(blur))
        alpha = np.minimum(alpha, np.asarray(blurred, dtype=np.float32) / 255.0)
    return alpha


def composite(original: np.ndarray, generated: np.ndarray, alpha: np.ndarray, band: int = 256) -> np.ndarray:
    """Blend `generated` over `original` (same HxWxC uint8) with `alpha` (HxW).

    In bands of rows: the float32 temporaries are 16 bytes a pixel, so a whole
    16384-wide layer at once would need gigabytes for a result of 4 bytes a pixel.
    """
    out = np.empty_like(original)
    for y in range(0, original.shape[0], band):
        rows = slice(y, y + band)
        a = alpha[rows, :, None]
        mixed = original[rows].astype(np.float32) * (1.0 - a) + generated[rows].astype(np.float32) * a
        out[rows] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
        keep = alpha[rows] <= 0.0
        out[rows][keep] = original[rows][keep]  # exact bytes, not a float round trip
    return out
