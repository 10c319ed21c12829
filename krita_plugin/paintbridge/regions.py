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


def mask_box(mask: bytes, width: int) -> Rect | None:
    """Bounding box of the non-zero pixels of an 8-bit mask (row-major)."""
    height = len(mask) // width if width else 0
    top = bottom = left = right = None
    for y in range(height):
        row = mask[y * width : (y + 1) * width]
        first = width - len(row.lstrip(b"\0"))  # bytes.strip runs in C: fast on big masks
        if first == width:
            continue
        last = len(row.rstrip(b"\0"))
        top = y if top is None else top
        bottom = y
        left = first if left is None else min(left, first)
        right = last if right is None else max(right, last)
    if top is None or left is None or right is None or bottom is None:
        return None
    return Rect(left, top, right - left, bottom - top + 1)


def crop(data: bytes, width: int, channels: int, rect: Rect) -> bytes:
    """Cut `rect` out of a row-major image `width` pixels wide."""
    stride = width * channels
    rows = (data[y * stride + rect.x * channels : y * stride + rect.right * channels] for y in range(rect.y, rect.bottom))
    return b"".join(rows)


def work_area(doc: Rect, selection: Rect | None, context: int) -> Rect:
    """Generate/refine: the whole canvas, or the selection's box plus context."""
    if selection is None:
        return doc
    return selection.expand(context, doc).snap8(doc)
