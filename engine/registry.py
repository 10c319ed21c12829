"""The models folder: what is in it, and safe lookup by name.

Accepts the layouts users already have:
- AUTOMATIC1111 WebUI: Stable-diffusion/, Lora/, VAE/, ESRGAN/, embeddings/, ControlNet/
- ComfyUI: checkpoints/, loras/, vae/, upscale_models/, embeddings/, controlnet/
- a flat folder, where each `.safetensors` is classified from its header.
Diffusers-format folders (with `model_index.json`) count as checkpoints.

A model is only ever found through the scanned table, so a name cannot point
outside the folder however it is spelled; names are still checked first so
that the error says what is wrong.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.control import controlnet_family, looks_like_controlnet
from engine.errors import EngineError
from engine.families import FAMILIES, Detected, Family, detect, looks_like_lora, looks_like_upscaler, looks_like_vae
from engine.fewstep import FewStep, read_metadata
from engine.fewstep import detect as detect_few_step

CHECKPOINT, VAE, LORA, UPSCALER, EMBEDDING = "checkpoint", "vae", "lora", "upscaler", "embedding"
CONTROLNET = "controlnet"
SUPIR = "supir"  # SUPIR-v0Q / v0F restoration models (engine/supir.py), used with an SDXL checkpoint
KINDS = (CHECKPOINT, VAE, LORA, UPSCALER, EMBEDDING, CONTROLNET, SUPIR)

# Folder name (lower case) -> what it holds, for the WebUI and ComfyUI layouts.
ROLE_FOLDERS = {
    "stable-diffusion": CHECKPOINT,
    "checkpoints": CHECKPOINT,
    "diffusers": CHECKPOINT,
    "lora": LORA,
    "loras": LORA,
    "lycoris": LORA,
    "vae": VAE,
    "esrgan": UPSCALER,
    "realesrgan": UPSCALER,
    "upscale_models": UPSCALER,
    "embeddings": EMBEDDING,
    "controlnet": CONTROLNET,  # the WebUI's ControlNet/ and ComfyUI's controlnet/
    "supir": SUPIR,  # kijai's ComfyUI-SUPIR users keep them in SUPIR/ (or upscale_models/)
}
SAFE_EXTS = (".safetensors",)
PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin")  # loaded only with torch.load(weights_only=True)
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


@dataclass(frozen=True)
class ModelEntry:
    name: str  # relative posix path without extension, e.g. "sd15/dreamshaper_8"
    kind: str
    path: Path
    format: str  # safetensors | pickle | diffusers
    family: Family | None = None
    inpainting: bool = False
    few_step: FewStep | None = None  # LCM / Turbo / Lightning / Hyper (engine/fewstep.py): its defaults
    depth: bool = False  # SD 2's depth-conditioned model (engine/families.py)

    @property
    def native_size(self) -> int:
        return self.family.native_size if self.family else 0


def read_safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header, without reading weights.

    Parsed by hand (8-byte length + JSON, the documented format) because
    `safe_open` needs a framework and would import torch just to list a folder.
    """
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("file too short")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER:
            raise ValueError("header too large")
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise ValueError("header is not a map")
    return {k: list(v.get("shape", [])) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


KIND_LABELS = {"lora": "LoRA", "vae": "VAE", "embedding": "embedding", "upscaler": "upscaler"}


def check_name(name: str, field: str = "model", kind: str = "") -> None:
    """Refuse names that try to leave the models folder, with a clear message
    naming what the name is of (a LoRA named in the prompt, say, not "prompt")."""
    if not name:
        return
    bad = (
        "\x00" in name
        or "\\" in name
        or name.startswith("/")
        or (len(name) > 1 and name[1] == ":")
        or any(part in ("..", ".", "") for part in name.split("/"))
    )
    if bad:
        raise EngineError(
            "invalid_request",
            f"{_what(kind, field, name)} is not a plain name inside the models folder "
            "(no '..', absolute paths, backslashes, drive letters)",
            field=field,
        )


def _what(kind: str, field: str, name: str) -> str:
    """'LoRA '../x' in the prompt', 'checkpoint 'a'', or the field where no kind is known."""
    label = KIND_LABELS.get(kind, kind) or field
    where = f" in the {field}" if kind and field == "prompt" else ""
    return f"{label} {name!r}{where}"


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.entries: dict[tuple[str, str], ModelEntry] = {}
        self._header_cache: dict[tuple[str, int, int], dict[str, list[int]] | None] = {}
        # Checkpoints that failed to load, by name: (file signature, why). Skipped
        # as the default until the file changes.
        self.broken: dict[str, tuple[tuple[int, int], str]] = {}

    # -- scanning -------------------------------------------------------------
    def scan(self) -> Registry:
        if not self.root.is_dir():
            raise EngineError("unknown_model", f"models folder {self.root} does not exist")
        found: dict[tuple[str, str], ModelEntry] = {}
        real_root = self.root.resolve()
        for base, role in self._role_roots():
            for path in self._walk(base, real_root):
                entry = self._classify(path, base, role)
                if entry is not None:
                    key = (entry.kind, entry.name)
                    # Prefer .safetensors when both formats of one model exist.
                    if key not in found or found[key].format == "pickle":
                        found[key] = entry
        self.entries = dict(sorted(found.items()))
        return self

    def _role_roots(self) -> Iterator[tuple[Path, str | None]]:
        for child in sorted(self.root.iterdir()):
            role = ROLE_FOLDERS.get(child.name.lower())
            if role and child.is_dir() and not child.is_symlink():
                yield child, role
        # The folder itself: flat files, and anything beside the role folders.
        yield self.root, None

    def _walk(self, base: Path, real_root: Path) -> Iterator[Path]:
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            here = Path(dirpath)
            if base == self.root and here == self.root:
                dirnames[:] = [d for d in dirnames if d.lower() not in ROLE_FOLDERS]
            # Sidecar config folders (<stem>.config/) and hidden folders are not models.
            dirnames[:] = sorted(d for d in dirnames if not d.endswith(".config") and not d.startswith("."))
            if here != base and ((here / "model_index.json").is_file() or _is_controlnet_folder(here)):
                dirnames[:] = []
                yield here
                continue
            for name in sorted(filenames):
                path = here / name
                if path.is_symlink():
                    try:
                        path.resolve(strict=True).relative_to(real_root)
                    except (OSError, ValueError):
                        continue  # a link that leaves the models folder is never served
                if path.suffix.lower() in SAFE_EXTS + PICKLE_EXTS:
                    yield path

    def _classify(self, path: Path, base: Path, role: str | None) -> ModelEntry | None:
        rel = path.relative_to(base)
        if path.is_dir():
            return self._diffusers_entry(path, rel)
        name = rel.with_suffix("").as_posix()
        fmt = "safetensors" if path.suffix.lower() in SAFE_EXTS else "pickle"
        shapes = self._shapes(path) if fmt == "safetensors" else None
        if fmt == "safetensors" and shapes is None:
            return None  # unreadable or not really safetensors
        if role is None:
            if shapes is None:
                return None  # a pickle of unknown purpose in a flat folder: never guess
            role = _kind_from_shapes(shapes)
            if role is None:
                return None
        if role in (UPSCALER, SUPIR):
            if _is_supir(path, shapes):
                # Listed (hello, `paintbridge models`) so clients can offer "Restore (SUPIR)"; loaded by
                # engine/supir.py with the SDXL checkpoint the request names, never as an upscaler.
                return ModelEntry(name=name, kind=SUPIR, path=path, format=fmt, family=FAMILIES["sdxl"])
            if role == SUPIR:
                return None
        if role == CHECKPOINT and name.endswith(".vae"):
            role = VAE  # the WebUI's `<checkpoint>.vae.safetensors` beside its checkpoint
        detected: Detected | None = detect(shapes) if (shapes is not None and role == CHECKPOINT) else None
        if role == CHECKPOINT and shapes is not None and detected is None:
            return None
        if role == CONTROLNET:
            if shapes is not None and controlnet_family(shapes) is None:
                return None  # T2I adapters, control-LoRAs...: not ControlNets this engine runs
            family = controlnet_family(shapes) if shapes is not None else None  # a pickle: known once loaded
            return ModelEntry(name=name, kind=role, path=path, format=fmt, family=family)
        few_step = None
        if role in (CHECKPOINT, LORA):
            few_step = detect_few_step(name, read_metadata(path) if fmt == "safetensors" else None)
        return ModelEntry(
            name=name,
            kind=role,
            path=path,
            format=fmt,
            family=detected.family if detected else None,
            inpainting=detected.inpainting if detected else False,
            few_step=few_step,
            depth=detected.depth if detected else False,
        )

    def _diffusers_entry(self, path: Path, rel: Path) -> ModelEntry | None:
        if _is_controlnet_folder(path):
            config = json.loads((path / "config.json").read_text("utf-8"))
            if config.get("addition_embed_type") == "text_time":
                family = FAMILIES["sdxl"]
            else:
                family = FAMILIES["sd2" if config.get("cross_attention_dim") == 1024 else "sd15"]
            return ModelEntry(rel.as_posix(), CONTROLNET, path, "diffusers", family)
        try:
            index = json.loads((path / "model_index.json").read_text("utf-8"))
            unet = json.loads((path / "unet" / "config.json").read_text("utf-8"))
        except (OSError, ValueError):
            return None
        xl = "XL" in str(index.get("_class_name", ""))
        if xl:
            family = FAMILIES["sdxl"]
        elif unet.get("cross_attention_dim") == 1024:
            family = FAMILIES["sd2"]
        else:
            family = FAMILIES["sd15"]
        return ModelEntry(rel.as_posix(), CHECKPOINT, path, "diffusers", family, unet.get("in_channels") == 9,
                          detect_few_step(rel.as_posix(), None, unet))

    def _shapes(self, path: Path) -> dict[str, list[int]] | None:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._header_cache:
            try:
                self._header_cache[key] = read_safetensors_shapes(path)
            except (OSError, ValueError):
                self._header_cache[key] = None
        return self._header_cache[key]

    # -- lookup ---------------------------------------------------------------
    def list(self, kind: str | None = None) -> list[ModelEntry]:
        return [e for (k, _), e in self.entries.items() if kind is None or k == kind]

    def default_checkpoint(self) -> ModelEntry | None:
        """The first checkpoint by name (plain before inpainting ones) that has
        not failed to load."""
        checkpoints = [e for e in self.list(CHECKPOINT) if not self.is_broken(e)]
        plain = [e for e in checkpoints if not e.inpainting and not e.depth]
        return (plain or checkpoints or [None])[0]

    def mark_broken(self, entry: ModelEntry, why: str) -> None:
        self.broken[entry.name] = (_signature(entry.path), why)

    def is_broken(self, entry: ModelEntry) -> bool:
        known = self.broken.get(entry.name)
        return known is not None and known[0] == _signature(entry.path)

    def vae_for(self, checkpoint: ModelEntry) -> ModelEntry | None:
        """The checkpoint's own VAE file, as the WebUI's "Automatic" finds it:
        `<checkpoint>.vae.*` beside the checkpoint, or a VAE named like it."""
        stem = checkpoint.path.name.split(".")[0]
        for entry in self.list(VAE):
            if entry.path.name.split(".")[0] == stem:
                return entry
        return None

    def get(self, name: str, kind: str = CHECKPOINT, field: str = "model") -> ModelEntry:
        check_name(name, field, kind)
        entry = self.entries.get((kind, name))
        if entry is None:
            # Accept the file name with its extension too, as WebUI users type it.
            stem = name.rsplit(".", 1)[0] if name.lower().endswith(SAFE_EXTS + PICKLE_EXTS) else name
            entry = self.entries.get((kind, stem))
        if entry is None:
            names = ", ".join(e.name for e in self.list(kind)) or "none"
            raise EngineError("unknown_model", f"no {KIND_LABELS.get(kind, kind)} named {name!r} in the models folder "
                              f"(have: {names})", field=field)
        return entry


def _signature(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_size, st.st_mtime_ns)
def _is_controlnet_folder(path: Path) -> bool:
    """A diffusers-format ControlNet: config.json naming ControlNetModel beside its weights."""
    try:
        config = json.loads((path / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("_class_name") == "ControlNetModel"


def _is_supir(path: Path, shapes: dict[str, list[int]] | None) -> bool:
    """SUPIR's adaptor keys, or (a pickle, not opened here) SUPIR's file name."""
    if shapes is not None:
        return any(k.startswith("model.control_model.") for k in shapes)
    return path.stem.lower().startswith("supir")


def _kind_from_shapes(shapes: dict[str, list[int]]) -> str | None:
    if detect(shapes) is not None:
        return CHECKPOINT
    if looks_like_controlnet(shapes):
        return CONTROLNET
    if looks_like_lora(shapes):
        return LORA
    if looks_like_vae(shapes):
        return VAE
    if looks_like_upscaler(shapes):
        return UPSCALER
    return None
