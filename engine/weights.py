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


def refused_pickle(exc: BaseException) -> BaseException | None:
    """The safe unpickler's refusal inside `exc`, if that is what it is.

    diffusers, PEFT and spandrel load pickles with `torch.load(weights_only=True)`
    too, and wrap its `UnpicklingError` in their own errors (OSError,
    ValueError, EnvironmentError...): walk the chain of causes to find it.
    """
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        seen += 1
    return None


def unsafe_file(path: Path, exc: BaseException, field: str = "") -> EngineError:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # torch's long message names what was refused on its "WeightsUnpickler error" line.
    named = [line for line in lines if "Unsupported" in line or "WeightsUnpickler" in line]
    detail = (named or lines or [type(exc).__name__])[0][:160]
    return EngineError(
        "unsafe_file", f"{path.name} contains pickled code, which is never run; use a .safetensors copy ({detail})",
        field=field,
    )


def load_failure(path: Path, what: str, exc: BaseException, field: str = "") -> EngineError:
    """The typed error for a weights file that did not load: `unsafe_file` when
    the safe unpickler refused it (anywhere in the chain), else `model_load_failed`."""
    refused = refused_pickle(exc)
    if refused is not None:
        return unsafe_file(path, refused, field)
    text = str(exc).strip()
    return EngineError("model_load_failed", f"could not load {what}: {text.splitlines()[0][:300] if text else type(exc).__name__}",
                       field=field)


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
        raise unsafe_file(path, exc) from exc
