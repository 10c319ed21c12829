"""The PaintBridge docker: Krita and Qt on one side, the plain logic on the other.

Everything here runs on Krita's UI thread and never blocks on the network:
requests go to the worker thread, and a timer picks up its events.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Krita
from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtGui import QImage, QPixmap
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from protocol import RawImage

from . import colors
from .placement import Placement, plan
from .regions import Rect, work_area
from .requests import LAYER, VISIBLE, Settings, generate_request, inpaint_request, upscale_request
from .worker import Worker

DOCKER_ID = "paintbridge_docker"
SETTINGS_GROUP = "paintbridge"
DOCKERS: list[PaintBridgeDocker] = []  # live dockers, for the test scenario


class UserError(Exception):
    """Something the painter can fix; shown in the docker."""


@dataclass
class PendingJob:
    kind: str
    document: Any
    rect: Rect
    prompt: str
    mask: bytes | None = None
    scale_to: tuple[int, int] | None = None  # upscale: the document's new size
    job_id: str = ""
    started_layers: list[str] = field(default_factory=list)


# -- reading and writing pixels (the Krita adapter) ----------------------------------
def read_rgba(document, rect: Rect, source: str) -> RawImage:
    """The visible image (Krita's own rendering) or the active layer, as RGBA8."""
    model, depth = document.colorModel(), document.colorDepth()
    if source == LAYER:
        node = document.activeNode()
        if node is None:
            raise UserError("There is no active layer.")
        try:
            data = colors.to_rgba8(bytes(node.pixelData(rect.x, rect.y, rect.width, rect.height)), model, depth)
        except colors.UnsupportedColorSpace as exc:
            raise UserError(str(exc)) from None
    elif (model, depth) in colors.SUPPORTED:
        data = colors.to_rgba8(bytes(document.pixelData(rect.x, rect.y, rect.width, rect.height)), model, depth)
    else:
        # Any other colour space: Krita renders the projection to sRGB for us.
        image = document.projection(rect.x, rect.y, rect.width, rect.height).convertToFormat(QImage.Format_ARGB32)
        data = colors.argb32_to_rgba8(bytes(image.constBits().asstring(image.sizeInBytes())))
    return RawImage(rect.width, rect.height, 4, data)


def selection_of(document) -> Rect | None:
    selection = document.selection()
    if selection is None or selection.width() <= 0 or selection.height() <= 0:
        return None
    return Rect(selection.x(), selection.y(), selection.width(), selection.height())


def selection_mask(document, rect: Rect) -> bytes:
    """8-bit selection over `rect`: soft selections keep their softness."""
    return bytes(document.selection().pixelData(rect.x, rect.y, rect.width, rect.height))


def resized(rgba: bytes, width: int, height: int, to: Rect) -> bytes:
    if (width, height) == (to.width, to.height):
        return rgba
    image = QImage(rgba, width, height, width * 4, QImage.Format_RGBA8888)
    scaled = image.scaled(to.width, to.height, Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
    scaled = scaled.convertToFormat(QImage.Format_RGBA8888)
    return bytes(scaled.constBits().asstring(scaled.sizeInBytes()))


def add_layers(document, placement: Placement) -> list[str]:
    """New layers above the active one (or in a new group); nothing else changes."""
    model, depth = document.colorModel(), document.colorDepth()
    root = document.rootNode()
    active = document.activeNode()
    parent, above = root, active if active is not None and active.parentNode() is not None else None
    if above is not None and above.parentNode() is not None:
        parent = above.parentNode()
    if placement.group is not None:
        group = document.createGroupLayer(placement.group)
        parent.addChildNode(group, above)
        parent, above = group, None
    names = []
    for layer in placement.layers:
        node = document.createNode(layer.name, "paintlayer")
        r = layer.rect
        node.setPixelData(colors.from_rgba8(layer.rgba, model, depth), r.x, r.y, r.width, r.height)
        parent.addChildNode(node, above)
        above = node
        names.append(layer.name)
    document.refreshProjection()
    return names


# -- the docker --------------------------------------------------------------------------
class PaintBridgeDocker(DockWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("PaintBridge")
        self.settings = self._load_settings()
        self.jobs: dict[str, PendingJob] = {}
        self._tags = (f"t{i}" for i in itertools.count(1))
        self.last_seed: int | None = None
        self.capabilities = None
        self.log: list[str] = []  # what the docker showed, for tests and bug reports
        self._build_ui()
        client_id = Krita.instance().readSetting(SETTINGS_GROUP, "client_id", "") or uuid.uuid4().hex
        Krita.instance().writeSetting(SETTINGS_GROUP, "client_id", client_id)
        self.worker = Worker(self.settings.server, self.settings.token, client_id)
        self.worker.start()
        self.timer = QTimer(self)
        self.timer.timeout.connect(self._poll)
        self.timer.start(30)
        DOCKERS.append(self)

    def canvasChanged(self, canvas) -> None:
        pass

    # -- UI ----------------------------------------------------------------------
    def _build_ui(self) -> None:
        s = self.settings
        root = QWidget(self)
        layout = QVBoxLayout(root)
        form = QFormLayout()
        self.server_edit = QLineEdit(s.server)
        self.token_edit = QLineEdit(s.token)
        self.token_edit.setEchoMode(QLineEdit.Password)
        self.server_edit.editingFinished.connect(self._reconfigure)
        self.token_edit.editingFinished.connect(self._reconfigure)
        form.addRow("Server", self.server_edit)
        form.addRow("Token", self.token_edit)
        self.status = QLabel("Connecting…")
        self.status.setWordWrap(True)
        form.addRow(self.status)
        self.model_combo = QComboBox()
        self.sampler_combo = QComboBox()
        self.sampler_combo.addItem(s.sampler)
        form.addRow("Model", self.model_combo)
        form.addRow("Sampler", self.sampler_combo)
        self.prompt_edit = QPlainTextEdit(s.prompt)
        self.prompt_edit.setPlaceholderText("Prompt, e.g. a lighthouse at dusk, (oil painting:1.2)")
        self.prompt_edit.setMaximumHeight(70)
        self.negative_edit = QPlainTextEdit(s.negative_prompt)
        self.negative_edit.setPlaceholderText("Negative prompt")
        self.negative_edit.setMaximumHeight(45)
        form.addRow(self.prompt_edit)
        form.addRow(self.negative_edit)
        self.strength_slider = QSlider(Qt.Horizontal)
        self.strength_slider.setRange(1, 100)
        self.strength_slider.setValue(round(s.strength * 100))
        self.strength_label = QLabel()
        self.strength_slider.valueChanged.connect(self._strength_text)
        self._strength_text()
        strength_row = QHBoxLayout()
        strength_row.addWidget(self.strength_slider)
        strength_row.addWidget(self.strength_label)
        form.addRow("Strength", strength_row)
        self.steps_spin = _spin(1, 150, s.steps)
        self.cfg_spin = _dspin(0.0, 30.0, s.cfg_scale, 0.5)
        self.batch_spin = _spin(1, 16, s.batch)
        form.addRow("Steps", self.steps_spin)
        form.addRow("CFG scale", self.cfg_spin)
        form.addRow("Batch", self.batch_spin)
        seed_row = QHBoxLayout()
        self.seed_spin = _spin(0, 2**31 - 1, s.seed)
        self.random_check = QCheckBox("random")
        self.random_check.setChecked(s.random_seed)
        self.last_seed_label = QLabel("")
        seed_row.addWidget(self.seed_spin)
        seed_row.addWidget(self.random_check)
        seed_row.addWidget(self.last_seed_label)
        form.addRow("Seed", seed_row)
        self.source_combo = QComboBox()
        self.source_combo.addItem("Visible image", VISIBLE)
        self.source_combo.addItem("Active layer", LAYER)
        self.source_combo.setCurrentIndex(0 if s.source == VISIBLE else 1)
        form.addRow("Source", self.source_combo)
        layout.addLayout(form)

        buttons = QHBoxLayout()
        self.generate_button = QPushButton("Generate")
        self.inpaint_button = QPushButton("Inpaint selection")
        self.cancel_button = QPushButton("Cancel")
        self.generate_button.clicked.connect(lambda: self._guard(self.generate))
        self.inpaint_button.clicked.connect(lambda: self._guard(self.inpaint))
        self.cancel_button.clicked.connect(self.cancel)
        for b in (self.generate_button, self.inpaint_button, self.cancel_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        upscale_row = QHBoxLayout()
        self.factor_spin = _dspin(1.0, 8.0, s.upscale_factor, 0.5)
        self.upscaler_combo = QComboBox()
        self.denoise_spin = _dspin(0.0, 1.0, s.upscale_denoise, 0.05)
        self.denoise_spin.setToolTip("0 = upscaler only; above = tiled diffusion (MultiDiffusion) with this strength")
        self.upscale_button = QPushButton("Upscale document")
        self.upscale_button.clicked.connect(lambda: self._guard(self.upscale_document))
        for w in (QLabel("x"), self.factor_spin, self.upscaler_combo, QLabel("denoise"), self.denoise_spin):
            upscale_row.addWidget(w)
        layout.addLayout(upscale_row)
        layout.addWidget(self.upscale_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        layout.addWidget(self.progress)
        self.preview = QLabel()
        self.preview.setAlignment(Qt.AlignCenter)
        self.preview.setMinimumHeight(128)
        layout.addWidget(self.preview)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        layout.addStretch(1)
        self.setWidget(root)

    def _strength_text(self) -> None:
        value = self.strength_slider.value()
        self.strength_label.setText(f"{value}%" + (" (generate)" if value == 100 else " (refine)"))

    def _read_settings(self) -> Settings:
        s = self.settings
        s.server, s.token = self.server_edit.text().strip(), self.token_edit.text()
        s.model = self.model_combo.currentText()
        s.sampler = self.sampler_combo.currentText()
        s.prompt, s.negative_prompt = self.prompt_edit.toPlainText(), self.negative_edit.toPlainText()
        s.strength = self.strength_slider.value() / 100
        s.steps, s.cfg_scale, s.batch = self.steps_spin.value(), self.cfg_spin.value(), self.batch_spin.value()
        s.seed, s.random_seed = self.seed_spin.value(), self.random_check.isChecked()
        s.source = self.source_combo.currentData()
        s.upscale_factor, s.upscale_denoise = self.factor_spin.value(), self.denoise_spin.value()
        s.upscaler = self.upscaler_combo.currentText()
        self._save_settings(s)
        return s

    @staticmethod
    def _load_settings() -> Settings:
        s = Settings()
        app = Krita.instance()
        for name, value in vars(Settings()).items():
            stored = app.readSetting(SETTINGS_GROUP, name, "")
            if stored == "" or name == "token":
                continue
            try:
                setattr(s, name, type(value)(stored == "true" if isinstance(value, bool) else stored))
            except (TypeError, ValueError):
                pass
        return s

    @staticmethod
    def _save_settings(s: Settings) -> None:
        app = Krita.instance()
        for name, value in vars(s).items():
            if name != "token":  # never written to disk in clear
                app.writeSetting(SETTINGS_GROUP, name, ("true" if value else "false") if isinstance(value, bool) else str(value))

    def _reconfigure(self) -> None:
        s = self._read_settings()
        self.worker.configure(s.server, s.token)

    def show_message(self, text: str) -> None:
        self.message.setText(text)
        self.log.append(text)

    def _guard(self, action) -> None:
        try:
            action()
        except UserError as exc:
            self.show_message(str(exc))

    # -- actions -------------------------------------------------------------------
    def _document(self):
        document = Krita.instance().activeDocument()
        if document is None:
            raise UserError("Open or create a document first.")
        return document

    def _submit(self, request, job: PendingJob) -> str:
        tag = next(self._tags)
        self.jobs[tag] = job
        self.worker.submit(tag, request)
        self.progress.setValue(0)
        self.show_message(f"Sent {job.kind}…")
        return tag

    def generate(self) -> str:
        """Generate into a new layer (100%), or refine the current pixels (below)."""
        s, document = self._read_settings(), self._document()
        canvas = Rect(0, 0, document.width(), document.height())
        area = work_area(canvas, selection_of(document), s.context)
        image = read_rgba(document, area, s.source) if s.strength < 1.0 else None
        request = generate_request(s, area.width, area.height, image)
        return self._submit(request, PendingJob(request.kind, document, area, s.prompt))

    def inpaint(self) -> str:
        s, document = self._read_settings(), self._document()
        selection = selection_of(document)
        if selection is None:
            raise UserError("Select the area to repaint first.")
        area = selection.expand(s.context, Rect(0, 0, document.width(), document.height()))
        mask = selection_mask(document, area)
        request = inpaint_request(s, read_rgba(document, area, s.source), RawImage(area.width, area.height, 1, mask))
        return self._submit(request, PendingJob("inpaint", document, area, s.prompt, mask=mask))

    def upscale_document(self) -> str:
        s, document = self._read_settings(), self._document()
        canvas = Rect(0, 0, document.width(), document.height())
        request = upscale_request(s, read_rgba(document, canvas, VISIBLE))
        new_size = (round(canvas.width * s.upscale_factor), round(canvas.height * s.upscale_factor))
        return self._submit(request, PendingJob("upscale", document, canvas, s.prompt, scale_to=new_size))

    def cancel(self) -> None:
        for tag in list(self.jobs):
            self.worker.cancel(tag)

    # -- events from the worker -------------------------------------------------------
    def _poll(self) -> None:
        while not self.worker.events.empty():
            event = self.worker.events.get_nowait()
            try:
                self._on_event(event)
            except Exception as exc:  # never let one bad event stop the docker
                self.show_message(f"PaintBridge: {exc}")

    def _on_event(self, event) -> None:
        if event.kind == "state":
            state, text = event.data
            self.status.setText({"connected": f"Connected to {self.settings.server}"}.get(state, text or state.capitalize() + "…"))
            if text:
                self.log.append(text)
        elif event.kind == "welcome":
            self._on_welcome(event.data)
        elif event.kind == "accepted":
            job = self.jobs.get(event.tag)
            if job is not None:
                job.job_id = event.data[0]
                self.show_message(f"Job {job.job_id} queued" + (f" at position {event.data[1]}" if event.data[1] else ""))
        elif event.kind == "progress":
            self._on_progress(event.data)
        elif event.kind == "result":
            job = self.jobs.get(event.tag)
            if job is not None:
                try:
                    self._apply(job, event.data)
                finally:  # only now: Krita may run events while it scales the image
                    self.jobs.pop(event.tag, None)
        elif event.kind == "cancelled":
            self.jobs.pop(event.tag, None)
            self.progress.setValue(0)
            self.show_message("Cancelled.")
        elif event.kind == "failed":
            self.jobs.pop(event.tag, None)
            _code, text = event.data
            self.progress.setValue(0)
            self.show_message(f"Failed: {text}")

    def _on_welcome(self, welcome) -> None:
        caps = self.capabilities = welcome.capabilities
        wanted_model, wanted_sampler = self.settings.model, self.settings.sampler
        self.model_combo.clear()
        self.model_combo.addItems([m.name for m in caps.models if m.kind == "checkpoint"])
        index = self.model_combo.findText(wanted_model or caps.default_model)
        self.model_combo.setCurrentIndex(max(0, index))
        self.sampler_combo.clear()
        self.sampler_combo.addItems(caps.samplers)
        self.sampler_combo.setCurrentIndex(max(0, self.sampler_combo.findText(wanted_sampler)))
        self.upscaler_combo.clear()
        self.upscaler_combo.addItems(caps.upscalers)

    def _on_progress(self, progress) -> None:
        total = max(progress.total, 1)
        value = progress.step / total
        if progress.tiles:
            value = (progress.step - 1 + progress.tile / progress.tiles) / total
        self.progress.setValue(round(100 * value))
        if progress.preview is not None:
            p = progress.preview
            image = QImage(p.data, p.width, p.height, p.width * 4, QImage.Format_RGBA8888).copy()
            self.preview.setPixmap(QPixmap.fromImage(image).scaled(192, 192, Qt.KeepAspectRatio, Qt.SmoothTransformation))

    def _apply(self, job: PendingJob, result) -> None:
        document = job.document
        rect = job.rect
        if job.scale_to is not None:
            # Upscale: Krita scales the painter's layers (as Image > Scale would) ...
            width, height = job.scale_to
            resolution = int(document.resolution())
            document.scaleImage(width, height, resolution, resolution, "Bicubic")
            document.waitForDone()
            rect = Rect(0, 0, width, height)
        images = [resized(im.data, im.width, im.height, rect) for im in result.images]
        placement = plan(job.kind, job.prompt, result.seeds, images, rect, job.mask)
        if job.scale_to is not None:
            layers = [n for n in document.topLevelNodes() if not n.type().endswith("mask")]
            if layers:
                document.setActiveNode(layers[-1])  # ... and the result goes on top
        names = add_layers(document, placement)
        self.last_seed = result.seeds[0] if result.seeds else None
        self.last_seed_label.setText(f"last: {self.last_seed}")
        self.progress.setValue(100)
        self.show_message(f"Added {len(names)} layer(s): {names[0]}")
        job.started_layers = names


def _spin(lo: int, hi: int, value: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(lo, hi)
    spin.setValue(value)
    return spin


def _dspin(lo: float, hi: float, value: float, step: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(lo, hi)
    spin.setSingleStep(step)
    spin.setValue(value)
    return spin


def register() -> None:
    app = Krita.instance()
    app.addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, PaintBridgeDocker))
    scenario = os.environ.get("PAINTBRIDGE_SCENARIO")
    if scenario:
        # Test hook: a scenario module drives the plugin's own code paths.
        spec = importlib.util.spec_from_file_location("paintbridge_scenario", scenario)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        QTimer.singleShot(1000, module.run)
