"""Control layers: Krita layers that steer a job through ControlNet units.

Plain Python (no Krita): the docker keeps a list of `ControlLayer`s, reads
each one's pixels, and these functions turn them into the request's
`controls`, pick a ControlNet for a kind from the server's list, and build
the `preprocess` job that makes a new control layer "from the canvas".
Control layers are only ever read: results arrive as new layers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from protocol import ControlUnit, JobRequest, RawImage

# Kind of control -> the server's preprocessor for a layer that is a picture
# rather than a finished control image, and the words ControlNet files of that
# kind carry in their names (lllyasviel's control_v11*_sd15_<kind>, diffusers'
# controlnet-<kind>-sdxl...).
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "scribble": ("scribble", ("scribble",)),
    "lineart": ("lineart", ("lineart",)),
    "canny": ("canny", ("canny",)),
    "depth": ("depth", ("depth",)),
    "tile": ("tile", ("tile", "blur")),
    "normal": ("normal", ("normal",)),
    "softedge": ("softedge", ("softedge", "hed", "pidi")),
}


@dataclass(frozen=True)
class ControlLayer:
    """One control in the docker: which layer, what kind, how strong and when."""

    layer_id: str  # the Krita node's uniqueId
    kind: str  # one of KINDS
    model: str = ""  # "" = the first matching ControlNet of the checkpoint's family
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: str = "balanced"  # balanced | prompt | control
    is_control_image: bool = False  # made by the server's preprocessor (a depth map...): used as it is

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown control kind {self.kind!r}; one of {', '.join(KINDS)}")


def pick_model(kind: str, controlnets: Sequence[tuple[str, str]], family: str) -> str:
    """The first ControlNet (name, family) of `family` whose name says `kind`; "" if none."""
    words = KINDS[kind][1]
    for name, fam in controlnets:
        if fam == family and any(w in name.lower() for w in words):
            return name
    return ""


def control_units(layers: Sequence[ControlLayer], pixels: Callable[[ControlLayer], RawImage],
                  controlnets: Sequence[tuple[str, str]] = (), family: str = "") -> list[ControlUnit]:
    """The request's `controls`: each layer's pixels (any size: the server fits
    them to the job's area) with its settings. A layer without a ControlNet of
    its kind is an error the painter can act on."""
    units = []
    for layer in layers:
        model = layer.model or pick_model(layer.kind, controlnets, family)
        if not model:
            raise ValueError(f"no {layer.kind} ControlNet for {family or 'this model'} on the server")
        preprocess = "none" if layer.is_control_image else KINDS[layer.kind][0]  # a picture: the server prepares it
        units.append(ControlUnit(model=model, image=pixels(layer), strength=layer.strength, start=layer.start,
                                 end=layer.end, mode=layer.mode, preprocess=preprocess))
    return units


def with_controls(request: JobRequest, units: Sequence[ControlUnit]) -> JobRequest:
    """A generate / refine / inpaint / upscale request carrying the units."""
    return dataclasses.replace(request, controls=list(units))


def preprocess_request(kind: str, image: RawImage) -> JobRequest:
    """"From the canvas": the server turns `image` into a control image of `kind`,
    returned at the same size, for a new layer the painter may paint over."""
    return JobRequest(kind="preprocess", image=image, controls=[ControlUnit(preprocess=KINDS[kind][0])])


def layer_name(kind: str) -> str:
    return f"[Control] {kind}"
