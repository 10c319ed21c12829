"""What the masked area holds before diffusion: the inpaint modes.

The model starts from the masked pixels (blended with noise by the
strength), so what is there steers what it draws. The modes follow
krita-ai-diffusion's (ai_diffusion/backend/workflow.py, `detect_inpaint` and
`fill_masked`), with numpy/scipy in place of its ComfyUI nodes:

- original: the pixels as they are (the WebUI's "masked content: original").
- fill: a strong blur of the content: its colours and layout stay, its
  detail goes, so the model replaces what is there.
- expand: unknown pixels (a canvas grown by N px, or a transparent strip)
  take the colour of the nearest known pixel, then a blur. krita-ai runs
  OpenCV's Navier-Stokes inpainting and a blur; nearest-pixel extension by
  scipy's exact distance transform (`return_indices`) gives the same
  continuous border colours without OpenCV (a large binary dependency) and
  runs in one pass for any strip width.
- add: neutral grey with a soft border, so the model draws something new
  rather than continuing what is around it.
- remove: the object erased from its surroundings (nearest-pixel extension
  and a strong blur; krita-ai uses a LaMa model for this, which the models
  folder may not have), and with an empty prompt "background scenery".

The pre-fill is for generating into the selection (strength 1): a partial
refine keeps what is there. Unknown pixels (transparent in the input) are
always pre-filled, whatever the mode, since they hold no colour at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MODES = ("original", "fill", "expand", "add", "remove")
REMOVE_PROMPT = "background scenery"  # krita-ai-diffusion's prompt for an empty remove
FILL_SIGMA = 12.0  # px: krita-ai blurs with a 65 px kernel
EXPAND_SIGMA = 8.0
REMOVE_SIGMA = 16.0
FALLOFF = 9.0  # px of soft border between the fill and the kept pixels, as krita-ai's `falloff=9`
NEUTRAL = 127


def _blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(rgb.astype(np.float32), sigma=(sigma, sigma, 0), mode="nearest")


def _extend(rgb: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Every unknown pixel takes the colour of its nearest known pixel."""
    from scipy import ndimage

    if known.all() or not known.any():
        return rgb.copy()
    _, (iy, ix) = ndimage.distance_transform_edt(~known, return_indices=True)
    return rgb[iy, ix]


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
    if unknown.any():  # no colour at all: extend the known pixels into them, then soften
        extended = _blur(_extend(rgb, ~unknown), EXPAND_SIGMA)
        out[unknown] = extended[unknown]
    if not active:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if mode == "fill":
        filled = _blur(out, FILL_SIGMA)
    elif mode == "add":
        filled = np.full_like(out, NEUTRAL)
    else:  # expand, remove: continue the surroundings into the whole masked area
        source = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        filled = _blur(_extend(source, ~region & ~unknown if (~region & ~unknown).any() else ~region),
                       REMOVE_SIGMA if mode == "remove" else EXPAND_SIGMA)
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
