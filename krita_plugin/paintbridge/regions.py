"""Where a job works on the canvas: the selection's box plus context."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    def expand(self, margin: int, bounds: Rect) -> Rect:
        x0, y0 = max(bounds.x, self.x - margin), max(bounds.y, self.y - margin)
        x1, y1 = min(bounds.right, self.right + margin), min(bounds.bottom, self.bottom + margin)
        return Rect(x0, y0, x1 - x0, y1 - y0)

    def snap8(self, bounds: Rect) -> Rect:
        """Grow to multiples of 8 (what the models need) inside `bounds` where possible."""
        w = min(bounds.width, -(-self.width // 8) * 8)
        h = min(bounds.height, -(-self.height // 8) * 8)
        x = min(max(bounds.x, self.x - (w - self.width) // 2), bounds.right - w)
        y = min(max(bounds.y, self.y - (h - self.height) // 2), bounds.bottom - h)
        return Rect(x, y, w, h)


def work_area(doc: Rect, selection: Rect | None, context: int) -> Rect:
    """Generate/refine: the whole canvas, or the selection's box plus context."""
    if selection is None:
        return doc
    return selection.expand(context, doc).snap8(doc)
