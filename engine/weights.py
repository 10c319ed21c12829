"""Reading weight files safely: `.safetensors`, or pickles only weights-only.

A pickle can run code when it is loaded; `torch.load(weights_only=True)`
refuses anything but tensors and plain containers, and we turn that refusal
into a clear `unsafe_file` error.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from engine.errors import EngineError


def load_weights(path: Path, mmap: bool = False) -> Any:
    import torch

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                # Legacy (non-zip) files cannot be memory-mapped; same safe unpickler.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise EngineError(
            "unsafe_file",
            f"{path.name} contains pickled code, which is never run; use a .safetensors copy ({detail})",
        ) from exc
