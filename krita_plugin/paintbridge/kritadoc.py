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

from . import colors, strips, undo_link
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
    """Pixels as Krita gave them, or where to read them, converted to RGBA8 on another thread.

    `data` is Krita's copy read already (a QByteArray in the document's layout, or a QImage
    of the rendered projection), or None: then `read(x, y, w, h)`, Krita's own pixelData
    (the active layer's or the visible image's), is called by to_rgba a strip at a time
    (strips.py) on the thread that converts, and the UI thread never waits for Krita's
    64 MiB readBytes.
    """

    rect: Rect
    data: Any  # QByteArray (Krita's layout), a QImage (a rendered projection), or None: read later
    model: str
    depth: str
    read: Any = None  # Krita's pixelData(x, y, w, h) -> QByteArray, when data is None

    def to_rgba(self) -> RawImage:
        """Any thread: Krita's reads a strip at a time, QImage's conversions in C++ with the GIL released."""
        r = self.rect
        w, h = r.width, r.height
        if isinstance(self.data, QImage):
            return RawImage(w, h, 4, image_bytes(self.data.convertToFormat(QImage.Format_RGBA8888)))
        fast = FAST and (self.model, self.depth) == ("RGBA", "U8")
        try:
            if self.data is not None:
                if fast:
                    image = QImage(self.data, w, h, w * 4, QImage.Format_ARGB32)
                    return RawImage(w, h, 4, image_bytes(image.convertToFormat(QImage.Format_RGBA8888)))
                return RawImage(w, h, 4, colors.to_rgba8(bytes(self.data), self.model, self.depth))

            def read(y: int, rows: int):
                return self.read(r.x, r.y + y, w, rows)

            if fast:
                def convert(part, rows: int) -> bytes:  # Krita's BGRA is ARGB32: Qt swaps it, strip by strip
                    return image_bytes(QImage(part, w, rows, w * 4, QImage.Format_ARGB32).convertToFormat(QImage.Format_RGBA8888))

                return RawImage(w, h, 4, strips.read_strips(read, w, h, 4, convert, 4))
            data = strips.read_strips(read, w, h, PIXEL_SIZE[(self.model, self.depth)])
            return RawImage(w, h, 4, colors.to_rgba8(bytes(data), self.model, self.depth))
        except strips.ShortRead:
            raise UserError("The document was closed while PaintBridge was reading it.") from None
        except colors.UnsupportedColorSpace as exc:
            raise UserError(str(exc)) from None


def read_raw(document, rect: Rect, source: str, later: bool = False) -> RawPixels:
    """UI thread: the visible image or the active layer, Krita's own copy only.

    `later`: no pixels yet, only what to read: to_rgba reads them on its own thread, a strip
    at a time (the big-image path). Not where the layers must be as they are now (control
    layers hidden for the read, live mode's fingerprint): those read here.
    """
    model, depth = document.colorModel(), document.colorDepth()
    if source == LAYER:
        node = document.activeNode()
        if node is None:
            raise UserError("There is no active layer.")
        if (model, depth) not in colors.SUPPORTED:
            raise UserError(f"PaintBridge reads 8- or 16-bit RGB or grayscale layers; this one is {model}/{depth}. "
                            "Use the 'Visible image' source or convert the image.")
        read = node.pixelData
    elif (model, depth) in colors.SUPPORTED:
        read = document.pixelData
    else:  # any other colour space: Krita renders the projection to sRGB for us
        return RawPixels(rect, document.projection(rect.x, rect.y, rect.width, rect.height), model, depth)
    if later:
        return RawPixels(rect, None, model, depth, read)
    return RawPixels(rect, read(rect.x, rect.y, rect.width, rect.height), model, depth)


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
    """Any thread, while `node` is outside the stack: Krita's setPixelData a strip at a time.

    setPixelData records no undo command: undoing the add that follows removes the layer
    with its pixels, redoing brings back the same node, pixels included.
    """
    size = len(ready.pixels) // max(1, ready.width * ready.height)
    strips.write_strips(lambda part, top, rows: node.setPixelData(part, x, y + top, ready.width, rows),
                        ready.pixels, ready.width, ready.height, size)


def _place(parent, node, above, timings: dict | None) -> None:
    # Pixels first, then into the stack: Node.addChildNode (one "Add Layer" undo step)
    # marks the whole image dirty and waits (waitForDone) until Krita has recomposited
    # it, our pixels included. The other order (add, then setPixelData) left the canvas
    # without the new pixels: setPixelData marks nothing dirty, not even later (measured,
    # Krita 5.1.5: tests/krita_scenario/place_probe.py and docker2.py).
    t0 = time.perf_counter()
    parent.addChildNode(node, above)
    if timings is not None:
        timings["krita_add_ms"] = timings.get("krita_add_ms", 0.0) + (time.perf_counter() - t0) * 1000


def _filled(document, name: str, ready, x: int, y: int):
    """`ready` as a named layer outside the stack: a Ready is written here (strips), a layer
    already filled off the UI thread (fill_layer, copy_of_preview) is only renamed."""
    if isinstance(ready, Ready):
        node = new_layer(document, name)
        fill_layer(node, ready, x, y)
        return node
    ready.setName(name)
    ready.setVisible(True)
    return ready


def add_layer(document, name: str, ready: Ready | None, x: int, y: int, below=None, filled=None,
              timings: dict | None = None):
    """A normal paint layer above the painter's active layer: ONE undo step ("Add Layer").

    `filled`: a layer from new_layer() that fill_layer() already filled off the UI
    thread (or a copy of the preview); otherwise `ready` is written here.
    """
    parent, above = _anchor(document, below)
    node = _filled(document, name, filled if filled is not None else ready, x, y)
    _place(parent, node, above, timings)
    return node


def add_group(document, name: str, layers: list[tuple[str, Any, int, int]], below=None):
    """Several layers in one new group above the active layer: still ONE undo step.

    Group.setChildNodes fills the group without recording undo commands (measured in
    Krita 5.1.5), so only the group's own "Add Layer" lands on the stack: one Ctrl+Z
    takes the whole batch away, as the painter applied it in one click. A layer's pixels
    are a Ready or a layer filled already (see _filled).
    """
    parent, above = _anchor(document, below)
    group = document.createNode(name, "grouplayer")
    children = []
    for child_name, ready, x, y in layers:
        children.append(_filled(document, child_name, ready, x, y))
    group.setChildNodes(children)
    _place(parent, group, above, None)
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
# Applying the shown result while that "Add Layer" is still the last step renames the preview
# in place (keep_preview): the preview's step becomes the apply's one step, no pixels move.
# Otherwise the preview is copied copy-on-write (copy_of_preview), left, and the copy added.
ADD_LAYER = "Add Layer"
_preview_marks: dict[str, tuple[list[str], list[str]]] = {}  # document -> (undo texts, node ids)
_preview_shows: dict[str, str] = {}  # document -> what the visible preview shows (show_preview's `shows`)


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


def _history_view():
    from PyQt5.QtWidgets import QAbstractItemView

    for docker in Krita.instance().dockers():
        if docker.objectName() == "History":
            for view in docker.findChildren(QAbstractItemView):
                if view.model() is not None:
                    return view
    return None


def undo_done() -> int | None:
    """How many of the active document's commands are done (the Undo History's current row:
    row 0 is its "<empty>" line); None where it cannot be read."""
    view = _history_view()
    return view.currentIndex().row() if view is not None else None


# -- commands that one Ctrl+Z takes together (undo_link.py says why and how) ----------------------
_links: list[undo_link.Link] = []
_link_actions: list[Any] = []  # the Undo/Redo actions whose `triggered` we follow
_relinking = [False]


def link_last(document, count: int) -> bool:
    """The last `count` commands of `document` act as one for Krita's Undo and Redo actions."""
    texts = undo_texts()
    if not texts or len(texts) < count or count < 2:
        return False
    key = document_key(document)
    _follow_undo_actions()
    _links[:] = [*undo_link.prune(_links, key, texts), undo_link.Link(key, tuple(texts), count)]
    return True


def _follow_undo_actions() -> None:
    from PyQt5.QtCore import QTimer

    app = Krita.instance()
    for name, kind in (("edit_undo", undo_link.UNDO), ("edit_redo", undo_link.REDO)):
        action = app.action(name)
        if action is None or any(a is action for a in _link_actions):
            continue
        # After Krita's own slot (whichever was connected first): on the next turn of the loop.
        action.triggered.connect(lambda _checked=False, kind=kind: QTimer.singleShot(0, lambda: _after(kind)))
        _link_actions.append(action)


def _after(kind: str) -> None:
    if _relinking[0] or not _links:
        return
    document = Krita.instance().activeDocument()
    if document is None:
        return
    document.waitForDone()
    key, texts, done = document_key(document), undo_texts(), undo_done()
    _links[:] = undo_link.prune(_links, key, texts)
    if any(undo_link.repeat(link, kind, key, texts, done) for link in _links):
        _relinking[0] = True
        try:  # Krita's own action again (its slot runs now; ours looks again on the next turn)
            Krita.instance().action("edit_undo" if kind == undo_link.UNDO else "edit_redo").trigger()
            document.waitForDone()
        finally:
            _relinking[0] = False


def _node_ids(document) -> list[str]:
    ids, todo = [], list(document.topLevelNodes())
    while todo:
        node = todo.pop()
        ids.append(node.uniqueId().toString())
        todo.extend(node.childNodes())
    return sorted(ids)


def find_preview(document):
    return next((n for n in document.topLevelNodes() if n.name() == PREVIEW_NAME), None)


def show_preview(document, ready: Ready | None, x: int, y: int, filled=None, shows: str = "",
                 timings: dict | None = None):
    """ONE temporary layer, repainted as the painter clicks through results.

    No preview yet: `filled` (a layer filled off the UI thread) or `ready` goes in with one
    addChildNode, its "Add Layer" marked (leave_preview, keep_preview). A preview there
    already (shown or hidden) is repainted in place, so that clicking through results adds
    nothing to the undo stack; `ready` is then needed, and `filled` is not used. `shows`
    names what it shows (an entry id), for preview_shows.
    """
    node = find_preview(document)
    key = document_key(document)
    if node is None:
        parent, above = _anchor(document)
        node = _filled(document, PREVIEW_NAME, filled if filled is not None else ready, x, y)
        # Top level, so that finding it never depends on where the painter was.
        _place(document.rootNode(), node, above if parent == document.rootNode() else None, timings)
        texts = undo_texts()
        if texts and texts[-1] == ADD_LAYER:
            _preview_marks[key] = (texts, _node_ids(document))
        _preview_shows[key] = shows
        return node
    _clear(node)
    node.setVisible(True)
    fill_layer(node, ready, x, y)
    # Repainting a layer in the stack requests no update (nor do setVisible, setOpacity or
    # move: measured), and the API has no partial one: recomposite (~75 ms at 2048x2048).
    document.refreshProjection()
    _preview_shows[key] = shows
    return node


def _clear(node) -> None:
    old = node.bounds()
    if old.width() > 0 and old.height() > 0:
        size = max(1, len(node.pixelData(old.x(), old.y(), 1, 1)))
        node.setPixelData(bytes(old.width() * old.height() * size), old.x(), old.y(), old.width(), old.height())


def _preview_add_is_last(document, mark) -> bool:
    """Nothing happened since the preview went in: its "Add Layer" is the last undo step."""
    active = Krita.instance().activeDocument()
    return (mark is not None and active is not None and document_key(active) == document_key(document)
            and undo_texts() == mark[0] and _node_ids(document) == mark[1])


def preview_shows(document) -> str:
    """What the preview shows now (show_preview's `shows`); "" when none is shown."""
    node = find_preview(document)
    return _preview_shows.get(document_key(document), "") if node is not None and node.visible() else ""


def keep_preview(document, name: str):
    """Apply without moving pixels: the preview becomes the layer, renamed in place.

    Only where that is exactly one undo step and the right place: the preview's own "Add
    Layer" is still the last step (so one Ctrl+Z takes the applied layer away, and the stack
    is as a fresh add would leave it) and it sits right above where the layer goes. Renaming
    is instant; a new layer would cost Krita a recomposite of the whole image that
    addChildNode waits for, and a copy of the pixels. None where it does not apply.
    """
    preview = find_preview(document)
    key = document_key(document)
    if preview is not None and key in _preview_marks:
        document.waitForDone()  # a running action's undo command first (see leave_preview)
    if preview is None or not preview.visible() or not _preview_add_is_last(document, _preview_marks.get(key)):
        return None
    parent, above = _anchor(document)
    ids = [n.uniqueId() for n in document.topLevelNodes()]
    at = ids.index(preview.uniqueId())
    below = ids[at - 1] if at > 0 else None
    if parent.uniqueId() != document.rootNode().uniqueId() or below != (above.uniqueId() if above is not None else None):
        return None
    preview.setName(name)  # records no undo command: the "Add Layer" before it is the apply's
    _preview_marks.pop(key, None)
    _preview_shows.pop(key, None)
    return preview


def copy_of_preview(document):
    """The shown preview's pixels as a new layer outside the stack, for add_layer/add_group:
    Node.duplicate shares Krita's tiles copy-on-write (2-5 ms at 4096x4096), no pixel copy."""
    preview = find_preview(document)
    return preview.duplicate() if preview is not None and preview.visible() else None


def leave_preview(document) -> str:
    """The painter is done looking: 'undone' (the preview's own undo step taken back),
    'hidden' (something else happened since: hide it, no undo step) or 'none'."""
    node = find_preview(document)
    key = document_key(document)
    mark = _preview_marks.pop(key, None)
    _preview_shows.pop(key, None)
    if node is None:
        return "none"
    if mark is not None:
        # Actions still running (a Deselect the painter just clicked) push their undo command
        # when they end: wait for them before looking at the stack (measured: a Deselect
        # undone in place of the preview, when this wait came after the comparison).
        document.waitForDone()
    if _preview_add_is_last(document, mark):
        Krita.instance().action("edit_undo").trigger()
        document.waitForDone()
        if find_preview(document) is None:
            return "undone"
        Krita.instance().action("edit_redo").trigger()  # not ours after all: put it back
        document.waitForDone()
    if not node.visible() and node.bounds().width() <= 0:
        return "hidden"  # hidden and empty already: nothing to recomposite
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


def main_window():
    """Krita's active main window as a QMainWindow (a pop-out's parent), or None."""
    window = Krita.instance().activeWindow()
    return window.qwindow() if window is not None else None
