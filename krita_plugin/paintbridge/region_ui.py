"""The docker's Regions tab: layers (or groups) with a prompt of their own.

A region is an ordinary layer the painter marks here; its alpha is the mask
(paint where the region is, soft brush edges blend). Its prompt, optional
negative prompt and weight live in a document annotation keyed by the layer's
unique id (region_layers.RegionStore), so they are saved in the .kra with the
painting. Generate, refine, inpaint and Live send the visible regions that
have something painted over the job's area (region_layers.with_regions).
"""

from __future__ import annotations

from PyQt5.QtCore import QByteArray, Qt, QTimer
from PyQt5.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from . import kritadoc
from .kritadoc import UserError
from .region_layers import REGIONS_ANNOTATION, RegionLayer, RegionPrompt, RegionStore
from .regions import Rect


def _walk(node):
    for child in node.childNodes():
        yield child
        yield from _walk(child)


def _node_id(node) -> str:
    return node.uniqueId().toString()


def read_store(document) -> RegionStore:
    if REGIONS_ANNOTATION not in list(document.annotationTypes()):
        return RegionStore()
    return RegionStore.from_bytes(bytes(document.annotation(REGIONS_ANNOTATION)))


def write_store(document, store: RegionStore) -> None:
    document.setAnnotation(REGIONS_ANNOTATION, "PaintBridge region prompts (JSON)", QByteArray(store.to_bytes()))


class RegionsTab(QWidget):
    """The list of region layers of the active document and the selected one's prompt."""

    def __init__(self, docker) -> None:
        super().__init__()
        self.docker = docker
        self._stores: dict[str, RegionStore] = {}
        self._loading = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 2, 0, 0)
        self.list = QListWidget()
        rows = self.list.fontMetrics().height() + 4
        self.list.setMinimumHeight(2 * rows + 6)  # two regions without scrolling; the editor stays in view
        self.list.setMaximumHeight(6 * rows + 6)
        self.list.currentItemChanged.connect(lambda _item, _prev: self._show_selected())
        layout.addWidget(self.list)
        row = QHBoxLayout()
        self.add_button = QPushButton("Active layer → region")
        self.add_button.setToolTip("Give the active layer (or group) its own prompt; its painted pixels are the area")
        self.add_button.clicked.connect(lambda: docker._guard(self.add_active))
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Make the selected region an ordinary layer again (the layer stays)")
        self.remove_button.clicked.connect(lambda: docker._guard(self.remove_selected))
        row.addWidget(self.add_button, 2)
        row.addWidget(self.remove_button, 1)
        layout.addLayout(row)
        form = QFormLayout()
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("This region's prompt, e.g. a red umbrella")
        self.prompt_edit.setFixedHeight(44)
        self.negative_edit = QLineEdit()
        self.negative_edit.setPlaceholderText("Negative (empty: the docker's)")
        self.weight_spin = QDoubleSpinBox()
        self.weight_spin.setRange(0.0, 10.0)
        self.weight_spin.setSingleStep(0.1)
        self.weight_spin.setValue(1.0)
        self.weight_spin.setToolTip("How strongly this region wins where it overlaps others")
        form.addRow(self.prompt_edit)
        form.addRow("Negative", self.negative_edit)
        form.addRow("Weight", self.weight_spin)
        layout.addLayout(form)
        self.hint = QLabel("Paint the region's area on its layer: the alpha is the mask.")
        self.hint.setWordWrap(True)
        layout.addWidget(self.hint)
        layout.addStretch(1)
        self.prompt_edit.textChanged.connect(self._edited)
        self.negative_edit.textChanged.connect(self._edited)
        self.weight_spin.valueChanged.connect(self._edited)
        self.timer = QTimer(self)  # layers renamed or deleted in the Layers docker: keep the list true
        self.timer.timeout.connect(self.refresh)
        self.timer.start(1000)
        self._editor_enabled(False)

    # -- the store of a document ---------------------------------------------------------------
    def store(self, document) -> RegionStore:
        key = kritadoc.document_key(document)
        if key not in self._stores:
            self._stores[key] = read_store(document)
        return self._stores[key]

    def _nodes(self, document) -> dict[str, object]:
        return {_node_id(n): n for n in _walk(document.rootNode())}

    # -- actions -----------------------------------------------------------------------------------
    def add_active(self, prompt: str = "") -> str:
        document = self.docker._document()
        node = document.activeNode()
        if node is None or node.type() not in ("paintlayer", "grouplayer", "vectorlayer", "filllayer"):
            raise UserError("Pick a paint layer or a group in the Layers docker first.")
        store = self.store(document)
        node_id = _node_id(node)
        if store.get(node_id) is None:
            store.set(node_id, RegionPrompt(prompt))
        elif prompt:
            store.get(node_id).prompt = prompt
        write_store(document, store)
        self.refresh(select=node_id)
        self.prompt_edit.setFocus()
        return node_id

    def set_prompt(self, node_id: str, prompt: str, negative_prompt: str | None = None, weight: float = 1.0) -> None:
        document = self.docker._document()
        store = self.store(document)
        store.set(node_id, RegionPrompt(prompt, negative_prompt, weight))
        write_store(document, store)
        self.refresh(select=node_id)

    def remove_selected(self) -> None:
        document = self.docker._document()
        item = self.list.currentItem()
        if item is None:
            raise UserError("Pick a region in the list first.")
        store = self.store(document)
        store.remove(item.data(Qt.UserRole))
        write_store(document, store)
        self.refresh()

    def _edited(self) -> None:
        if self._loading:
            return
        document = kritadoc.active_document()
        item = self.list.currentItem()
        if document is None or item is None:
            return
        negative = self.negative_edit.text().strip()
        store = self.store(document)
        store.set(item.data(Qt.UserRole), RegionPrompt(self.prompt_edit.toPlainText(), negative or None,
                                                       self.weight_spin.value()))
        write_store(document, store)
        item.setText(self._item_text(document, item.data(Qt.UserRole)))

    # -- the list ------------------------------------------------------------------------------------
    def _item_text(self, document, node_id: str) -> str:
        node = self._nodes(document).get(node_id)
        prompt = self.store(document).get(node_id)
        name = node.name() if node is not None else "?"
        hidden = "" if node is None or node.visible() else " (hidden)"
        text = " ".join((prompt.prompt if prompt else "").split()) or "(no prompt yet)"
        return f"{name}{hidden}: {text}"

    def refresh(self, select: str | None = None) -> None:
        document = kritadoc.active_document()
        current = select or (self.list.currentItem().data(Qt.UserRole) if self.list.currentItem() else None)
        if document is None:
            if self.list.count():
                self.list.clear()
            return
        store = self.store(document)
        nodes = self._nodes(document)
        if store.prune(set(nodes)):
            write_store(document, store)
        texts = [(k, self._item_text(document, k)) for k in store.prompts]
        shown = [(self.list.item(i).data(Qt.UserRole), self.list.item(i).text()) for i in range(self.list.count())]
        if texts == shown and select is None:
            return  # nothing changed: no flicker, the editor keeps its cursor
        self.list.blockSignals(True)
        self.list.clear()
        for node_id, text in texts:
            item = QListWidgetItem(text)
            item.setData(Qt.UserRole, node_id)
            self.list.addItem(item)
            if node_id == current:
                self.list.setCurrentItem(item)
        if self.list.currentItem() is None and self.list.count():
            self.list.setCurrentRow(0)
        self.list.blockSignals(False)
        self._show_selected()

    def _editor_enabled(self, enabled: bool) -> None:
        for widget in (self.prompt_edit, self.negative_edit, self.weight_spin, self.remove_button):
            widget.setEnabled(enabled)

    def _show_selected(self) -> None:
        document = kritadoc.active_document()
        item = self.list.currentItem()
        prompt = self.store(document).get(item.data(Qt.UserRole)) if document is not None and item is not None else None
        self._loading = True
        try:
            self.prompt_edit.setPlainText(prompt.prompt if prompt else "")
            self.negative_edit.setText(prompt.negative_prompt or "" if prompt else "")
            self.weight_spin.setValue(prompt.weight if prompt else 1.0)
        finally:
            self._loading = False
        self._editor_enabled(prompt is not None)

    # -- for the jobs ---------------------------------------------------------------------------------
    def layers(self, document, area: Rect) -> list[RegionLayer]:
        """The region layers' pixels over a job's area (UI thread; Krita's C++ copies)."""
        store = self.store(document)
        if not store.prompts:
            return []
        nodes = self._nodes(document)
        model, depth = document.colorModel(), document.colorDepth()
        out = []
        for node_id, prompt in store.prompts.items():
            node = nodes.get(node_id)
            if node is None or not prompt.prompt.strip():
                continue
            read = node.projectionPixelData if node.type() == "grouplayer" else node.pixelData
            pixels = bytes(read(area.x, area.y, area.width, area.height))
            out.append(RegionLayer(prompt.prompt, pixels, model, depth, prompt.negative_prompt, prompt.weight,
                                   visible=_visible(node)))
        return out


def _visible(node) -> bool:
    """Hidden itself or inside a hidden group: not sent."""
    while node is not None and node.parentNode() is not None:
        if not node.visible():
            return False
        node = node.parentNode()
    return True
