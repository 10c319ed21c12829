"""A PNG writer for the history (lossless, RGBA8), run on a background thread.

Qt's QImage.save would do, but on Krita's UI thread a 4096x4096 PNG takes
seconds, and whether PyQt releases the GIL for it is not something to rely on.
zlib.compress releases the GIL, so this runs beside the UI without stalling it.
The only Python work per image is one slice per row (PNG's filter-type byte).
"""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_rgba(width: int, height: int, rgba: bytes, level: int = 1) -> bytes:
    """RGBA8 (non-premultiplied, rows packed) -> PNG bytes; filter 0 (None) on every row."""
    stride = width * 4
    if len(rgba) != stride * height:
        raise ValueError(f"expected {stride * height} bytes for {width}x{height} RGBA, got {len(rgba)}")
    view = memoryview(rgba)
    raw = b"".join(b"\0" + view[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, level)) + _chunk(b"IEND", b"")
