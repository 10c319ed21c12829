"""Krita access, isolated: pixels in and out, selections, layers, annotations.

Everything image-sized happens in C++ (Krita's pixelData/setPixelData, QImage
conversions, QPainter compositing): no per-pixel Python on Krita's UI thread.
Krita's RGBA/U8 pixel data is BGRA in memory, which is exactly QImage's
Format_ARGB32 on little-endian machines: the zero-copy bridge between the two.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

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


@dataclass
class RawPixels:
    """Pixels as Krita gave them, to be converted to RGBA8 on another thread."""

    rect: Rect
    data: Any  # QByteArray (Krita's layout) or a QImage (a rendered projection)
    model: str
    depth: str

    def to_rgba(self) -> RawImage:
        """Any thread: QImage's conversions run in C++ with the GIL released."""
        w, h = self.rect.width, self.rect.height
        if isinstance(self.data, QImage):
            return RawImage(w, h, 4, image_bytes(self.data.convertToFormat(QImage.Format_RGBA8888)))
        if FAST and (self.model, self.depth) == ("RGBA", "U8"):
            image = QImage(self.data, w, h, w * 4, QImage.Format_ARGB32)
            return RawImage(w, h, 4, image_bytes(image.convertToFormat(QImage.Format_RGBA8888)))
        try:
            return RawImage(w, h, 4, colors.to_rgba8(bytes(self.data), self.model, self.depth))
        except colors.UnsupportedColorSpace as exc:
            raise UserError(str(exc)) from None


def read_raw(document, rect: Rect, source: str) -> RawPixels:
    """UI thread, Krita's own copy only: the visible image or the active layer."""
    model, depth = document.colorModel(), document.colorDepth()
    if source == LAYER:
        node = document.activeNode()
        if node is None:
            raise UserError("There is no active layer.")
        if (model, depth) not in colors.SUPPORTED:
            raise UserError(f"PaintBridge reads 8- or 16-bit RGB or grayscale layers; this one is {model}/{depth}. "
                            "Use the 'Visible image' source or convert the image.")
        return RawPixels(rect, node.pixelData(rect.x, rect.y, rect.width, rect.height), model, depth)
    if (model, depth) in colors.SUPPORTED:
        return RawPixels(rect, document.pixelData(rect.x, rect.y, rect.width, rect.height), model, depth)
    # Any other colour space: Krita renders the projection to sRGB for us.
    return RawPixels(rect, document.projection(rect.x, rect.y, rect.width, rect.height), model, depth)


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
    pixels: bytes  # for Node.setPixelData

    @classmethod
    def make(cls, image: QImage, model: str, depth: str) -> Ready:
        if FAST and (model, depth) == ("RGBA", "U8"):
            return cls(image.width(), image.height(), image_bytes(image))  # ARGB32 is Krita's BGRA
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


def add_layer(document, name: str, ready: Ready, x: int, y: int, below=None):
    """A normal paint layer above the painter's active layer: ONE undo step ("Add Layer")."""
    parent, above = _anchor(document, below)
    node = document.createNode(name, "paintlayer")
    # Pixels first, then into the stack: the add's own update composites them. Measured in
    # Krita 5.1.5 (tests/krita_scenario/docker2.py): pixels written into a layer already in
    # the stack never reach the canvas (setPixelData requests no update), not even later.
    # setPixelData records no undo command: undoing the add removes the layer with its
    # pixels, redoing brings back the same node, pixels included.
    node.setPixelData(ready.pixels, x, y, ready.width, ready.height)
    parent.addChildNode(node, above)
    return node


def add_group(document, name: str, layers: list[tuple[str, Ready, int, int]], below=None):
    """Several layers in one new group above the active layer: still ONE undo step.

    Group.setChildNodes fills the group without recording undo commands (measured in
    Krita 5.1.5), so only the group's own "Add Layer" lands on the stack: one Ctrl+Z
    takes the whole batch away, as the painter applied it in one click.
    """
    parent, above = _anchor(document, below)
    group = document.createNode(name, "grouplayer")
    children = []
    for child_name, ready, x, y in layers:
        node = document.createNode(child_name, "paintlayer")
        node.setPixelData(ready.pixels, x, y, ready.width, ready.height)
        children.append(node)
    group.setChildNodes(children)
    parent.addChildNode(group, above)
    # Layers that joined the group outside an undo command were not always composited by the
    # group's own update (measured once: the canvas kept the old pixels); one refresh shows them.
    document.refreshProjection()
    return group


# -- the preview and the undo stack ------------------------------------------------------------
# What Krita 5.1.5's Python API records, measured (tests/krita_scenario/docker2.py): addChildNode
# and remove push one undo command each ("Add Layer", "Remove Layer"); setPixelData, setVisible,
# setName, setOpacity and move push none; Document has no undo macro. So the preview is ONE
# layer, added once and then only repainted or hidden (no command), and when the painter leaves
# it while our "Add Layer" is still the last thing on the stack, that command is undone
# (Krita's own Edit > Undo): the stack is then exactly as it was before the preview appeared.
ADD_LAYER = "Add Layer"
_preview_marks: dict[str, tuple[list[str], list[str]]] = {}  # document -> (undo texts, node ids)


def undo_texts() -> list[str] | None:
    """The active document's undo commands, oldest first, as the Undo History docker lists
    them (Krita creates that docker hidden or not); None where it cannot be read."""
    from PyQt5.QtWidgets import QAbstractItemView

    for docker in Krita.instance().dockers():
        if docker.objectName() == "History":
            for view in docker.findChildren(QAbstractItemView):
                model = view.model()
                if model is not None:
                    return [str(model.data(model.index(row, 0))) for row in range(1, model.rowCount())]
    return None


def _node_ids(document) -> list[str]:
    ids, todo = [], list(document.topLevelNodes())
    while todo:
        node = todo.pop()
        ids.append(node.uniqueId().toString())
        todo.extend(node.childNodes())
    return sorted(ids)


def find_preview(document):
    return next((n for n in document.topLevelNodes() if n.name() == PREVIEW_NAME), None)


def show_preview(document, ready: Ready, x: int, y: int):
    """ONE temporary layer, repainted as the painter clicks through results."""
    node = find_preview(document)
    if node is None:
        parent, above = _anchor(document)
        node = document.createNode(PREVIEW_NAME, "paintlayer")
        node.setPixelData(ready.pixels, x, y, ready.width, ready.height)  # before the add: see add_layer
        # Top level, so that finding it never depends on where the painter was.
        document.rootNode().addChildNode(node, above if parent == document.rootNode() else None)
        texts = undo_texts()
        if texts and texts[-1] == ADD_LAYER:
            _preview_marks[document_key(document)] = (texts, _node_ids(document))
        return node
    _clear(node)
    node.setVisible(True)
    node.setPixelData(ready.pixels, x, y, ready.width, ready.height)
    # Repainting a layer in the stack requests no update (nor do setVisible, setOpacity or
    # move: measured), and the API has no partial one: recomposite (~75 ms at 2048x2048).
    document.refreshProjection()
    return node


def _clear(node) -> None:
    old = node.bounds()
    if old.width() > 0 and old.height() > 0:
        size = max(1, len(node.pixelData(old.x(), old.y(), 1, 1)))
        node.setPixelData(bytes(old.width() * old.height() * size), old.x(), old.y(), old.width(), old.height())


def leave_preview(document) -> str:
    """The painter is done looking: 'undone' (the preview's own undo step taken back),
    'hidden' (something else happened since: hide it, no undo step) or 'none'."""
    node = find_preview(document)
    mark = _preview_marks.pop(document_key(document), None)
    if node is None:
        return "none"
    active = Krita.instance().activeDocument()
    if mark is not None and active is not None and document_key(active) == document_key(document):
        # Actions still running (a Deselect the painter just clicked) push their undo command
        # when they end: wait for them before looking at the stack (measured: a Deselect
        # undone in place of the preview, when this wait came after the comparison).
        document.waitForDone()
        if undo_texts() == mark[0] and _node_ids(document) == mark[1]:
            Krita.instance().action("edit_undo").trigger()
            document.waitForDone()
            if find_preview(document) is None:
                return "undone"
            Krita.instance().action("edit_redo").trigger()  # not ours after all: put it back
            document.waitForDone()
    _clear(node)
    node.setVisible(False)
    document.refreshProjection()  # hiding requests no update either
    return "hidden"


def remove_preview(document) -> None:
    """Leave the preview (kept for callers; see leave_preview)."""
    leave_preview(document)


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
