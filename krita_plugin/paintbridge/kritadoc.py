"""Krita access, isolated: pixels in and out, selections, layers, annotations.

Everything image-sized happens in C++ (Krita's pixelData/setPixelData, QImage
conversions, QPainter compositing): no per-pixel Python on Krita's UI thread.
Krita's RGBA/U8 pixel data is BGRA in memory, which is exactly QImage's
Format_ARGB32 on little-endian machines: the zero-copy bridge between the two.
"""

from __future__ import annotations

import sys

from krita import Krita, Selection
from PyQt5.QtCore import QBuffer, QByteArray, QIODevice, Qt
from PyQt5.QtGui import QImage, QPainter

from protocol import RawImage

from . import colors
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


def read_rgba(document, rect: Rect, source: str) -> RawImage:
    """The visible image (Krita's own rendering) or the active layer, as RGBA8."""
    model, depth = document.colorModel(), document.colorDepth()
    if source == LAYER:
        node = document.activeNode()
        if node is None:
            raise UserError("There is no active layer.")
        raw = bytes(node.pixelData(rect.x, rect.y, rect.width, rect.height))
    elif (model, depth) in colors.SUPPORTED:
        raw = bytes(document.pixelData(rect.x, rect.y, rect.width, rect.height))
    else:  # any other colour space: Krita renders the projection to sRGB for us
        image = document.projection(rect.x, rect.y, rect.width, rect.height).convertToFormat(QImage.Format_RGBA8888)
        return RawImage(rect.width, rect.height, 4, image_bytes(image))
    if is_fast(document):
        return RawImage(rect.width, rect.height, 4, _bgra_to_rgba(raw, rect.width, rect.height))
    try:
        return RawImage(rect.width, rect.height, 4, colors.to_rgba8(raw, model, depth))
    except colors.UnsupportedColorSpace as exc:
        raise UserError(str(exc)) from None


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


def _pixels_for(document, image: QImage) -> bytes:
    if is_fast(document):
        return image_bytes(image)  # already Krita's BGRA
    rgba = image_bytes(image.convertToFormat(QImage.Format_RGBA8888))
    return colors.from_rgba8(rgba, document.colorModel(), document.colorDepth())


# -- layers ---------------------------------------------------------------------------------
def _anchor(document, below=None):
    """Parent and sibling to add above: the given node or the active layer, never the preview."""
    node = below if below is not None else document.activeNode()
    if node is None or node.parentNode() is None or node.name() == PREVIEW_NAME:
        node = next((n for n in reversed(document.topLevelNodes()) if n.name() != PREVIEW_NAME), None)
    if node is None:
        return document.rootNode(), None
    return node.parentNode(), node


def add_layer(document, name: str, image: QImage, x: int, y: int, below=None):
    """A normal paint layer above the painter's active layer; nothing else changes."""
    parent, above = _anchor(document, below)
    node = document.createNode(name, "paintlayer")
    node.setPixelData(_pixels_for(document, image), x, y, image.width(), image.height())
    parent.addChildNode(node, above)
    return node


def find_preview(document):
    return next((n for n in document.topLevelNodes() if n.name() == PREVIEW_NAME), None)


def remove_preview(document) -> None:
    for node in [n for n in document.topLevelNodes() if n.name() == PREVIEW_NAME]:
        node.remove()


def show_preview(document, image: QImage, x: int, y: int, below=None):
    """ONE temporary layer, replaced as the painter clicks through results."""
    remove_preview(document)
    parent, above = _anchor(document, below)
    node = document.createNode(PREVIEW_NAME, "paintlayer")
    node.setPixelData(_pixels_for(document, image), x, y, image.width(), image.height())
    # Top level, so that finding and removing it never depends on where the painter was.
    document.rootNode().addChildNode(node, above if parent == document.rootNode() else None)
    document.refreshProjection()
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
