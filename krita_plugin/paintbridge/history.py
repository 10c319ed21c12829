"""The history of a document's results: what the painter compares, applies or discards.

Plain Python, no Krita: the docker shows it and keeps its bytes in the document
(see docker.HISTORY_ANNOTATION for where, and why). Images are kept as PNG (lossless; Qt encodes them in C++ in the
adapter), so a result re-applied after reopening the file is the very same pixels.
"""

from __future__ import annotations

import io
import itertools
import json
import time
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any

LIMIT = 50  # results kept per document; the oldest go first
FORMAT = 1  # the stored layout's version


@dataclass
class Entry:
    """One finished image, with everything needed to apply, reuse or describe it."""

    id: str
    prompt: str
    seed: int
    mode: str  # generate | refine | inpaint | expand | upscale
    kind: str  # the protocol job kind (txt2img, img2img, inpaint, upscale)
    x: int  # where on the canvas the image goes
    y: int
    width: int  # the image's size on the canvas
    height: int
    first_pass: tuple[int, int] | None = None  # what the model generated before the hires fix
    settings: dict[str, Any] = field(default_factory=dict)  # the docker's settings, for "Reuse settings"
    infotext: str = ""  # WebUI "parameters" text, for "Copy parameters"
    batch: str = ""  # entries of one job share this, for "Apply all"
    created: float = 0.0
    png: bytes = b""  # the layer-ready image (alpha = the blend mask)
    thumbnail: bytes = b""  # small PNG for the list

    @property
    def size_text(self) -> str:
        final = f"{self.width}x{self.height}"
        if self.first_pass and tuple(self.first_pass) != (self.width, self.height):
            return f"{self.first_pass[0]}x{self.first_pass[1]} → {final}"
        return final

    def title(self, limit: int = 0) -> str:
        """A layer name: the full prompt and the seed (Krita has no limit on names)."""
        text = " ".join(self.prompt.split())
        if limit and len(text) > limit:
            text = text[: limit - 1] + "…"
        return f"{text} (seed {self.seed})" if text else f"{self.mode.capitalize()} (seed {self.seed})"

    def describe(self) -> str:
        return f"{self.mode} · seed {self.seed} · {self.size_text}"


class History:
    """Newest last; bounded; searchable by prompt."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.entries: list[Entry] = []
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        while True:
            candidate = f"h{next(self._ids)}"
            if self.get(candidate) is None:
                return candidate

    def add(self, entry: Entry) -> list[Entry]:
        """Add a result; returns the entries dropped to stay within the limit."""
        if not entry.created:
            entry.created = time.time()
        self.entries.append(entry)
        dropped = self.entries[: max(0, len(self.entries) - self.limit)]
        del self.entries[: len(dropped)]
        return dropped

    def get(self, entry_id: str) -> Entry | None:
        return next((e for e in self.entries if e.id == entry_id), None)

    def discard(self, entry_id: str) -> bool:
        before = len(self.entries)
        self.entries = [e for e in self.entries if e.id != entry_id]
        return len(self.entries) != before

    def batch_of(self, entry_id: str) -> list[Entry]:
        entry = self.get(entry_id)
        if entry is None:
            return []
        if not entry.batch:
            return [entry]
        return [e for e in self.entries if e.batch == entry.batch]

    def search(self, text: str) -> list[Entry]:
        """Newest first, those whose prompt holds every word of `text` (any case)."""
        words = text.lower().split()
        return [e for e in reversed(self.entries) if all(w in e.prompt.lower() for w in words)]

    # -- storage: one zip (stored, not deflated: PNG is compressed already) ------------
    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            index = []
            for entry in self.entries:
                meta = {k: v for k, v in asdict(entry).items() if k not in ("png", "thumbnail")}
                index.append(meta)
                archive.writestr(f"{entry.id}.png", entry.png)
                archive.writestr(f"{entry.id}.thumb.png", entry.thumbnail)
            archive.writestr("history.json", json.dumps({"format": FORMAT, "entries": index}))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, limit: int = LIMIT) -> History:
        """Read what `to_bytes` wrote; anything unreadable gives an empty history."""
        history = cls(limit)
        if not data:
            return history
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                index = json.loads(archive.read("history.json"))
                if index.get("format") != FORMAT:
                    return history
                names = set(archive.namelist())
                for meta in index["entries"]:
                    if meta.get("first_pass") is not None:
                        meta["first_pass"] = tuple(meta["first_pass"])
                    entry = Entry(**meta)
                    entry.png = archive.read(f"{entry.id}.png") if f"{entry.id}.png" in names else b""
                    thumb = f"{entry.id}.thumb.png"
                    entry.thumbnail = archive.read(thumb) if thumb in names else b""
                    history.entries.append(entry)
        except (zipfile.BadZipFile, KeyError, ValueError, TypeError):
            return cls(limit)
        history.entries = history.entries[-limit:]
        return history
