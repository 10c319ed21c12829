"""Krita pixel buffers <-> 8-bit RGBA, for every colour space we can do exactly.

Krita hands out pixels in the document's colour space: RGBA U8 is stored as
BGRA, U16 as little-endian BGRA words, GRAYA as gray + alpha. Those convert
exactly. Float (usually linear-light) and CMYK/Lab spaces would need colour
management, so layer mode refuses them with a clear message; the visible
image mode reads Krita's own sRGB rendering instead (see docker.py).
"""

from __future__ import annotations

import array
import sys

SUPPORTED = {("RGBA", "U8"), ("RGBA", "U16"), ("GRAYA", "U8"), ("GRAYA", "U16")}


class UnsupportedColorSpace(Exception):
    pass


def check(model: str, depth: str) -> None:
    if (model, depth) not in SUPPORTED:
        raise UnsupportedColorSpace(
            f"PaintBridge works on 8- or 16-bit RGB or grayscale images; this one is {model}/{depth}. "
            "Convert it (Image > Convert Image Color Space) or use the 'Visible image' source."
        )


def _u16_to_u8(data: bytes) -> bytes:
    words = array.array("H")
    words.frombytes(data)
    if sys.byteorder == "big":
        words.byteswap()
    return bytes((w + 128) // 257 for w in words)


def _u8_to_u16(data: bytes) -> bytes:
    words = array.array("H", (b * 257 for b in data))
    if sys.byteorder == "big":
        words.byteswap()
    return words.tobytes()


def to_rgba8(data: bytes, model: str, depth: str) -> bytes:
    """Krita pixel data -> RGBA8."""
    check(model, depth)
    if depth == "U16":
        data = _u16_to_u8(data)
    if model == "RGBA":
        out = bytearray(data)
        out[0::4], out[2::4] = data[2::4], data[0::4]  # BGRA -> RGBA
        return bytes(out)
    gray, alpha = data[0::2], data[1::2]
    out = bytearray(len(gray) * 4)
    out[0::4] = out[1::4] = out[2::4] = gray
    out[3::4] = alpha
    return bytes(out)


def from_rgba8(rgba: bytes, model: str, depth: str) -> bytes:
    """RGBA8 -> Krita pixel data for a layer of the document's colour space."""
    check(model, depth)
    if model == "RGBA":
        out = bytearray(rgba)
        out[0::4], out[2::4] = rgba[2::4], rgba[0::4]  # RGBA -> BGRA
        data = bytes(out)
    else:
        r, g, b = rgba[0::4], rgba[1::4], rgba[2::4]
        luma = bytes((54 * x + 183 * y + 19 * z + 128) >> 8 for x, y, z in zip(r, g, b, strict=True))  # Rec.709
        out = bytearray(len(luma) * 2)
        out[0::2], out[1::2] = luma, rgba[3::4]
        data = bytes(out)
    return _u8_to_u16(data) if depth == "U16" else data


def argb32_to_rgba8(data: bytes) -> bytes:
    """QImage Format_ARGB32 (BGRA in memory on little-endian) -> RGBA8."""
    out = bytearray(data)
    if sys.byteorder == "little":
        out[0::4], out[2::4] = data[2::4], data[0::4]
    else:  # ARGB in memory
        out[0::4], out[1::4], out[2::4], out[3::4] = data[1::4], data[2::4], data[3::4], data[0::4]
    return bytes(out)
