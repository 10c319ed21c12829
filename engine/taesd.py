"""TAESD, the tiny approximate VAE (madebyollin/taesd), from the models folder.

Found where users already keep it: the WebUI's `VAE-approx/` and ComfyUI's
`vae_approx/` (or a `taesd/` folder) under the models folder, as
`taesd_decoder` / `taesd_encoder` (SD 1.x and 2.x) and `taesdxl_decoder` /
`taesdxl_encoder` (SDXL), `.safetensors` or `.pth` (loaded weights-only), or a
diffusers folder `taesd/` / `taesdxl/` with `config.json`. It runs as
diffusers' `AutoencoderTiny`: a purely convolutional VAE of ~1 M parameters
per half, decoding about 50x faster than SD's VAE with small colour errors.
Used for live previews (engine/preview.py) and, when asked (`upscale.vae:
"taesd"`), for the tiled upscale's encode and decode.

The original single files are the state dicts of `nn.Sequential` stacks; the
decoder's begins with a parameterless clamp, which diffusers applies in
`forward` instead, so its layer indices are one lower in diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import runtime
from engine.errors import EngineError
from engine.weights import load_failure, load_weights

FOLDERS = ("vae-approx", "vae_approx", "taesd")  # lower case; the WebUI's, ComfyUI's, plain
EXTS = (".safetensors", ".pth", ".pt", ".bin")
PREFIX = {"sd15": "taesd", "sd2": "taesd", "sdxl": "taesdxl"}


@dataclass(frozen=True)
class TaesdFiles:
    decoder: Path | None = None
    encoder: Path | None = None
    folder: Path | None = None  # a diffusers AutoencoderTiny folder (both halves)

    @property
    def can_encode(self) -> bool:
        return self.folder is not None or self.encoder is not None


def find(root: Path, family: str) -> TaesdFiles | None:
    """The family's TAESD under the models folder, or None. Only names the
    code spells itself are looked up, so nothing outside the folder is reached."""
    prefix = PREFIX.get(family)
    if prefix is None or not Path(root).is_dir():
        return None
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and p.name.lower() in FOLDERS):
        diffusers_dir = folder if folder.name.lower() == prefix else folder / prefix
        if (diffusers_dir / "config.json").is_file():
            return TaesdFiles(folder=diffusers_dir)
        decoder, encoder = _file(folder, f"{prefix}_decoder"), _file(folder, f"{prefix}_encoder")
        if decoder is not None:
            return TaesdFiles(decoder=decoder, encoder=encoder)
    return None


def _file(folder: Path, stem: str) -> Path | None:
    for ext in EXTS:
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


_CACHE: dict[tuple, Any] = {}


def load(files: TaesdFiles, device: Any = "cpu", dtype: Any = None):
    """An AutoencoderTiny with the files' weights (kept for later calls while the files are unchanged)."""
    import torch

    dtype = dtype or torch.float32
    paths = [p for p in (files.folder, files.decoder, files.encoder) if p is not None]
    key = (tuple((str(p), p.stat().st_mtime_ns) for p in paths), str(device), str(dtype))
    if key not in _CACHE:
        _CACHE.clear()  # one TAESD at a time: a family switch replaces it
        _CACHE[key] = runtime.cpu_layout(_build(files).to(device=device, dtype=dtype).eval(), device)
    return _CACHE[key]


def _build(files: TaesdFiles):
    from diffusers import AutoencoderTiny

    if files.folder is not None:
        try:
            return AutoencoderTiny.from_pretrained(str(files.folder), local_files_only=True)
        except Exception as exc:
            raise load_failure(files.folder, "TAESD", exc) from exc
    vae = AutoencoderTiny()  # TAESD's own shapes are diffusers' defaults
    for half, path in (("decoder", files.decoder), ("encoder", files.encoder)):
        if path is None:
            continue
        try:
            state = load_weights(path)
            _load_half(getattr(vae, half), state, half)
        except EngineError:
            raise
        except Exception as exc:
            raise load_failure(path, f"TAESD {half}", exc) from exc
    return vae


def _load_half(module, state: dict, half: str) -> None:
    """Load an original TAESD state dict (`1.weight`, `3.conv.0.weight`, ...)
    or a diffusers one (`layers.0.weight`, `decoder.layers.0.weight`) into
    `module`, strictly: every tensor must land on a parameter of its shape."""
    own = module.state_dict()
    state = {k.removeprefix(f"{half}."): v for k, v in state.items()}
    candidates = [state]
    if not any(k.startswith("layers.") for k in state):
        for shift in (0, 1):  # the decoder's leading clamp moves its indices by one
            moved = {}
            for key, value in state.items():
                index, _, rest = key.partition(".")
                if index.isdigit():
                    moved[f"layers.{int(index) - shift}.{rest}"] = value
            candidates.append(moved)
    for candidate in candidates:
        if candidate.keys() == own.keys() and all(candidate[k].shape == own[k].shape for k in own):
            module.load_state_dict(candidate)
            return
    raise ValueError(f"not a TAESD {half}: its tensors do not match AutoencoderTiny's {half}")
