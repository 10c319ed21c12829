"""Control layers: Krita layers that steer a job through ControlNet units.

Plain Python (no Krita): the docker keeps a list of `ControlLayer`s, reads
each one's pixels, and these functions turn them into the request's
`controls`, pick a ControlNet for a kind from the server's list, and build
the `preprocess` job that makes a new control layer "from the canvas".
Control layers are only ever read: results arrive as new layers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

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
# What the docker calls each kind (every key of KINDS has one: the menu is built from them).
KIND_LABELS = {"scribble": "Scribble", "lineart": "Line art", "canny": "Canny", "depth": "Depth", "tile": "Tile",
               "normal": "Normal map", "softedge": "Soft edge"}


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
    enabled: bool = True  # off: kept in the list, not sent

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


def choices(kind: str, controlnets: Sequence[tuple[str, str]], family: str) -> list[str]:
    """The ControlNets a control of `kind` may use with a checkpoint of `family`:
    those whose name says the kind first, then the family's others (a painter's
    own files are not always named the way lllyasviel's are)."""
    words = KINDS[kind][1]
    same = [name for name, fam in controlnets if fam == family or not family]
    return sorted(same, key=lambda name: not any(w in name.lower() for w in words))


def resolve(layers: Sequence[ControlLayer], controlnets: Sequence[tuple[str, str]],
            family: str) -> list[ControlLayer]:
    """The enabled controls with their ControlNet named (the automatic choice made
    here, on the UI thread, so a missing one is a message, not a failed job)."""
    out = []
    for layer in layers:
        if not layer.enabled:
            continue
        model = layer.model or pick_model(layer.kind, controlnets, family)
        if not model:
            raise ValueError(f"no {layer.kind} ControlNet for {family or 'this model'} on the server: "
                             "choose one in the control's settings")
        known = dict(controlnets)
        if model in known and family and known[model] and known[model] != family:
            raise ValueError(f"the ControlNet {model} is for {known[model]}, the checkpoint is {family}")
        out.append(dataclasses.replace(layer, model=model))
    return out


def applies(request: JobRequest) -> bool:
    """Whether a request can carry units: an upscale by the upscaler alone
    (no diffusion) has nothing to steer, and the server refuses units there."""
    return not (request.kind == "upscale" and request.upscale is not None and request.upscale.denoise == 0)


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


MARK = "[Control]"  # the name of a layer made "from the canvas" starts with it


def layer_name(kind: str) -> str:
    return f"{MARK} {kind}"


# -- saved with the document --------------------------------------------------------------
# The list is a Krita document annotation (JSON, next to the history's): it travels in the
# .kra and refers to layers by their uniqueId, which Krita saves with each layer.
ANNOTATION = "paintbridge/controls"


def to_json(layers: Sequence[ControlLayer]) -> bytes:
    return json.dumps({"version": 1, "controls": [asdict(layer) for layer in layers]}).encode()


def from_json(data: bytes) -> list[ControlLayer]:
    """The saved list; entries this version cannot read are left out, never fatal."""
    if not data:
        return []
    try:
        saved = json.loads(data.decode())
        entries = saved.get("controls", []) if isinstance(saved, dict) else []
    except (ValueError, UnicodeDecodeError):
        return []
    names = {f.name for f in fields(ControlLayer)}
    out = []
    for entry in entries if isinstance(entries, list) else []:
        try:
            out.append(ControlLayer(**{k: v for k, v in entry.items() if k in names}))
        except (TypeError, ValueError, AttributeError):
            continue
    return out
