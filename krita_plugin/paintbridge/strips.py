"""Image-sized transfers to and from Krita, a strip of rows at a time.

Krita's Python calls (Node.pixelData, Node.setPixelData) and the copies around
them hold the GIL. Made from a background thread on a whole 4096x4096 layer
(64 MiB), they stalled a 5 ms Python timer on Krita's UI thread by 53 ms (real
Krita 5.1.5, tests/krita_scenario/place_probe.py); cut into strips of about
STRIP_BYTES the UI thread waits for at most about one strip (< 20 ms measured).
Plain Python, tested without Krita; kritadoc.py passes Krita's calls in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

STRIP_BYTES = 2 << 20  # 2 MiB: ~1-3 ms of Krita's readBytes/writeBytes on this class of machine


class ShortRead(Exception):
    """Krita returned fewer bytes than asked for: the document went away mid-read."""


def row_strips(height: int, row_bytes: int, budget: int = STRIP_BYTES) -> list[tuple[int, int]]:
    """(first row, row count) covering 0..height, each at most `budget` bytes (at least one row)."""
    rows = max(1, budget // max(1, row_bytes))
    return [(y, min(rows, height - y)) for y in range(0, height, rows)]


def read_strips(read: Callable[[int, int], Any], width: int, height: int, pixel_size: int,
                convert: Callable[[Any, int], bytes] | None = None, out_pixel_size: int | None = None,
                budget: int = STRIP_BYTES) -> bytearray:
    """Read `height` rows with read(y, rows) -> bytes-like, a strip at a time.

    `convert(part, rows)` turns one strip into `out_pixel_size` bytes per pixel (for
    example Krita's BGRA into RGBA) while it is small; the result is one buffer,
    filled in place (no image-sized join).
    """
    out_size = out_pixel_size or pixel_size
    out = bytearray(width * height * out_size)
    for y, rows in row_strips(height, width * max(pixel_size, out_size), budget):
        part = read(y, rows)
        if len(part) != width * rows * pixel_size:
            raise ShortRead(f"asked for {width * rows * pixel_size} bytes, got {len(part)}")
        chunk = convert(part, rows) if convert is not None else part
        out[y * width * out_size:(y + rows) * width * out_size] = chunk
    return out


def write_strips(write: Callable[[bytes, int, int], Any], data: bytes | bytearray | memoryview, width: int,
                 height: int, pixel_size: int, budget: int = STRIP_BYTES) -> int:
    """write(part, y, rows) for each strip of `data` (rows of width*pixel_size bytes); strips written."""
    if len(data) != width * height * pixel_size:
        raise ValueError(f"{len(data)} bytes for {width}x{height}x{pixel_size}")
    view = memoryview(data)
    row = width * pixel_size
    done = 0
    for y, rows in row_strips(height, row, budget):
        write(bytes(view[y * row:(y + rows) * row]), y, rows)
        done += 1
    return done
