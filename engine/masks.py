"""Inpainting geometry: crop to the mask, pick a working size, paste back.

Pure numpy/Pillow. The contract that matters to a painter: wherever the mask
is 0, the result's pixels are byte-identical to the input.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


def mask_box(mask: np.ndarray) -> Box | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


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
    return round8(width * scale), round8(height * scale)


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


def composite(original: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend `generated` over `original` (same HxWxC uint8) with `alpha` (HxW)."""
    a = alpha[..., None]
    mixed = original.astype(np.float32) * (1.0 - a) + generated.astype(np.float32) * a
    out = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    keep = alpha <= 0.0
    out[keep] = original[keep]  # exact bytes, not a float round trip
    return out
