"""Where PaintBridge keeps its own files (derived tokenizers, demo models)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("PAINTBRIDGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "paintbridge"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
