"""CLIP tokenizers for single-file checkpoints, built offline.

Single-file checkpoints carry no tokenizer, and diffusers would fetch one from
a model hub. The CLIP BPE table ships inside the `clip-anytorch` wheel
(`clip/bpe_simple_vocab_16e6.txt.gz`); the Hugging Face `vocab.json` and
`merges.txt` are a fixed function of it (the same derivation as CLIP's own
`SimpleTokenizer`), so we derive them once into the user cache.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from pathlib import Path

from engine.paths import cache_dir

CLIP_MAX_LENGTH = 77
_N_MERGES = 49152 - 256 - 2  # as CLIP's SimpleTokenizer slices its table


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=False))


def write_tokenizer_files(folder: Path, merges: list[tuple[str, str]]) -> None:
    """Write vocab.json + merges.txt in CLIP's token order for a merge list."""
    base = list(bytes_to_unicode().values())
    vocab = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), "utf-8")
    lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", "utf-8")


def _bpe_table() -> Path:
    spec = importlib.util.find_spec("clip")  # finds the package without importing torch
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the clip-anytorch package is missing; reinstall PaintBridge")
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise RuntimeError(f"CLIP BPE table not found at {path}")
    return path


def clip_tokenizer_dir() -> Path:
    """A folder with the standard CLIP vocab.json + merges.txt (49408 tokens)."""
    folder = cache_dir() / "clip-tokenizer"
    if not (folder / "merges.txt").is_file():
        lines = gzip.open(_bpe_table()).read().decode("utf-8").split("\n")[1 : _N_MERGES + 1]
        write_tokenizer_files(folder, [tuple(line.split()) for line in lines])  # type: ignore[misc]
    return folder


@functools.lru_cache(maxsize=4)
def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """SD1.x pads with <|endoftext|>; SD2 and SDXL's second encoder pad with '!'."""
    from transformers import CLIPTokenizer

    folder = clip_tokenizer_dir()
    return CLIPTokenizer.from_pretrained(
        str(folder), model_max_length=CLIP_MAX_LENGTH, pad_token=pad_token, local_files_only=True
    )
