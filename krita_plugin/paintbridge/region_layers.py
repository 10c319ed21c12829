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


# -- which layers are regions, saved with the document ---------------------------------------------
# Where the prompts live: a document annotation (as the history does, kritadoc.py), keyed by
# the layer's unique id, which Krita saves in the .kra. The layers themselves stay ordinary
# layers (a renamed or moved region keeps its prompt; a region layer exported or opened by
# another program is just a layer), and nothing is written into layer names.
REGIONS_ANNOTATION = "paintbridge/regions"


@dataclass
class RegionPrompt:
    prompt: str = ""
    negative_prompt: str | None = None  # None = the docker's negative prompt
    weight: float = 1.0


class RegionStore:
    """Layer unique id -> its region prompt, for one document."""

    def __init__(self, prompts: dict[str, RegionPrompt] | None = None) -> None:
        self.prompts: dict[str, RegionPrompt] = dict(prompts or {})

    def set(self, node_id: str, prompt: RegionPrompt) -> None:
        self.prompts[node_id] = prompt

    def get(self, node_id: str) -> RegionPrompt | None:
        return self.prompts.get(node_id)

    def remove(self, node_id: str) -> None:
        self.prompts.pop(node_id, None)

    def prune(self, existing: set[str]) -> bool:
        """Forget layers that were deleted; True if any were."""
        gone = [k for k in self.prompts if k not in existing]
        for key in gone:
            del self.prompts[key]
        return bool(gone)

    def to_bytes(self) -> bytes:
        import json

        return json.dumps({"version": 1, "regions": {k: {"prompt": p.prompt, "negative_prompt": p.negative_prompt,
                                                           "weight": p.weight} for k, p in self.prompts.items()}}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RegionStore:
        """A damaged or foreign annotation reads as no regions, never an error."""
        import json

        try:
            raw = json.loads(data.decode()) if data else {}
            entries = raw.get("regions", {}) if isinstance(raw, dict) else {}
            prompts = {}
            for key, value in entries.items():
                if not isinstance(value, dict):
                    continue
                negative = value.get("negative_prompt")
                weight = float(value.get("weight", 1.0))
                prompts[str(key)] = RegionPrompt(str(value.get("prompt", "")),
                                                 str(negative) if negative is not None else None,
                                                 min(10.0, max(0.0, weight)))
            return cls(prompts)
        except (ValueError, AttributeError, TypeError, UnicodeDecodeError):
            return cls()
