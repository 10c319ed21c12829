"""Textual-inversion embeddings from the `embeddings/` folder, used by name.

As in the WebUI, an embedding is used by writing its file name in the
prompt. diffusers' loader adds it to the tokenizer and the text encoder (the
WebUI's `.pt` and `.safetensors` formats; pickles only weights-only). It stays
loaded for later jobs: it is only ever used where its name is written.
"""

from __future__ import annotations

import re

from engine.errors import EngineError
from engine.models import LoadedModel, one_line
from engine.registry import EMBEDDING, Registry


def used_in(registry: Registry, *texts: str) -> list:
    names = [e for e in registry.list(EMBEDDING) if any(_word(e.name).search(t) for t in texts)]
    return names


def _word(name: str):
    return re.compile(rf"(?<![\w-]){re.escape(name.rsplit('/', 1)[-1])}(?![\w-])")


def activate(model: LoadedModel, registry: Registry, prompt: str, negative: str) -> list[str]:
    entries = used_in(registry, prompt, negative)
    for entry in entries:
        if entry.name in model.embeddings:
            continue
        if model.family == "sdxl":
            raise EngineError("invalid_request", f"embedding {entry.name}: SDXL embeddings are not supported yet",
                              field="prompt")
        token = entry.name.rsplit("/", 1)[-1]
        try:
            model.base.load_textual_inversion(str(entry.path), token=token)
        except Exception as exc:
            raise EngineError("model_load_failed", f"could not load embedding {entry.name}: {one_line(exc)}",
                              field="prompt") from exc
        model.embeddings.add(entry.name)
    return [e.name for e in entries]
