"""Regions on the wire: a prompt per area of the picture (engine/regions.py).

A region's mask is raw 8-bit gray pixels (255 = the region; soft edges blend
its prompt with what lies under it). The base prompt covers what no region
covers. Masks are client bytes, so what the engine holds for them follows
the bytes sent; the count is bounded so the per-step UNet work is too.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import invalid
from protocol.fields import bounded
from protocol.images import RawImage

MAX_REGIONS = 16  # each distinct prompt is one more UNet evaluation per step


@dataclass
class Region:
    mask: RawImage  # 8-bit gray (1 channel), 255 = the region, soft values blend
    prompt: str = ""  # WebUI syntax; <lora:...> belongs in the base prompt (LoRAs act on the whole picture)
    negative_prompt: str | None = None  # null = the request's negative prompt
    weight: float = bounded(1.0, 0.0, 10.0)  # how strongly it wins where it overlaps others or the base


def check_regions(regions: list[Region], image: RawImage | None) -> None:
    """Count, channels, and sizes: every mask the size of the input image
    (jobs with an image: the mask lines up with the layer pixel for pixel);
    txt2img masks are all one size, stretched to the generated size."""
    if len(regions) > MAX_REGIONS:
        raise invalid("regions", f"at most {MAX_REGIONS} regions, got {len(regions)}")
    for i, region in enumerate(regions):
        where = f"regions[{i}].mask"
        if region.mask.channels != 1:
            raise invalid(f"{where}.channels", f"{where} must be 8-bit gray (1 channel), got {region.mask.channels}")
        if image is not None and region.mask.size != image.size:
            raise invalid(where, f"{where} is {region.mask.width}x{region.mask.height}, the image is "
                          f"{image.width}x{image.height}; region masks must match it")
        if image is None and region.mask.size != regions[0].mask.size:
            raise invalid(where, f"{where} is {region.mask.width}x{region.mask.height}, regions[0].mask is "
                          f"{regions[0].mask.width}x{regions[0].mask.height}; region masks must have one size")
