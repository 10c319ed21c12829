"""Region layers -> the request's `regions` (protocol/regions.py), without Krita.

A region is a layer (or group) the painter gave a prompt; its alpha over the
job's work area is the mask (soft brush edges stay soft). The docker reads
each such layer's pixels over the work area (`node.pixelData(x, y, w, h)`,
or `projectionPixelData` for a group) and hands them here with the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from protocol import JobRequest, RawImage
from protocol.regions import MAX_REGIONS, Region

from .colors import to_rgba8


class TooManyRegions(Exception):
    pass


@dataclass(frozen=True)
class RegionLayer:
    """What the docker knows of one region layer, its pixels read over the work area."""

    prompt: str
    pixels: bytes  # Krita pixel data over the work area, in the document's colour space
    model: str = "RGBA"  # the colour model and depth of `pixels` (colors.SUPPORTED)
    depth: str = "U8"
    negative_prompt: str | None = None  # None = the docker's negative prompt
    weight: float = 1.0
    visible: bool = True


def alpha_mask(pixels: bytes, model: str, depth: str) -> bytes:
    """A layer's alpha as 8-bit gray: 255 where it is opaque."""
    return to_rgba8(pixels, model, depth)[3::4]


def regions(layers: list[RegionLayer], width: int, height: int) -> list[Region]:
    """The request's regions for a work area of width x height: hidden layers,
    layers with no prompt and layers with nothing painted over the area are
    left out (an empty region changes nothing, so it is not sent)."""
    out = []
    for layer in layers:
        if not layer.visible or not layer.prompt.strip():
            continue
        alpha = alpha_mask(layer.pixels, layer.model, layer.depth)
        if len(alpha) != width * height:
            raise ValueError(f"region layer pixels cover {len(alpha)} pixels, the area {width}x{height}")
        if not any(alpha):
            continue
        out.append(Region(RawImage(width, height, 1, alpha), layer.prompt, layer.negative_prompt, layer.weight))
    if len(out) > MAX_REGIONS:
        raise TooManyRegions(f"{len(out)} region layers have a prompt; the server takes at most {MAX_REGIONS}")
    return out


def with_regions(request: JobRequest, layers: list[RegionLayer], width: int, height: int) -> JobRequest:
    """Generate, refine or inpaint over a work area, with its region layers.
    The masks are the area's size, as the image is (txt2img stretches them to
    its multiple-of-8 size, the same way the result is fitted back)."""
    found = regions(layers, width, height)
    return replace(request, regions=found) if found else request
