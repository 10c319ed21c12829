"""What the masked area holds before diffusion: the inpaint modes.

The model starts from the masked pixels (blended with noise by the
strength), so what is there steers what it draws. The modes follow
krita-ai-diffusion's (ai_diffusion/backend/workflow.py, `detect_inpaint` and
`fill_masked`), with numpy/scipy in place of its ComfyUI nodes:

- original: the pixels as they are (the WebUI's "masked content: original").
- fill: a strong blur of the content: its colours and layout stay, its
  detail goes, so the model replaces what is there.
- expand: unknown pixels (a canvas grown by N px, or a transparent strip)
  continue the known ones smoothly (push-pull interpolation, `_extend`),
  then a blur. krita-ai runs OpenCV's Navier-Stokes inpainting and a blur;
  push-pull gives the same membrane-smooth continuation of the border
  colours without OpenCV (a large binary dependency), in a few numpy passes
  for any strip width.
- add: neutral grey with a soft border, so the model draws something new
  rather than continuing what is around it.
- remove: the object erased from its surroundings (push-pull from the
  unmasked pixels and a strong blur; krita-ai uses a LaMa model for this,
  which the models folder may not have), and with an empty prompt
  "background scenery".

The pre-fill is for generating into the selection (strength 1): a partial
refine keeps what is there. Unknown pixels (transparent in the input) are
always pre-filled, whatever the mode, since they hold no colour at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

MODES = ("original", "fill", "expand", "add", "remove")
REMOVE_PROMPT = "background scenery"  # krita-ai-diffusion's prompt for an empty remove
FILL_SIGMA = 12.0  # px: krita-ai blurs with a 65 px kernel
EXPAND_SIGMA = 8.0
REMOVE_SIGMA = 16.0
FALLOFF = 9.0  # px of soft border between the fill and the kept pixels, as krita-ai's `falloff=9`
NEUTRAL = 127


def _blur(rgb: np.ndarray, sigma: float, where: np.ndarray) -> np.ndarray:
    """A Gaussian blur, computed only around `where` (the pixels that use it)."""
    from scipy import ndimage

    out = rgb.astype(np.float32)
    ys, xs = np.nonzero(where)
    if len(ys) == 0:
        return out
    margin = int(4 * sigma) + 1
    y0, y1 = max(0, ys.min() - margin), min(where.shape[0], ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(where.shape[1], xs.max() + 1 + margin)
    out[y0:y1, x0:x1] = ndimage.gaussian_filter(out[y0:y1, x0:x1], sigma=(sigma, sigma, 0), mode="nearest")
    return out


def _extend(rgb: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Unknown pixels interpolated smoothly from the known ones: push-pull
    (Gortler et al. 1996, "The Lumigraph", section 3.4): average the known
    pixels down a 2x pyramid until every cell has some, then come back up,
    keeping each level's own average where it has known pixels and the
    coarser level's (bilinear) elsewhere. Like OpenCV's Navier-Stokes fill it
    gives a membrane-smooth continuation of the border colours, without the
    star-shaped seams of nearest-pixel filling; every step is a numpy pass."""
    if known.all() or not known.any():
        return rgb.copy()
    color = rgb.astype(np.float32) * known[..., None]
    weight = known.astype(np.float32)
    levels = [(color, weight)]
    while min(weight.shape) > 1 and not (weight > 0).all():
        h, w = weight.shape
        ph, pw = h % 2, w % 2  # pad odd sides with empty cells
        color = np.pad(color, ((0, ph), (0, pw), (0, 0)))
        weight = np.pad(weight, ((0, ph), (0, pw)))
        color = color.reshape(color.shape[0] // 2, 2, color.shape[1] // 2, 2, 3).sum(axis=(1, 3))
        weight = weight.reshape(weight.shape[0] // 2, 2, weight.shape[1] // 2, 2).sum(axis=(1, 3))
        levels.append((color, weight))
    color, weight = levels[-1]
    filled = np.where(weight[..., None] > 0, color / np.maximum(weight, 1e-6)[..., None], color.sum((0, 1)) / weight.sum())
    for color, weight in reversed(levels[:-1]):
        h, w = weight.shape
        up = np.dstack([np.asarray(Image.fromarray(np.ascontiguousarray(filled[..., c]), "F").resize((w, h), Image.BILINEAR))
                        for c in range(3)])
        alpha = np.minimum(weight, 1.0)[..., None]
        own = color / np.maximum(weight, 1e-6)[..., None]
        filled = alpha * own + (1.0 - alpha) * up
    out = rgb.copy()
    out[~known] = np.clip(np.rint(filled[~known]), 0, 255).astype(np.uint8)
    return out


def _inside(region: np.ndarray, falloff: float) -> np.ndarray:
    """0 at the region's border rising to 1 `falloff` px inside it."""
    from scipy import ndimage

    if falloff <= 0:
        return region.astype(np.float32)
    return np.clip(ndimage.distance_transform_edt(region) / falloff, 0.0, 1.0).astype(np.float32)


def prefill(rgb: np.ndarray, mask: np.ndarray, mode: str, unknown: np.ndarray | None = None,
            strength: float = 1.0) -> np.ndarray:
    """`rgb` (HxWx3 uint8) with the masked area (mask >= 128) prepared for `mode`.

    `unknown` (HxW bool) marks pixels with no colour (transparent in the
    input): they are filled from the known ones in every mode.
    """
    region = mask >= 128
    unknown = np.zeros(region.shape, bool) if unknown is None else unknown
    if mode not in MODES:
        raise ValueError(f"unknown inpaint mode {mode!r}")
    active = (mode != "original" and strength >= 1.0) or mode == "expand"
    if not active and not unknown.any():
        return rgb
    out = rgb.astype(np.float32)
    continues = active and mode in ("expand", "remove")
    if unknown.any() and not (continues and (~unknown | region).all()):
        # No colour at all: continue the known pixels into them, then soften. (Skipped when the
        # continuation below covers every unknown pixel anyway.)
        known = ~unknown
        extended = _blur(_extend(rgb, known), EXPAND_SIGMA, unknown)
        out[unknown] = extended[unknown]
    if not active:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if mode == "fill":
        filled = _blur(out, FILL_SIGMA, region)
    elif mode == "add":
        filled = np.full_like(out, NEUTRAL)
    else:  # expand, remove: continue the surroundings into the whole masked area
        source = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        known = ~region & ~unknown
        filled = _blur(_extend(source, known if known.any() else ~region),
                       REMOVE_SIGMA if mode == "remove" else EXPAND_SIGMA, region)
    weight = _inside(region, FALLOFF if mode in ("fill", "add") else 0.0)[..., None]
    out = out * (1.0 - weight) + filled * weight
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def inpainting_checkpoint(registry: Any, params: Any) -> Any:
    """For an inpaint job that names no model: the models folder's inpainting
    checkpoint of the default model's family, if it has one (preferring one
    named after the default, e.g. `dreamshaper-inpainting` for `dreamshaper`).
    A 9-channel UNet sees the mask and the masked image and blends new
    content into its surroundings far better than an ordinary model given
    only the mask; without one, the ordinary model inpaints with the mask.
    A model the request names is used as named."""
    from engine.registry import CHECKPOINT

    if params.kind != "inpaint" or params.model:
        return None
    default = registry.default_checkpoint()
    if default is None or default.inpainting:
        return None
    stem = default.name.lower()
    candidates = [e for e in registry.list(CHECKPOINT) if e.inpainting and e.family == default.family]
    candidates.sort(key=lambda e: (not e.name.lower().startswith(stem), e.name))
    return candidates[0] if candidates else None
