"""ControlNet units: models from the models folder, control images fitted to
the job, and their residuals added to every UNet call.

A ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image
Diffusion Models", eq. 2-4) is a trainable copy of the UNet's encoder whose
zero-initialised 1x1 convolutions produce one residual per skip connection
plus one for the middle block; the UNet adds them to its own features. Here
that happens inside `engine.denoiser.guided_unet`, so every job kind that
goes through the denoiser (txt2img, img2img, inpaint, the hires second pass,
the tiled upscale) gets the units.

Behaviour follows the WebUI's ControlNet extension (Mikubill/sd-webui-controlnet,
scripts/hook.py and scripts/controlnet.py), so settings mean what painters know:
- guidance start/end: the unit acts on step i of N while start <= i/N <= end;
- control mode: "balanced" adds the residuals to both CFG halves; "prompt"
  ("My prompt is more important") scales residual k of n by 0.825**(12-k)
  ("soft injection"); "control" ("ControlNet is more important") also gives
  them to the conditional half only, so CFG amplifies the control;
- in the hires second pass a canny unit is always soft, as the extension does;
- the control image is fitted to the job's area by the unit's resize mode:
  "crop and resize" (default: cover the area, cut the centred overflow),
  "just resize" (stretch) or "resize and fill" (fit inside, pad with the
  median border colour).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.errors import EngineError
from engine.families import CONFIG_ROOT, FAMILIES, Family

CONTROL_MODES = ("balanced", "prompt", "control")
# The extension's own names, for infotext.
MODE_LABELS = {"balanced": "Balanced", "prompt": "My prompt is more important", "control": "ControlNet is more important"}
RESIZE_MODES = ("crop and resize", "just resize", "resize and fill")
RESIZE_LABELS = {"crop and resize": "Crop and Resize", "just resize": "Just Resize", "resize and fill": "Resize and Fill"}
SOFT_BASE = 0.825  # hook.py: control_scales = [weight * 0.825 ** (12 - i) for i in range(13)]
MAX_CACHED = 3  # ControlNets kept loaded (several units of one job, and the next job's)

_LDM = "control_model."
_DIFFUSERS = "controlnet_cond_embedding.conv_in.weight"


# -- recognising a ControlNet file ---------------------------------------------------
def looks_like_controlnet(shapes: Mapping[str, Sequence[int]]) -> bool:
    """diffusers keys, lllyasviel's `control_model.*`, or the same without the
    prefix (as thibaud's SD 2.1 ControlNets ship; diffusers converts all three)."""
    return _DIFFUSERS in shapes or any(k.startswith((_LDM + "input_hint_block.", "input_hint_block.")) for k in shapes)


def controlnet_family(shapes: Mapping[str, Sequence[int]]) -> Family | None:
    """SDXL if it has SDXL's size/pooled-text embedding; else SD2 when its
    cross-attention takes OpenCLIP's 1024 features, else SD1.x (768, or a
    test model's own width)."""
    if not looks_like_controlnet(shapes):
        return None
    if any(k.startswith(("add_embedding.", _LDM + "label_emb.", "label_emb.")) for k in shapes):
        return FAMILIES["sdxl"]
    widths = {shape[1] for k, shape in shapes.items() if k.endswith("attn2.to_k.weight") and len(shape) == 2}
    return FAMILIES["sd2"] if 1024 in widths else FAMILIES["sd15"]


def compatible(control: str, checkpoint: str) -> bool:
    """A ControlNet works with its own family's checkpoints only (the
    cross-attention and block widths differ)."""
    return control == checkpoint


# -- loading -----------------------------------------------------------------------
def config_dir(path: Path, family: str) -> Path:
    """`<stem>.config/` beside the file (config.json), else the bundled config."""
    sidecar = path.with_suffix(".config")
    if (sidecar / "config.json").is_file():
        return sidecar
    return CONFIG_ROOT / f"controlnet-{family}"


def _sdxl_layers(state: Mapping[str, Any], config: dict) -> dict:
    """SDXL ControlNets come full, "mid" and "small": the same blocks with fewer
    transformer layers. Count them in a diffusers-layout file."""
    layers = []
    for i in range(len(config["down_block_types"])):
        found = {k.split(".")[5] for k in state if k.startswith(f"down_blocks.{i}.attentions.0.transformer_blocks.")}
        layers.append(len(found) or 1)
    if any(k.startswith("down_blocks.") for k in state):
        config = {**config, "transformer_layers_per_block": layers}
    return config


def load_controlnet(entry, device: str, dtype) -> Any:
    """A ControlNetModel from a diffusers folder or a single file (original
    `control_model.*` layout or diffusers keys), offline: the configuration
    comes from the folder, a sidecar or engine/configs/controlnet-<family>/;
    pickles only through the weights-only unpickler."""
    from diffusers import ControlNetModel

    from engine.weights import load_weights

    if entry.format == "diffusers":
        net = ControlNetModel.from_pretrained(str(entry.path), local_files_only=True, torch_dtype=dtype)
        return (net if device == "cpu" else net.to(device)).eval()
    state = load_weights(entry.path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EngineError("model_load_failed", f"{entry.path.name} holds no weights")
    shapes = {k: list(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    family = controlnet_family(shapes)
    if family is None:
        raise EngineError("model_load_failed", f"{entry.path.name} is not a ControlNet")
    folder = config_dir(entry.path, family.name)
    config = json.loads((folder / "config.json").read_text("utf-8"))
    if family.name == "sdxl" and folder.parent == CONFIG_ROOT:
        config = _sdxl_layers(state, config)
    # diffusers' own conversion of the original layout (convert_controlnet_checkpoint),
    # driven by a local config: from_single_file never looks anything up with a config given.
    net = ControlNetModel.from_single_file(state, config=str(folder), local_files_only=True, torch_dtype=dtype,
                                           **{k: v for k, v in config.items() if not k.startswith("_")})
    return (net if device == "cpu" else net.to(device)).eval()


class ControlNets:
    """Loaded ControlNets by entry, the most recently used few kept."""

    def __init__(self, device: str, dtype) -> None:
        self.device = device
        self.dtype = dtype
        self._nets: OrderedDict[Any, tuple[Any, str]] = OrderedDict()

    def get(self, entry) -> tuple[Any, str]:
        """(model, family) for a registry entry."""
        if entry in self._nets:
            self._nets.move_to_end(entry)
            return self._nets[entry]
        from engine.models import is_out_of_memory, one_line

        try:
            net = load_controlnet(entry, self.device, self.dtype)
        except EngineError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                raise EngineError("out_of_memory", f"not enough memory to load {entry.name}") from exc
            raise EngineError("model_load_failed", f"could not load {entry.name}: {one_line(exc)}") from exc
        family = entry.family.name if entry.family else _net_family(net)
        self._nets[entry] = (net, family)
        while len(self._nets) > MAX_CACHED:
            self._nets.popitem(last=False)
        return net, family

    def clear(self) -> None:
        self._nets.clear()


def _net_family(net) -> str:
    if net.config.addition_embed_type == "text_time":
        return "sdxl"
    return "sd2" if net.config.cross_attention_dim == 1024 else "sd15"


# -- fitting a control image to the job ---------------------------------------------
def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The extension's high_quality_resize: area averaging to shrink, Lanczos to enlarge."""
    if size == image.size:
        return image
    shrink = size[0] * size[1] < image.width * image.height
    return image.resize(size, Image.BOX if shrink else Image.LANCZOS)


def fit(image: np.ndarray, width: int, height: int, mode: str = "crop and resize") -> np.ndarray:
    """HxWx3 uint8 -> height x width x 3 by the extension's resize modes
    (scripts/controlnet.py, detectmap_proc)."""
    source = Image.fromarray(image)
    if mode == "just resize":
        return np.asarray(_resize(source, (width, height)))
    w0, h0 = source.size
    if mode == "resize and fill":
        k = min(height / h0, width / w0)
        small = np.asarray(_resize(source, (max(1, round(w0 * k)), max(1, round(h0 * k)))))
        borders = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        out = np.tile(np.median(borders, axis=0).astype(np.uint8)[None, None], (height, width, 1))
        nh, nw = small.shape[:2]
        top, left = max(0, (height - nh) // 2), max(0, (width - nw) // 2)
        out[top : top + nh, left : left + nw] = small[:height, :width]
        return out
    k = max(height / h0, width / w0)
    big = np.asarray(_resize(source, (max(width, round(w0 * k)), max(height, round(h0 * k)))))
    top, left = max(0, (big.shape[0] - height) // 2), max(0, (big.shape[1] - width) // 2)
    return np.ascontiguousarray(big[top : top + height, left : left + width])


# -- units at work -------------------------------------------------------------------
@dataclass
class Unit:
    """One prepared unit: a ControlNet and its control image at the frame's size."""

    net: Any
    image: np.ndarray  # H x W x 3 uint8, the job's whole frame (pixels)
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: str = "balanced"
    preprocess: str = "none"
    soft_hires: bool = False  # the hires second pass: canny units go soft, as in the extension
    _hint: Any = None

    def hint(self, device, dtype):
        """1 x 3 x H x W in 0..1, as ControlNets are trained (diffusers' do_normalize=False)."""
        import torch

        if self._hint is None or self._hint.device != device or self._hint.dtype != dtype:
            self._hint = (torch.from_numpy(np.array(self.image)).permute(2, 0, 1)[None].float() / 255.0
                          ).to(device, dtype)
        return self._hint

    def scales(self, count: int) -> list[float]:
        """Per-residual weights, in the UNet's order (skip connections, then middle)."""
        if self.mode != "balanced" or (self.soft_hires and self.preprocess == "canny"):
            return [self.strength * SOFT_BASE ** float(12 - i) for i in range(count)]
        return [self.strength] * count


class Control:
    """The units of one sampling pass, asked for the UNet's extra residuals."""

    def __init__(self, units: list[Unit]) -> None:
        self.units = [u for u in units if u.strength != 0]  # strength 0 is no unit at all
        self.timesteps: list[float] = []  # the pass's steps, first to last (descending)

    def __bool__(self) -> bool:
        return bool(self.units)

    def schedule(self, timesteps: Sequence[float]) -> None:
        self.timesteps = [float(t) for t in timesteps]

    def fraction(self, t: float) -> float:
        """Step i of N as i/N (the extension's sampling_step / total_sampling_steps);
        a second-order sampler's intermediate evaluation belongs to its step."""
        if not self.timesteps:
            return 0.0
        i = max(0, sum(1 for s in self.timesteps if s >= t - 1e-3) - 1)
        return i / len(self.timesteps)

    def residuals(self, x, t, hidden, added, guided: bool, crops: Sequence[tuple[int, int, int, int]] | None = None,
                  conditional: Sequence[bool] | None = None):
        """Keyword arguments for the UNet call: the units' summed residuals, or {}.

        x: the latent input (N, or 2N with CFG: unconditional half first);
        crops: for tiled diffusion, each tile's (y, x, h, w) in latent pixels,
        so a tile sees its own part of the control image; conditional: for a
        batch of several conditionings of the same N latents (regions, engine/
        regions.py), whether each block of N is a prompt's conditional entry
        (True) or an unconditional one, in place of `guided`'s two halves."""
        import torch

        fraction = self.fraction(float(t))
        down: list | None = None
        mid = None
        if conditional is None:
            conditional = (False, True) if guided else (True,)
        n = x.shape[0] // len(conditional)
        for unit in self.units:
            if fraction < unit.start or fraction > unit.end:
                continue
            hint = unit.hint(x.device, x.dtype)
            if crops is None:
                hints = hint.expand(n, -1, -1, -1)
            else:
                hints = torch.cat([hint[:, :, y * 8 : (y + h) * 8, xx * 8 : (xx + w) * 8] for y, xx, h, w in crops])
            hints = hints.repeat(len(conditional), 1, 1, 1)
            soft = unit.mode != "balanced" or (unit.soft_hires and unit.preprocess == "canny")
            # A uniform weight is applied by the ControlNet itself (conditioning_scale), as diffusers does.
            d, m = unit.net(x, t, encoder_hidden_states=hidden, controlnet_cond=hints, added_cond_kwargs=added,
                            conditioning_scale=1.0 if soft else unit.strength, return_dict=False)
            if soft:
                scales = unit.scales(len(d) + 1)
                d = [r * s for r, s in zip(d, scales[:-1], strict=True)]
                m = m * scales[-1]
            if unit.mode == "control" and not all(conditional):  # cfg_injection: the conditional entries only
                mark = torch.tensor(conditional, dtype=x.dtype).repeat_interleave(n).to(x.device).view(-1, 1, 1, 1)
                d, m = [r * mark for r in d], m * mark
            down = d if down is None else [a + b for a, b in zip(down, d, strict=True)]
            mid = m if mid is None else mid + m
        if down is None:
            return {}
        return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}


# -- from a job's units to a pass's Control ------------------------------------------
@dataclass
class Prepared:
    """A unit with its control image preprocessed, not yet fitted to a frame."""

    net: Any
    image: np.ndarray  # H x W x 3 uint8
    params: Any  # engine.params.ControlParams

    def at(self, width: int, height: int, box: tuple[int, int, int, int] | None = None,
           frame: tuple[int, int] | None = None, hires: bool = False) -> Unit:
        """This unit for a pass of width x height pixels. With `box` (inpaint's
        crop region, in the `frame`'s pixels) the image is fitted to the frame
        first and the box's part of it is used, as the extension does for
        "inpaint only masked"."""
        p = self.params
        if box is None:
            image = fit(self.image, width, height, p.resize_mode)
        else:
            assert frame is not None
            x0, y0, x1, y1 = box
            whole = fit(self.image, frame[0], frame[1], p.resize_mode)
            image = np.asarray(_resize(Image.fromarray(np.ascontiguousarray(whole[y0:y1, x0:x1])), (width, height)))
        return Unit(self.net, image, p.strength, p.start, p.end, p.mode, p.preprocess, hires)


def control_for(prepared: Sequence[Prepared], width: int, height: int, **kwargs: Any) -> Control | None:
    control = Control([p.at(width, height, **kwargs) for p in prepared])
    return control if control else None


def infotext_fields(units: Sequence[Any]) -> dict[str, str]:
    """The extension's "ControlNet i" fields (internal_controlnet/args.py, serialize)."""
    out = {}
    for i, u in enumerate(units):
        fields = {
            "Module": u.preprocess if u.preprocess != "none" else "none",
            "Model": u.model,
            "Weight": f"{u.strength:g}",
            "Resize Mode": RESIZE_LABELS[u.resize_mode],
            "Guidance Start": f"{u.start:g}",
            "Guidance End": f"{u.end:g}",
            "Control Mode": MODE_LABELS[u.mode],
        }
        out[f"ControlNet {i}"] = ", ".join(f"{k}: {v}" for k, v in fields.items())
    return out


def parse_infotext_unit(text: str) -> dict[str, str]:
    """'Module: depth, Model: x, Weight: 1, ...' -> {'module': 'depth', ...}."""
    out = {}
    for item in text.split(","):
        key, _, value = item.strip().partition(": ")
        if key:
            out["_".join(w.lower() for w in key.split(" "))] = value.strip()
    return out


def mode_from_label(label: str) -> str:
    for mode, text in MODE_LABELS.items():
        if text.lower() == label.lower() or mode == label.lower():
            return mode
    return "balanced"


def resize_from_label(label: str) -> str:
    for mode, text in RESIZE_LABELS.items():
        if text.lower() == label.lower():
            return mode
    return "crop and resize"


# -- the job's side: checks before queueing, units before sampling ----------------------
PREPROCESSORS = ("none", "depth", "canny", "lineart", "scribble", "tile", "normal", "softedge")


def check(registry, params, checkpoint) -> None:
    """Every check on a job's units that needs no model work: names, families,
    ranges, images, the sampler, a preprocessor's weights."""
    if not params.controls:
        return
    from engine import preprocess
    from engine.registry import CONTROLNET
    from engine.samplers import lookup

    lookup(params.sampler)  # an unknown sampler is named before the units
    if params.kind == "upscale" and params.upscale is not None and params.upscale.denoise == 0:
        raise EngineError("invalid_request", "an upscale with denoise 0 runs no diffusion for ControlNet units to steer",
                          field="controls")
    for i, unit in enumerate(params.controls):
        where = f"controls[{i}]"
        if not unit.model:
            raise EngineError("invalid_request", f"{where}.model names no ControlNet", field=f"{where}.model")
        entry = registry.get(unit.model, CONTROLNET, field=f"{where}.model")
        if checkpoint is not None and entry.family is not None and checkpoint.family is not None:
            if not compatible(entry.family.name, checkpoint.family.name):
                raise EngineError(
                    "invalid_request",
                    f"{where}.model {entry.name} is a {entry.family.label} ControlNet; "
                    f"the checkpoint {checkpoint.name} is {checkpoint.family.label}",
                    field=f"{where}.model",
                )
        if unit.mode not in CONTROL_MODES:
            raise EngineError("invalid_request", f"{where}.mode must be one of {', '.join(CONTROL_MODES)}",
                              field=f"{where}.mode")
        if unit.resize_mode not in RESIZE_MODES:
            raise EngineError("invalid_request", f"{where}.resize_mode must be one of {', '.join(RESIZE_MODES)}",
                              field=f"{where}.resize_mode")
        if not (0.0 <= unit.start <= unit.end <= 1.0):
            raise EngineError("invalid_request", f"{where}: guidance start ({unit.start:g}) and end ({unit.end:g}) "
                              "must satisfy 0 <= start <= end <= 1", field=f"{where}.start")
        image = unit.image if unit.image is not None else params.image
        if image is None:
            raise EngineError("invalid_request", f"{where} has no image, and a {params.kind} job has no image of its "
                              "own to take it from", field=f"{where}.image")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)) or min(image.shape[:2]) < 1:
            raise EngineError("invalid_request", f"{where}.image must be gray, RGB or RGBA", field=f"{where}.image")
        preprocess.check(unit.preprocess, registry.root, f"{where}.preprocess")


def rgb(image: np.ndarray) -> np.ndarray:
    """A control image as HxWx3: gray spread to RGB, transparency flattened over white."""
    if image.ndim == 2 or image.shape[2] == 1:
        return np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    if image.shape[2] == 3:
        return np.ascontiguousarray(image)
    alpha = image[..., 3:4].astype(np.float32) / 255.0
    return (image[..., :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)


def prepare(engine, model, params) -> list[Prepared]:
    """Load each unit's ControlNet and preprocess its image (once per job)."""
    from engine import preprocess
    from engine.registry import CONTROLNET

    prepared = []
    for i, unit in enumerate(params.controls):
        entry = engine.registry.get(unit.model, CONTROLNET, field=f"controls[{i}].model")
        net, family = engine.controlnets.get(entry)
        if not compatible(family, model.family):
            raise EngineError("invalid_request", f"controls[{i}].model {entry.name} is a {FAMILIES[family].label} "
                              f"ControlNet; the checkpoint is {FAMILIES[model.family].label}", field=f"controls[{i}].model")
        if net.dtype != model.base.unet.dtype or net.device != model.base.unet.device:
            net.to(model.base.unet.device, model.base.unet.dtype)
        source = rgb(unit.image if unit.image is not None else params.image)
        image = preprocess.run(unit.preprocess, source, engine.registry.root, engine.models.device)
        prepared.append(Prepared(net, image, unit))
    return prepared
