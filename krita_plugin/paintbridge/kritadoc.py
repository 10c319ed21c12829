"""Krita access, isolated: pixels in and out, selections, layers, annotations.

Everything image-sized happens in C++ (Krita's pixelData/setPixelData, QImage
conversions, QPainter compositing): no per-pixel Python on Krita's UI thread.
Krita's RGBA/U8 pixel data is BGRA in memory, which is exactly QImage's
Format_ARGB32 on little-endian machines: the zero-copy bridge between the two.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from krita import Krita, Selection
from PyQt5.QtCore import QBuffer, QByteArray, QIODevice, Qt
from PyQt5.QtGui import QImage, QPainter

from protocol import RawImage

from . import colors, strips
from .regions import Rect
from .requests import LAYER

PREVIEW_NAME = "[PaintBridge preview]"
FAST = sys.byteorder == "little"  # Krita's BGRA == QImage ARGB32 in memory


class UserError(Exception):
    """Something the painter can fix; shown in the docker."""


def image_bytes(image: QImage) -> bytes:
    """A 32-bit QImage's pixels (rows are packed for 32-bit formats)."""
    return bytes(image.constBits().asstring(image.sizeInBytes()))


def _bgra_to_rgba(data: bytes, width: int, height: int) -> bytes:
    image = QImage(data, width, height, width * 4, QImage.Format_ARGB32)
    return image_bytes(image.convertToFormat(QImage.Format_RGBA8888))


def is_fast(document) -> bool:
    return FAST and (document.colorModel(), document.colorDepth()) == ("RGBA", "U8")


PIXEL_SIZE = {("RGBA", "U8"): 4, ("RGBA", "U16"): 8, ("GRAYA", "U8"): 2, ("GRAYA", "U16"): 4}


@dataclass
class RawPixels:
    """Where to read pixels, read and converted to RGBA8 on another thread.

    `read(x, y, w, h)` is Krita's own pixelData (the active layer's or the visible
    image's), called there a strip at a time (strips.py): the UI thread only takes
    the node at the click, and never waits for Krita's 64 MiB readBytes.
    """

    rect: Rect
    read: Any  # Krita's pixelData(x, y, w, h) -> QByteArray, in the document's layout
    model: str
    depth: str
    image: QImage | None = None  # a rendered projection (colour spaces we do not read)

    def to_rgba(self) -> RawImage:
        """Any thread: Krita's reads a strip at a time, QImage's conversions in C++."""
        r = self.rect
        w, h = r.width, r.height
        if self.image is not None:
            return RawImage(w, h, 4, image_bytes(self.image.convertToFormat(QImage.Format_RGBA8888)))

        def read(y: int, rows: int):
            return self.read(r.x, r.y + y, w, rows)

        try:
            if FAST and (self.model, self.depth) == ("RGBA", "U8"):
                def convert(part, rows: int) -> bytes:  # Krita's BGRA is ARGB32: Qt swaps it, strip by strip
                    return image_bytes(QImage(part, w, rows, w * 4, QImage.Format_ARGB32).convertToFormat(QImage.Format_RGBA8888))

                return RawImage(w, h, 4, strips.read_strips(read, w, h, 4, convert, 4))
            data = strips.read_strips(read, w, h, PIXEL_SIZE[(self.model, self.depth)])
            return RawImage(w, h, 4, colors.to_rgba8(bytes(data), self.model, self.depth))
        except strips.ShortRead:
            raise UserError("The document was closed while PaintBridge was reading it.") from None
        except colors.UnsupportedColorSpace as exc:
            raise UserError(str(exc)) from None


def read_raw(document, rect: Rect, source: str) -> RawPixels:
    """UI thread, no pixels yet: what to read (the visible image or the active layer)."""
    model, depth = document.colorModel(), document.colorDepth()
    if source == LAYER:
        node = document.activeNode()
        if node is None:
            raise UserError("There is no active layer.")
        if (model, depth) not in colors.SUPPORTED:
            raise UserError(f"PaintBridge reads 8- or 16-bit RGB or grayscale layers; this one is {model}/{depth}. "
                            "Use the 'Visible image' source or convert the image.")
        return RawPixels(rect, node.pixelData, model, depth)
    if (model, depth) in colors.SUPPORTED:
        return RawPixels(rect, document.pixelData, model, depth)
    # Any other colour space: Krita renders the projection to sRGB for us.
    return RawPixels(rect, None, model, depth, document.projection(rect.x, rect.y, rect.width, rect.height))


def read_rgba(document, rect: Rect, source: str) -> RawImage:
    """The visible image or the active layer, as RGBA8 (all on the calling thread)."""
    return read_raw(document, rect, source).to_rgba()


# -- selections as soft masks ----------------------------------------------------------
def selection_rect(document) -> Rect | None:
    selection = document.selection()
    if selection is None or selection.width() <= 0 or selection.height() <= 0:
        return None
    return Rect(selection.x(), selection.y(), selection.width(), selection.height())


def soft_mask(document, area: Rect, grow: int, feather: int) -> bytes:
    """The selection, grown and feathered by Krita's own filters, as 8-bit over `area`.

    Works on a copy: the painter's selection stays as it is.
    """
    selection = document.selection().duplicate()
    if grow > 0:
        selection.grow(grow, grow)
    if feather > 0:
        selection.feather(feather)
    return bytes(selection.pixelData(area.x, area.y, area.width, area.height))


def set_selection(document, x: int, y: int, width: int, height: int) -> None:
    selection = Selection()
    selection.select(x, y, width, height, 255)
    document.setSelection(selection)


# -- results -> layer-ready images -----------------------------------------------------------
def layer_ready(image: RawImage, rect: Rect, mask: bytes | None) -> QImage:
    """A result scaled to its place, transparent where the (soft) mask is 0: ARGB32."""
    fmt = QImage.Format_RGBA8888 if image.channels == 4 else QImage.Format_RGB888
    q = QImage(image.data, image.width, image.height, image.width * image.channels, fmt)
    if (image.width, image.height) != (rect.width, rect.height):
        q = q.scaled(rect.width, rect.height, Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
    if mask is None:
        return q.convertToFormat(QImage.Format_ARGB32)
    q = q.convertToFormat(QImage.Format_ARGB32_Premultiplied)
    alpha = QImage(mask, rect.width, rect.height, rect.width, QImage.Format_Alpha8)
    painter = QPainter(q)
    painter.setCompositionMode(QPainter.CompositionMode_DestinationIn)  # alpha *= mask
    painter.drawImage(0, 0, alpha)
    painter.end()
    return q.convertToFormat(QImage.Format_ARGB32)


def thumbnail_png(image: QImage, size: int = 96) -> bytes:
    small = image.scaled(size, size, Qt.KeepAspectRatio, Qt.SmoothTransformation)
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.WriteOnly)
    small.save(buffer, "PNG")
    buffer.close()
    return bytes(data)


def from_png(png: bytes) -> QImage:
    return QImage.fromData(png, "PNG").convertToFormat(QImage.Format_ARGB32)


@dataclass
class Ready:
    """A layer-ready image in the document's own pixel layout (made off the UI thread)."""

    width: int
    height: int
    pixels: Any  # bytes-like, for Node.setPixelData
    layer: Any = None  # a layer outside the stack already filled with these pixels (fill_layer)
    image: QImage | None = None  # owns `pixels` when they are a view of its bits

    @classmethod
    def make(cls, image: QImage, model: str, depth: str) -> Ready:
        if FAST and (model, depth) == ("RGBA", "U8"):
            # ARGB32 is Krita's BGRA: a view of the QImage's own bits, not a 64 MiB copy made
            # while holding the GIL (which Krita's UI thread would wait for).
            bits = image.constBits()
            bits.setsize(image.sizeInBytes())
            return cls(image.width(), image.height(), memoryview(bits), image=image)
        rgba = image_bytes(image.convertToFormat(QImage.Format_RGBA8888))
        return cls(image.width(), image.height(), colors.from_rgba8(rgba, model, depth))


# -- layers ---------------------------------------------------------------------------------
def _anchor(document, below=None):
    """Parent and sibling to add above: the given node or the active layer, never the preview."""
    node = below if below is not None else document.activeNode()
    if node is None or node.parentNode() is None or node.name() == PREVIEW_NAME:
        node = next((n for n in reversed(document.topLevelNodes()) if n.name() != PREVIEW_NAME), None)
    if node is None:
        return document.rootNode(), None
    return node.parentNode(), node


def new_layer(document, name: str):
    """UI thread: a paint layer outside the stack, to be filled on another thread."""
    return document.createNode(name, "paintlayer")


def fill_layer(node, ready: Ready, x: int, y: int) -> None:
    """Any thread, while `node` is outside the stack: Krita's setPixelData a strip at a time."""
    size = len(ready.pixels) // max(1, ready.width * ready.height)
    strips.write_strips(lambda part, top, rows: node.setPixelData(part, x, y + top, ready.width, rows),
                        ready.pixels, ready.width, ready.height, size)


def _place(parent, node, above, timings: dict | None) -> None:
    # Pixels first, then into the stack: Node.addChildNode (one "Add Layer" undo step)
    # marks the whole image dirty and waits (waitForDone) until Krita has recomposited
    # it, our pixels included. The other order (add, then setPixelData) left the canvas
    # without the new pixels: setPixelData marks nothing dirty (measured, Krita 5.1.5).
    t0 = time.perf_counter()
    parent.addChildNode(node, above)
    if timings is not None:
        timings["krita_add_ms"] = timings.get("krita_add_ms", 0.0) + (time.perf_counter() - t0) * 1000


def add_layer(document, name: str, ready: Ready | None, x: int, y: int, below=None, filled=None,
              timings: dict | None = None):
    """A normal paint layer above the painter's active layer; nothing else changes.

    `filled`: a layer from new_layer() that fill_layer() already filled off the UI
    thread (or a copy of the preview); otherwise `ready` is written here.
    """
    parent, above = _anchor(document, below)
    node = filled
    if node is None:
        node = new_layer(document, name)
        fill_layer(node, ready, x, y)
    else:
        node.setName(name)
    _place(parent, node, above, timings)
    return node


def find_preview(document):
    return next((n for n in document.topLevelNodes() if n.name() == PREVIEW_NAME), None)


def remove_preview(document) -> None:
    for node in [n for n in document.topLevelNodes() if n.name() == PREVIEW_NAME]:
        node.remove()


def keep_preview(document, name: str):
    """Apply without moving pixels: the preview becomes the layer, if it sits where the layer goes.

    Renaming is instant; a new layer would cost Krita a recomposite of the whole image
    that addChildNode waits for. The preview's own "Add Layer" step is the one undo step.
    """
    preview = find_preview(document)
    if preview is None:
        return None
    parent, above = _anchor(document)
    ids = [n.uniqueId() for n in document.topLevelNodes()]
    at = ids.index(preview.uniqueId())
    below = ids[at - 1] if at > 0 else None
    if parent.uniqueId() != document.rootNode().uniqueId() or below != (above.uniqueId() if above is not None else None):
        return None
    preview.setName(name)
    return preview


def copy_of_preview(document):
    """The preview's pixels as a new layer outside the stack: Krita copies tiles on write."""
    preview = find_preview(document)
    return preview.duplicate() if preview is not None else None


def show_preview(document, ready: Ready | None, x: int, y: int, filled=None, timings: dict | None = None):
    """ONE temporary layer, replaced as the painter clicks through results."""
    remove_preview(document)
    parent, above = _anchor(document)
    node = filled
    if node is None:
        node = new_layer(document, PREVIEW_NAME)
        fill_layer(node, ready, x, y)
    # Top level, so that finding and removing it never depends on where the painter was.
    _place(document.rootNode(), node, above if parent == document.rootNode() else None, timings)
    return node


# -- the history inside the .kra -------------------------------------------------------------
# Where the history lives: a Krita document annotation (Document.setAnnotation, in the
# Python API since Krita 4). Krita writes annotations into the .kra zip itself, so the
# history travels with the file, survives copying it, and needs no side-car file or
# hidden layers (hidden layers would cost memory and be merged or exported by mistake).
# The payload is a zip of PNGs (history.History.to_bytes): lossless, bounded to 50.
HISTORY_ANNOTATION = "paintbridge/history"


def read_history(document) -> bytes:
    if HISTORY_ANNOTATION not in list(document.annotationTypes()):
        return b""
    return bytes(document.annotation(HISTORY_ANNOTATION))


def write_history(document, data: bytes) -> None:
    document.setAnnotation(HISTORY_ANNOTATION, "PaintBridge results (zip of PNG)", QByteArray(data))


def document_key(document) -> str:
    """Stable for an open document: its root node's id."""
    return document.rootNode().uniqueId().toString()


def active_document():
    return Krita.instance().activeDocument()
