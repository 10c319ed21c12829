"""LoRAs named in the prompt (`<lora:name:0.8>`), through diffusers' loader.

diffusers reads kohya and diffusers key formats from single `.safetensors`
files and keeps each as a named PEFT adapter. Adapters stay loaded between
jobs (loading is the slow part), but every job activates exactly the ones its
prompt names, at its weights, and disables the rest: nothing leaks from the
previous job.
"""

from __future__ import annotations

import re

from engine.models import LoadedModel
from engine.registry import LORA, Registry
from engine.weights import load_failure


def adapter_name(name: str) -> str:
    return "lora_" + re.sub(r"\W", "_", name)


def activate(model: LoadedModel, registry: Registry, loras: list[tuple[str, float]]) -> list[str]:
    """Make exactly `loras` active on the model; returns their names."""
    pipe = model.base
    entries = [(registry.get(name, LORA, field="prompt"), weight) for name, weight in loras]
    for entry, _ in entries:
        adapter = adapter_name(entry.name)
        if adapter in model.adapters:
            continue
        try:
            pipe.load_lora_weights(str(entry.path), adapter_name=adapter)
        except Exception as exc:
            raise load_failure(entry.path, f"LoRA {entry.name}", exc, field="prompt") from exc
        model.adapters.add(adapter)
    if entries:
        pipe.enable_lora()
        pipe.set_adapters([adapter_name(e.name) for e, _ in entries], adapter_weights=[w for _, w in entries])
    elif model.adapters:
        pipe.disable_lora()
    return [e.name for e, _ in entries]
