"""Automatic resolution: the size a model should draw at for a painter's area.

A Stable Diffusion model composes well only near the pixel count it was
trained at (its family's native size squared). Asked for much more, it tiles
the scene (the duplicated-people problem); asked for much less, it draws mush.
So for `resolution: "auto"` a request's area is planned as:

- near native (0.75x .. 1.5x the native pixel count): drawn as it is;
- much larger: a first pass near the native pixel count with the area's
  aspect, then the hires fix upscales and refines it to the area (the
  WebUI's recipe; krita-ai-diffusion does the same);
- smaller: drawn at the native pixel count, aspect kept, then scaled down.

Refine (img2img) and inpaint contexts follow the same rule: work at the
planned size, give back the area's size.

Pure Python, no torch: the server applies it and the Krita plugin imports it
to show both sizes before a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EXACT = "exact"
AUTO = "auto"
RESOLUTIONS = (EXACT, AUTO)

# The pixel count each family was trained at, as a side (SD 1.x 512, SD 2.x 768, SDXL 1024).
NATIVE_SIZE = {"sd15": 512, "sd2": 768, "sdxl": 1024}

# Pixel-count band (relative to native^2) drawn as it is. 1.5 admits SD 1.5's
# usual 512x768 portrait; below 0.75 (e.g. 384x384 on SD 1.5) detail suffers.
AS_IS_MIN = 0.75
AS_IS_MAX = 1.5
MIN_SIDE = 64  # the protocol's smallest side
MULTIPLE = 8  # latent size = pixels / 8

AS_IS = "as_is"
HIRES = "hires"  # first pass, then hires fix up to the area
DOWNSCALE = "downscale"  # first pass at native, then scaled down to the area


@dataclass(frozen=True)
class SizePlan:
    """`first`: the size the model draws at (multiples of 8); `final`: the area's size."""

    first: tuple[int, int]
    final: tuple[int, int]
    mode: str  # as_is | hires | downscale

    @property
    def scaled(self) -> bool:
        return self.first != self.final


def round_to(value: float, multiple: int = MULTIPLE) -> int:
    return max(MIN_SIDE, math.floor(value / multiple + 0.5) * multiple)


def native_size(family: str) -> int:
    """A family name (sd15 | sd2 | sdxl) -> its native side; unknown -> 512."""
    return NATIVE_SIZE.get(family, 512)


def plan(width: int, height: int, native: int) -> SizePlan:
    """The first-pass and final sizes for an area of `width` x `height`.

    `native` is the model's native side (512, 768, 1024) or a family name's
    value from `NATIVE_SIZE`. The first pass keeps the area's aspect and is
    rounded to multiples of 8; for very thin areas its short side is kept at
    least native/2 (a model cannot compose a 90-pixel-high strip), which may
    take it above the native pixel count.
    """
    if width < 1 or height < 1 or native < MIN_SIDE:
        raise ValueError(f"bad area {width}x{height} or native size {native}")
    area = width * height
    target = native * native
    ratio = area / target
    if AS_IS_MIN <= ratio <= AS_IS_MAX:
        return SizePlan((round_to(width), round_to(height)), (width, height), AS_IS)
    scale = math.sqrt(target / area)
    short = min(width, height) * scale
    if short < native / 2:  # thin strips: keep the short side drawable
        scale *= (native / 2) / short
    if ratio > AS_IS_MAX:
        scale = min(scale, 1.0)  # never draw a first pass larger than the area
    first = (round_to(width * scale), round_to(height * scale))
    if ratio > AS_IS_MAX and first[0] < width and first[1] < height:
        return SizePlan(first, (width, height), HIRES)
    if ratio > AS_IS_MAX:  # a strip so thin that the first pass is the area itself
        return SizePlan((round_to(width), round_to(height)), (width, height), AS_IS)
    return SizePlan(first, (width, height), DOWNSCALE)


def plan_for_family(width: int, height: int, family: str) -> SizePlan:
    return plan(width, height, native_size(family))
