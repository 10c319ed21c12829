"""Control layers in the docker: the Qt side of controls.py.

A "Control" menu in the docker's mode row: use the active layer as a control of
a kind, or make one "from the canvas" (the server's preprocessor turns the
visible image into a NEW layer, "[Control] canny" say, that the painter may
paint over). The controls are rows under the strength, in the docker's scrolled
extras (extras.py).
Each control is a row: on/off and the layer's name, its kind, its strength,
and behind the gear its ControlNet (the server's, of the checkpoint's family),
its range of steps and its mode. Every enabled control goes with Generate,
refine, inpaint and upscale.

Control layers are only ever read. While the docker reads the visible image
for a job (refine, inpaint, upscale, a new control), visible control layers
are hidden for that moment, as krita-ai-diffusion does: an edge map drawn over
the painting is not what the painter wants refined.

The list is saved with the document (a Krita annotation, controls.ANNOTATION),
by the layers' uniqueIds.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from PyQt5.QtCore import QByteArray, QTimer
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from . import controls, kritadoc
from .controls import KIND_LABELS, KINDS, ControlLayer
from .kritadoc import RawPixels, UserError
from .regions import Rect
from .requests import VISIBLE

MODE_LABELS = {"balanced": "Balanced", "prompt": "Prompt matters more", "control": "Control matters more"}


def _nodes(node):
    for child in node.childNodes():
        yield child
        yield from _nodes(child)


def find_node(document, layer_id: str):
    return next((n for n in _nodes(document.rootNode()) if n.uniqueId().toString() == layer_id), None)


class ControlRow(QFrame):
    """One control: [on] name · kind · strength · gear · remove; details below the gear."""

    def __init__(self, panel: ControlsPanel, index: int, layer: ControlLayer, name: str) -> None:
        super().__init__()
        self.panel, self.index = panel, index
        self.setFrameShape(QFrame.StyledPanel)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(3, 2, 3, 2)
        outer.setSpacing(2)
        top = self.top = QHBoxLayout()
        self.enabled = QCheckBox(name)
        self.enabled.setChecked(layer.enabled)
        self.enabled.setToolTip(f"Control layer '{name}' (read only: PaintBridge never changes it). "
                                "Untick to leave it out of the next jobs")
        self.enabled.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)  # a long name never widens the docker
        self.enabled.toggled.connect(lambda on: panel.update(index, enabled=on))
        self.kind = QComboBox()
        for key in KINDS:
            self.kind.addItem(KIND_LABELS[key], key)
        self.kind.setCurrentIndex(max(0, self.kind.findData(layer.kind)))
        self.kind.currentIndexChanged.connect(lambda _i: panel.update(index, rebuild=True, kind=self.kind.currentData(),
                                                                      model=""))
        self.strength = QDoubleSpinBox()
        self.strength.setRange(0.0, 2.0)
        self.strength.setSingleStep(0.05)
        self.strength.setValue(layer.strength)
        self.strength.setToolTip("Control weight (the WebUI's): how strongly the layer steers")
        self.strength.valueChanged.connect(lambda v: panel.update(index, strength=round(v, 3)))
        self.gear = QToolButton()
        self.gear.setText("⚙")
        self.gear.setCheckable(True)
        self.gear.setAutoRaise(True)
        self.gear.setToolTip("ControlNet, range of steps and mode")
        remove = QToolButton()
        remove.setText("✕")
        remove.setAutoRaise(True)
        remove.setToolTip("Stop using this layer as a control (the layer stays)")
        remove.clicked.connect(lambda: panel.remove(index))
        top.addWidget(self.enabled, 1)
        top.addWidget(self.kind)
        top.addWidget(self.strength)
        top.addWidget(self.gear)
        top.addWidget(remove)
        outer.addLayout(top)

        self.details = QWidget()
        more = QVBoxLayout(self.details)
        more.setContentsMargins(0, 0, 0, 0)
        more.setSpacing(2)
        self.model = QComboBox()
        self.model.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.model.setMinimumContentsLength(10)
        nets, family = panel.controlnets(), panel.family()
        automatic = controls.pick_model(layer.kind, nets, family)
        self.model.addItem(f"Automatic: {automatic}" if automatic else f"— choose a {KIND_LABELS[layer.kind]} ControlNet —",
                           "")
        for name_ in controls.choices(layer.kind, nets, family):
            self.model.addItem(name_, name_)
        self.model.setCurrentIndex(max(0, self.model.findData(layer.model)))
        self.model.setToolTip(f"ControlNets on the server for {family or 'this checkpoint'}")
        self.model.currentIndexChanged.connect(lambda _i: panel.update(index, rebuild=True,
                                                                       model=self.model.currentData() or ""))
        self.missing = not (layer.model or automatic)
        more.addWidget(self.model)
        row = QHBoxLayout()
        row.addWidget(QLabel("Steps"))
        self.start = _percent(layer.start, "Start: the fraction of the steps before the control begins")
        self.end = _percent(layer.end, "End: the fraction of the steps where the control stops")
        self.start.valueChanged.connect(lambda v: panel.update(index, start=v / 100))
        self.end.valueChanged.connect(lambda v: panel.update(index, end=v / 100))
        row.addWidget(self.start)
        row.addWidget(QLabel("–"))
        row.addWidget(self.end)
        self.mode = QComboBox()
        for key, text in MODE_LABELS.items():
            self.mode.addItem(text, key)
        self.mode.setCurrentIndex(max(0, self.mode.findData(layer.mode)))
        self.mode.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.mode.setMinimumContentsLength(6)
        self.mode.currentIndexChanged.connect(lambda _i: panel.update(index, mode=self.mode.currentData()))
        row.addWidget(self.mode, 1)
        more.addLayout(row)
        outer.addWidget(self.details)
        self.gear.toggled.connect(self._details)
        self.gear.setChecked(self.missing)  # a control without a ControlNet opens to say so
        self.details.setVisible(self.missing)
        if self.missing:
            self.model.setStyleSheet("color: #d66;")


    def _details(self, shown: bool) -> None:
        self.details.setVisible(shown)
        self.panel.fit()


def _percent(value: float, tip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(0, 100)
    spin.setDecimals(0)
    spin.setSingleStep(5)
    spin.setSuffix("%")
    spin.setValue(round(value * 100))
    spin.setToolTip(tip)
    return spin


class ControlsPanel(QWidget):
    """The docker's control layers (one list per open document)."""

    def __init__(self, docker: Any) -> None:
        super().__init__()
        self.docker = docker
        self.layers: dict[str, list[ControlLayer]] = {}  # document key -> its controls
        self._shown: tuple = ()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        # "Control ▾" sits in the docker's mode row (no height of its own): a menu of
        # "use the active layer as <kind>" and "<kind> from the canvas (new layer)".
        self.menu_button = QToolButton()
        self.menu_button.setText("Control")
        self.menu_button.setToolTip("Steer the composition with a layer: a sketch, line art, edges, depth...")
        self.menu_button.setPopupMode(QToolButton.InstantPopup)
        self.menu_button.setAutoRaise(True)
        menu = QMenu(self.menu_button)
        menu.addSection("Use the active layer as")
        self.layer_actions = {}
        for key in KINDS:
            action = menu.addAction(KIND_LABELS[key])
            action.setToolTip(f"The active layer steers the next jobs as {KIND_LABELS[key]} (it is never changed)")
            action.triggered.connect(lambda _c=False, k=key: docker._guard(lambda: self.add_from_layer(k)))
            self.layer_actions[key] = action
        menu.addSection("From the canvas, as a new layer")
        self.canvas_actions = {}
        for key in KINDS:
            action = menu.addAction(f"{KIND_LABELS[key]} from the canvas")
            action.setToolTip("The server's preprocessor turns the visible image into a new layer you can paint over")
            action.triggered.connect(lambda _c=False, k=key: docker._guard(lambda: self.add_from_canvas(k)))
            self.canvas_actions[key] = action
        menu.setToolTipsVisible(True)
        self.menu_button.setMenu(menu)
        # The rows sit in the docker's scrolled extras (extras.py), which needs one row's height:
        # on a 1280x800 screen the docker's minimum height must stay that of its essentials.
        self.rows_box = layout
        self.rows: list[ControlRow] = []
        # Documents switch and layers get deleted without a signal the docker sees: look twice a second.
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.refresh)
        self.timer.start(500)  # the checkpoint's family too: its change rebuilds the ControlNet lists
        self.setVisible(False)

    # -- what the server has ----------------------------------------------------------------
    def controlnets(self) -> list[tuple[str, str]]:
        caps = self.docker.capabilities
        return [(m.name, m.family) for m in caps.models if m.kind == "controlnet"] if caps is not None else []

    def family(self) -> str:
        info = self.docker._model_info(self.docker.model_combo.currentText())
        return info.family if info is not None else ""

    def on_welcome(self) -> None:
        self.refresh(force=True)

    # -- the list of the active document -----------------------------------------------------
    def current(self, document) -> list[ControlLayer]:
        key = kritadoc.document_key(document)
        if key not in self.layers:
            saved = b""
            if controls.ANNOTATION in list(document.annotationTypes()):
                saved = bytes(document.annotation(controls.ANNOTATION))
            self.layers[key] = controls.from_json(saved)
        return self.layers[key]

    def _save(self, document) -> None:
        document.setAnnotation(controls.ANNOTATION, "PaintBridge control layers (JSON)",
                               QByteArray(controls.to_json(self.current(document))))

    def _set(self, document, layers: list[ControlLayer]) -> None:
        self.layers[kritadoc.document_key(document)] = layers
        self._save(document)
        self.refresh(force=True)

    def update(self, index: int, rebuild: bool = False, **changes) -> None:
        document = kritadoc.active_document()
        if document is None:
            return
        layers = list(self.current(document))
        if not 0 <= index < len(layers):
            return
        layers[index] = dataclasses.replace(layers[index], **changes)
        if rebuild:
            QTimer.singleShot(0, lambda: self._set(document, layers))  # not inside the combo's own signal
        else:
            self.layers[kritadoc.document_key(document)] = layers
            self._save(document)

    def remove(self, index: int) -> None:
        document = self.docker._document()
        layers = list(self.current(document))
        if 0 <= index < len(layers):
            del layers[index]
            QTimer.singleShot(0, lambda: self._set(document, layers))

    def add(self, document, layer: ControlLayer) -> None:
        self._set(document, [*(c for c in self.current(document) if c.layer_id != layer.layer_id), layer])

    def add_from_layer(self, kind: str) -> ControlLayer:
        document = self.docker._document()
        node = document.activeNode()
        if node is None or node.type() not in ("paintlayer", "grouplayer", "filllayer", "vectorlayer", "filelayer"):
            raise UserError("Pick a paint layer (or group) to use as a control.")
        if node.name() == kritadoc.PREVIEW_NAME:
            raise UserError("The preview is not a layer to steer with: apply it first.")
        layer = ControlLayer(node.uniqueId().toString(), kind, is_control_image=node.name().startswith(controls.MARK))
        self.add(document, layer)
        self.docker.show_message(f"'{node.name()}' steers the next jobs as {KIND_LABELS[kind]}")
        return layer

    def add_from_canvas(self, kind: str) -> str:
        """The server's preprocessor on the visible image -> a new control layer (on_result)."""
        from .docker import PendingJob  # the docker's own job record (docker imports this module)

        document = self.docker._document()
        canvas = Rect(0, 0, document.width(), document.height())
        with self.hidden(document):
            raw = kritadoc.read_raw(document, canvas, VISIBLE)

        def build():  # network thread
            return controls.preprocess_request(kind, raw.to_rgba())

        job = PendingJob("preprocess", "control", document, canvas, f"{KIND_LABELS[kind]} from the canvas",
                         {"control_kind": kind})
        return self.docker._submit(build, job)

    def on_result(self, job, result) -> None:
        """The preprocessor's image becomes a layer above the active one, and a control."""
        model, depth = job.color
        kind = job.settings["control_kind"]

        def prepare():  # background thread
            return kritadoc.Ready.make(kritadoc.layer_ready(result.images[0], job.rect, None), model, depth)

        def place(ready) -> None:  # UI thread
            node = kritadoc.add_layer(job.document, controls.layer_name(kind), ready, job.rect.x, job.rect.y)
            self.add(job.document, ControlLayer(node.uniqueId().toString(), kind, is_control_image=True))
            self.docker.show_message(f"New control layer '{node.name()}': paint over it, or untick it")

        self.docker.background.submit(prepare, place)

    # -- jobs ---------------------------------------------------------------------------------
    def _live(self, document) -> list[tuple[ControlLayer, Any]]:
        """The document's controls whose layers still exist, with their nodes."""
        out = []
        for layer in self.current(document):
            node = find_node(document, layer.layer_id)
            if node is not None:
                out.append((layer, node))
        return out

    @contextlib.contextmanager
    def hidden(self, document, reading: bool = True):
        """Visible control layers hidden while the visible image is read (then shown again);
        nothing happens when the job reads no image. Yields the layers hidden: a read that
        must not see them happens inside (kritadoc.read_raw without `later`)."""
        shown = [node for layer, node in self._live(document) if layer.enabled and node.visible()] if reading else []
        for node in shown:
            node.setVisible(False)
        if shown:
            document.refreshProjection()  # synchronous: the projection without them
        try:
            yield shown
        finally:
            for node in shown:
                node.setVisible(True)
            if shown:
                document.refreshProjection()

    def units(self, document, area: Rect):
        """UI thread: a function the network thread calls for the request's units
        (the layers' pixels over the job's area), or None without controls."""
        live = [(layer, node) for layer, node in self._live(document) if layer.enabled]
        if not live:
            return None
        try:
            chosen = controls.resolve([layer for layer, _ in live], self.controlnets(), self.family())
        except ValueError as exc:
            raise UserError(str(exc)) from None
        model, depth = document.colorModel(), document.colorDepth()
        pixels = {}
        for layer, node in live:
            read = node.projectionPixelData if node.type() == "grouplayer" else node.pixelData
            pixels[layer.layer_id] = RawPixels(area, read(area.x, area.y, area.width, area.height), model, depth)

        def make():  # network thread: the RGBA conversions off Krita's UI thread
            return controls.control_units(chosen, lambda layer: pixels[layer.layer_id].to_rgba())

        return make

    def attach(self, request, make):
        """A request with the units, where the job can carry them."""
        if make is None or not controls.applies(request):
            return request
        return controls.with_controls(request, make())

    # -- the rows ------------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        document = kritadoc.active_document()
        live = self._live(document) if document is not None else []
        names = [(layer, node.name()) for layer, node in live]
        # Rebuilt when the list's shape changes, not on every value (a spin box keeps its focus).
        state = (kritadoc.document_key(document) if document is not None else "",
                 tuple((layer.layer_id, layer.kind, layer.model, name) for layer, name in names), self.family(),
                 tuple(self.controlnets()))
        if not force and state == self._shown:
            return
        self._shown = state
        for row in self.rows:
            self.rows_box.removeWidget(row)
            row.deleteLater()
        self.rows = []
        if document is None:
            self.fit()
            return
        every = self.current(document)
        for layer, name in names:
            row = ControlRow(self, every.index(layer), layer, name)
            self.rows_box.addWidget(row)
            self.rows.append(row)
        self.fit()

    def fit(self) -> None:
        """No controls: no height at all; else the extras ask for the rows and need the first."""
        self.setVisible(bool(self.rows))
        extras = getattr(self.docker, "extras", None)
        if extras is not None:
            extras.fit()

    def first_row_height(self) -> int:
        """The first row's first line (an open gear never raises the docker's minimum height)."""
        row = self.rows[0]
        margins = row.layout().contentsMargins()
        return row.top.sizeHint().height() + margins.top() + margins.bottom() + 2 * row.frameWidth()
