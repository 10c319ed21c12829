"""The models folder: what is in it, and safe lookup by name.

Accepts the layouts users already have:
- AUTOMATIC1111 WebUI: Stable-diffusion/, Lora/, VAE/, ESRGAN/, embeddings/
- ComfyUI: checkpoints/, loras/, vae/, upscale_models/, embeddings/
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

from engine.errors import EngineError
from engine.families import FAMILIES, Detected, Family, detect, looks_like_lora, looks_like_upscaler, looks_like_vae

CHECKPOINT, VAE, LORA, UPSCALER, EMBEDDING = "checkpoint", "vae", "lora", "upscaler", "embedding"
KINDS = (CHECKPOINT, VAE, LORA, UPSCALER, EMBEDDING)

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


def check_name(name: str, field: str = "model") -> None:
    """Refuse names that try to leave the models folder, with a clear message."""
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
            f"{field} {name!r} is not a plain name inside the models folder (no '..', absolute paths, backslashes, drive letters)",
            field=field,
        )


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.entries: dict[tuple[str, str], ModelEntry] = {}
        self._header_cache: dict[tuple[str, int, int], dict[str, list[int]] | None] = {}

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
            if (here / "model_index.json").is_file() and here != base:
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
        if role == UPSCALER and _is_supir(path, shapes):
            return None  # a SUPIR file beside the upscalers (ComfyUI users keep them there): engine/supir.py
        if role == CHECKPOINT and name.endswith(".vae"):
            role = VAE  # the WebUI's `<checkpoint>.vae.safetensors` beside its checkpoint
        detected: Detected | None = detect(shapes) if (shapes is not None and role == CHECKPOINT) else None
        if role == CHECKPOINT and shapes is not None and detected is None:
            return None
        return ModelEntry(
            name=name,
            kind=role,
            path=path,
            format=fmt,
            family=detected.family if detected else None,
            inpainting=detected.inpainting if detected else False,
        )

    def _diffusers_entry(self, path: Path, rel: Path) -> ModelEntry | None:
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
        return ModelEntry(rel.as_posix(), CHECKPOINT, path, "diffusers", family, unet.get("in_channels") == 9)

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
        checkpoints = self.list(CHECKPOINT)
        plain = [e for e in checkpoints if not e.inpainting]
        return (plain or checkpoints or [None])[0]

    def vae_for(self, checkpoint: ModelEntry) -> ModelEntry | None:
        """The checkpoint's own VAE file, as the WebUI's "Automatic" finds it:
        `<checkpoint>.vae.*` beside the checkpoint, or a VAE named like it."""
        stem = checkpoint.path.name.split(".")[0]
        for entry in self.list(VAE):
            if entry.path.name.split(".")[0] == stem:
                return entry
        return None

    def get(self, name: str, kind: str = CHECKPOINT, field: str = "model") -> ModelEntry:
        check_name(name, field)
        entry = self.entries.get((kind, name))
        if entry is None:
            # Accept the file name with its extension too, as WebUI users type it.
            stem = name.rsplit(".", 1)[0] if name.lower().endswith(SAFE_EXTS + PICKLE_EXTS) else name
            entry = self.entries.get((kind, stem))
        if entry is None:
            names = ", ".join(e.name for e in self.list(kind)) or "none"
            raise EngineError("unknown_model", f"no {kind} named {name!r} in the models folder (have: {names})", field=field)
        return entry


def _is_supir(path: Path, shapes: dict[str, list[int]] | None) -> bool:
    """SUPIR's adaptor keys, or (a pickle, not opened here) SUPIR's file name."""
    if shapes is not None:
        return any(k.startswith("model.control_model.") for k in shapes)
    return path.stem.lower().startswith("supir")


def _kind_from_shapes(shapes: dict[str, list[int]]) -> str | None:
    if detect(shapes) is not None:
        return CHECKPOINT
    if looks_like_lora(shapes):
        return LORA
    if looks_like_vae(shapes):
        return VAE
    if looks_like_upscaler(shapes):
        return UPSCALER
    return None
