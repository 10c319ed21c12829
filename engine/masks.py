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


# -- soft masks (issue 13): grow and feather a selection ------------------------------
AUTO = -1
FEATHER_OF_DIAGONAL = 0.10  # krita-ai-diffusion's "Selection Feather" default: 10% of the selection's size
MIN_FEATHER = 32  # ...and its minimum transition, px (both scaled by the strength, as it does)
AUTO_GROW = 4  # px past the selection's anti-aliased edge before the soft ramp starts


def resolve_grow_feather(mask: np.ndarray, grow: int, feather: int, strength: float) -> tuple[int, int]:
    """-1 ("auto") -> sizes that hide the seam, scaled to the selection as
    krita-ai-diffusion does: feather = max(10% of the selection's diagonal,
    32 px) x strength (a light refine needs a narrower transition), grow 4 px."""
    box = mask_box(mask >= 128) or mask_box(mask)
    diagonal = 0.0 if box is None else float(np.hypot(box[2] - box[0], box[3] - box[1]))
    if feather == AUTO:
        feather = round(max(FEATHER_OF_DIAGONAL * diagonal, MIN_FEATHER) * max(strength, 0.1))
    if grow == AUTO:
        grow = AUTO_GROW
    return max(0, grow), max(0, feather)


def soft_mask(mask: np.ndarray, grow: int, feather: int) -> np.ndarray:
    """The selection (HxW uint8, 255 = repaint) grown by `grow` px and given a
    `feather` px soft edge outside it: alpha in 0..1, HxW float32.

    Built on the exact Euclidean distance to the selection (scipy's distance
    transform) rather than a blur of a dilation: it is 1 everywhere inside the
    selection and `grow` px around it, then falls smoothly (smoothstep) to 0
    at grow + feather px, so the painter's selection is always fully repainted
    and the transition is exactly as wide as asked. A soft selection keeps its
    own values where they are higher (alpha = max(selection, ramp)).
    Only the selection's box plus the margin is processed, so a small
    selection on a 4k canvas costs what its box costs.
    """
    from scipy import ndimage

    alpha = mask.astype(np.float32) / 255.0
    core = mask >= 128
    box = mask_box(core)
    if box is None or (grow <= 0 and feather <= 0):
        return alpha
    h, w = mask.shape
    x0, y0, x1, y1 = expand_box(box, grow + feather + 1, w, h)
    distance = ndimage.distance_transform_edt(~core[y0:y1, x0:x1])
    if feather > 0:
        t = np.clip((grow + feather - distance) / feather, 0.0, 1.0)
        ramp = t * t * (3.0 - 2.0 * t)
    else:
        ramp = distance <= grow
    alpha[y0:y1, x0:x1] = np.maximum(alpha[y0:y1, x0:x1], ramp.astype(np.float32))
    return alpha


def to_mask(alpha: np.ndarray) -> np.ndarray:
    """0..1 float -> 8-bit mask."""
    return np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)


def layer(generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """A layer-ready result: the generated RGB with alpha = the blend mask,
    fully transparent (RGB zeroed) where the mask is 0."""
    out = np.empty((*alpha.shape, 4), np.uint8)
    out[..., :3] = generated[..., :3]
    out[..., 3] = to_mask(alpha)
    out[out[..., 3] == 0] = 0
    return out
