"""Textual-inversion embeddings from the `embeddings/` folder, used by name.

As in the WebUI, an embedding is used by writing its file name in the
prompt. diffusers' loader adds it to the tokenizer and the text encoder (the
WebUI's `.pt` and `.safetensors` formats; pickles only weights-only; SDXL
files carry a `clip_l` and a `clip_g` part, one per text encoder). It stays
loaded for later jobs: it is only ever used where its name is written.
"""

from __future__ import annotations

import re

from engine.models import LoadedModel
from engine.registry import EMBEDDING, Registry
from engine.weights import load_failure, load_weights


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
        token = entry.name.rsplit("/", 1)[-1]
        pipe = model.base
        try:
            if model.family == "sdxl":
                # SDXL embeddings hold one part per text encoder: clip_l and clip_g.
                parts = load_weights(entry.path)
                if not {"clip_l", "clip_g"} <= set(parts):
                    raise ValueError("an SDXL embedding needs 'clip_l' and 'clip_g' tensors")
                pipe.load_textual_inversion(parts["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                            tokenizer=pipe.tokenizer)
                pipe.load_textual_inversion(parts["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                            tokenizer=pipe.tokenizer_2)
            else:
                pipe.load_textual_inversion(str(entry.path), token=token)
        except Exception as exc:
            raise load_failure(entry.path, f"embedding {entry.name}", exc, field="prompt") from exc
        model.embeddings.add(entry.name)
    return [e.name for e in entries]
