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


SIDES = ("left", "right", "top", "bottom")


@dataclass(frozen=True)
class Expansion:
    """Expand canvas by N px on one side: the new canvas, the new strip and the job's area."""

    offset_x: int  # where the old canvas's origin lands in the new one
    offset_y: int
    canvas: Rect  # the new canvas (origin 0, 0)
    strip: Rect  # the new, empty pixels (new coordinates)
    area: Rect  # what the job reads and repaints: the strip plus context from the old pixels

    @property
    def resize_args(self) -> tuple[int, int, int, int]:
        """Krita's Document.resizeImage(x, y, w, h): the new canvas in old coordinates."""
        return (-self.offset_x, -self.offset_y, self.canvas.width, self.canvas.height)


def expand(doc: Rect, side: str, pixels: int, context: int = 0) -> Expansion:
    """`context` (default: max(pixels, 128)) old pixels on that side give the model the scene."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}")
    if pixels <= 0:
        raise ValueError("expand by at least 1 pixel")
    context = context or max(pixels, 128)
    w, h = doc.width, doc.height
    if side in ("left", "right"):
        canvas = Rect(0, 0, w + pixels, h)
        ox = pixels if side == "left" else 0
        oy = 0
        strip = Rect(0, 0, pixels, h) if side == "left" else Rect(w, 0, pixels, h)
        band = min(context, w)
        area = Rect(0, 0, pixels + band, h) if side == "left" else Rect(w - band, 0, band + pixels, h)
    else:
        canvas = Rect(0, 0, w, h + pixels)
        ox = 0
        oy = pixels if side == "top" else 0
        strip = Rect(0, 0, w, pixels) if side == "top" else Rect(0, h, w, pixels)
        band = min(context, h)
        area = Rect(0, 0, w, pixels + band) if side == "top" else Rect(0, h - band, w, band + pixels)
    return Expansion(ox, oy, canvas, strip, area.snap8(canvas))


def strip_mask(area: Rect, strip: Rect, feather: int) -> bytes:
    """8-bit mask over `area`: 255 on the strip, ramping to 0 over `feather` px into the old pixels.

    Built a row at a time with bytes arithmetic (no per-pixel Python loop).
    """
    def ramp(inside_from: int, inside_to: int, length: int) -> bytes:
        out = bytearray(length)
        for i in range(length):
            if inside_from <= i < inside_to:
                out[i] = 255
            else:
                distance = inside_from - i if i < inside_from else i - inside_to + 1
                out[i] = max(0, 255 - (255 * distance) // (feather + 1)) if feather else 0
        return bytes(out)

    sx0, sx1 = strip.x - area.x, strip.right - area.x
    sy0, sy1 = strip.y - area.y, strip.bottom - area.y
    if strip.height == area.height or (sy0 <= 0 and sy1 >= area.height):  # left/right strip: columns ramp
        row = ramp(sx0, sx1, area.width)
        return row * area.height
    column = ramp(sy0, sy1, area.height)  # top/bottom strip: rows ramp
    return b"".join(bytes([v]) * area.width for v in column)
