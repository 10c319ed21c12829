"""The PaintBridge docker: Krita and Qt on one side, the plain logic on the other.

Everything here runs on Krita's UI thread and never blocks on the network:
requests go to the worker thread, and a timer picks up its events. Pixels move
through Krita's and Qt's C++ (kritadoc.py); the history's PNGs are written on a
background thread (pngio.py).

Layout, for a 1280x800 screen shared with Krita's default dockers, where any pixel of
minimum height the docker adds makes Krita's window taller than the screen (fit.py): the
prompt, the strength, Generate/Cancel, the progress bar and the status line are always
at the top; the rows whose number varies (SUPIR's options, control layers) share one
scroll area that needs one row (extras.py); the Regions/Options/Server tabs need no
height at all (shown below when they fit, else a drawer: drawer.py). The queue and the
results live in a second docker, "PaintBridge History" (history_docker.py), which needs height.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Krita
from PyQt5.QtCore import Qt, QTimer
from PyQt5.QtGui import QIcon, QImage, QPixmap
from PyQt5.QtWidgets import (
    QApplication,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QStackedWidget,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from protocol import RawImage

from . import control_ui, jobqueue, kritadoc, pngio, prefs, restore_ui
from .autosave import AutoSave
from .connection import CONNECTED
from .drawer import Drawer, TabsHolder
from .extras import Extras
from .history import Entry, History
from .history_docker import HISTORY_DOCKER_ID, HistoryPanel, PaintBridgeHistoryDocker, history_docker, link
from .kritadoc import UserError
from .live_ui import LivePanel
from .presets_ui import PresetEditor
from .region_layers import with_regions
from .region_ui import RegionsTab
from .regions import SIDES, Rect, expand, strip_mask, work_area
from .requests import LAYER, SERVER_MASKS, VISIBLE, Settings, generate_request, plan_sizes, upscale_request
from .worker import Worker

DOCKER_ID = "paintbridge_docker"
DOCKERS: list[PaintBridgeDocker] = []  # live dockers, for the test scenario
MODE_NAMES = {"txt2img": "generate", "img2img": "refine", "inpaint": "inpaint", "upscale": "upscale"}


@dataclass
class PendingJob:
    kind: str
    mode: str  # generate | refine | inpaint | expand | upscale
    document: Any
    rect: Rect
    prompt: str
    settings: dict
    mask: bytes | None = None
    scale_to: tuple[int, int] | None = None  # upscale: the document's new size
    first_pass: tuple[int, int] | None = None
    job_id: str = ""
    color: tuple[str, str] = ("RGBA", "U8")  # the document's model and depth, for layer pixels
    timings: dict = field(default_factory=dict)  # UI-thread milliseconds, per phase


class Background(threading.Thread):
    """Image-sized work off Krita's UI thread: QImage conversions (PyQt releases the GIL
    for them) and PNG compression (zlib releases it). Results come back through `done`,
    which the docker's timer drains on the UI thread."""

    def __init__(self) -> None:
        super().__init__(name="paintbridge-images", daemon=True)
        self.jobs: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        self.busy = 0

    def run(self) -> None:
        while True:
            work, then = self.jobs.get()
            try:
                result, error = work(), None
            except Exception as exc:  # reported on the UI thread
                result, error = None, exc
            self.done.put((then, result, error))

    def submit(self, work, then) -> None:
        self.busy += 1
        self.jobs.put((work, then))


# -- the docker --------------------------------------------------------------------------
class PaintBridgeDocker(DockWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("PaintBridge")
        app = Krita.instance()
        self.store = prefs.Store(app.readSetting, app.writeSetting)
        self.settings = Settings()
        prefs.load(self.store, self.settings)
        self.jobs: dict[str, PendingJob] = {}
        self.queue = jobqueue.JobQueue()
        self.histories: dict[str, History] = {}
        self._pixels: dict[str, QImage] = {}  # entry id -> layer-ready image, this session
        self._prefilled: dict[str, Any] = {}  # entry id -> its preview layer, filled off the UI thread
        self._dirty: set[str] = set()  # documents whose history annotation needs writing
        self._documents: dict[str, Any] = {}
        self._tags = (f"t{i}" for i in itertools.count(1))
        self.last_seed: int | None = None
        self.capabilities = None
        self.connection = ("disconnected", "")
        self.log: list[str] = []  # what the docker showed, for tests and bug reports
        self.timer_gaps: list[float] = []  # ms between UI timer ticks (a stalled UI shows here)
        self._last_tick = time.perf_counter()
        self.ticks = 0
        self.presets_folder = prefs.presets_dir(_resource_root())
        self.families = prefs.FamilyMemory(self.store)
        self._current_model = self.settings.model
        self.background = Background()
        self.background.start()
        self._build_ui()
        link(self)
        client_id = self.store.get("client_id", "") or uuid.uuid4().hex
        self.store.set("client_id", client_id)
        self.worker = Worker(self.settings.server, self.settings.token, client_id)
        self.worker.start()
        self.timer = QTimer(self)
        self.timer.timeout.connect(self._poll)
        self.timer.start(30)
        app.notifier().applicationClosing.connect(self._save_on_close)
        # Saved as they change (autosave.py says why quitting is too late); the main window's
        # close flushes the last change.
        self.autosave = AutoSave(self, self._read_settings, self._setting_widgets())
        DOCKERS.append(self)

    def _setting_widgets(self) -> list:
        """The widgets whose values _read_settings saves (the token only if remembered)."""
        return [self.server_edit, self.token_edit, self.remember_check, self.model_combo, self.sampler_combo,
                self.prompt_edit, self.negative_edit, self.strength_slider, self.steps_spin, self.cfg_spin,
                self.batch_spin, self.seed_spin, self.random_check, self.source_combo, self.factor_spin,
                self.denoise_spin, self.upscaler_combo, self.resolution_combo, self.hires_spin, self.grow_spin,
                self.feather_spin, self.inpaint_combo, self.expand_side, self.expand_spin, self.preset_combo,
                self.live.strength_slider, *self.mode_buttons.values(), self.restore.check, self.restore.slider,
                self.restore.steps_spin, self.restore.model_combo, self.restore.checkpoint_combo]

    def canvasChanged(self, canvas) -> None:
        self._refresh_history()
        self._update_labels()

    # -- UI ----------------------------------------------------------------------------
    def _build_ui(self) -> None:
        s = self.settings
        root = QWidget(self)
        layout = QVBoxLayout(root)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(3)

        modes = QHBoxLayout()
        self.mode_group = QButtonGroup(self)
        self.mode_buttons = {}
        for index, (key, text, tip) in enumerate((
            ("generate", "Generate", "Generate, refine or inpaint: the strength and the selection decide"),
            ("upscale", "Upscale", "Make the whole image bigger"),
            ("live", "Live", "Live painting: the picture follows your strokes; Apply keeps it"),
        )):
            button = QToolButton()
            button.setText(text)
            button.setToolTip(tip)
            button.setCheckable(True)
            button.setAutoRaise(True)
            self.mode_group.addButton(button, index)
            self.mode_buttons[key] = button
            modes.addWidget(button)
        modes.addStretch(1)
        self.controls = control_ui.ControlsPanel(self)  # control layers (control_ui.py): menu here, rows below
        modes.addWidget(self.controls.menu_button)
        self.options_button = QToolButton()  # the tabs below, or in a drawer when the docker is short (drawer.py)
        self.options_button.setText("Options")
        self.options_button.setAutoRaise(True)
        self.options_button.setToolTip("Regions, options (model, sampler, steps, CFG, seed, hires, selection...) "
                                       "and the server")
        self.options_button.clicked.connect(lambda: self.open_options())
        modes.addWidget(self.options_button)
        self.mode_buttons["upscale" if s.mode == "upscale" else "generate"].setChecked(True)
        self.mode_group.buttonClicked.connect(lambda _b: self._mode_changed())
        layout.addLayout(modes)

        self.prompt_edit = QPlainTextEdit(s.prompt)
        self.prompt_edit.setPlaceholderText("Prompt, e.g. a lighthouse at dusk, (oil painting:1.2)")
        # Three lines where the docker has room, two where it has not (a control row or SUPIR's options
        # need the height at 1280x800); the Options drawer has the rest.
        lines = self.prompt_edit.fontMetrics().lineSpacing()
        frame = 2 * (self.prompt_edit.frameWidth() + round(self.prompt_edit.document().documentMargin()))
        self.prompt_edit.setMinimumHeight(2 * lines + frame)
        self.prompt_edit.setMaximumHeight(max(54, 3 * lines + frame))
        layout.addWidget(self.prompt_edit)

        # One row whose content changes with the mode; both pages have the same height.
        self.mode_stack = QStackedWidget()
        strength_page = QWidget()
        row = QHBoxLayout(strength_page)
        row.setContentsMargins(0, 0, 0, 0)
        self.strength_slider = QSlider(Qt.Horizontal)
        self.strength_slider.setRange(1, 100)
        self.strength_slider.setValue(round(s.strength * 100))
        self.strength_slider.setToolTip("100%: paint new content. Below: keep that much less of the current pixels")
        self.strength_label = QLabel()
        self.strength_label.setFixedWidth(self.strength_label.fontMetrics().horizontalAdvance("Refine selection 100%") + 6)
        self.strength_slider.valueChanged.connect(self._update_labels)
        row.addWidget(self.strength_slider, 1)
        row.addWidget(self.strength_label)
        upscale_page = QWidget()
        row = QHBoxLayout(upscale_page)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Upscale by"))
        self.factor_spin = _dspin(1.0, 8.0, s.upscale_factor, 0.5)
        self.factor_spin.setSuffix("×")
        self.factor_spin.setToolTip("The image's new size: this many times the current one")
        self.upscaler_combo = QComboBox()
        self.upscaler_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.upscaler_combo.setMinimumContentsLength(8)
        self.upscaler_combo.currentIndexChanged.connect(self._upscaler_tip)
        row.addWidget(self.factor_spin)
        row.addWidget(self.upscaler_combo, 1)
        self.mode_stack.addWidget(strength_page)
        self.mode_stack.addWidget(upscale_page)
        self.live = LivePanel(self)  # live_ui.py: its row here, its picture below the status line
        self.mode_stack.addWidget(self.live.strength_page)
        self.mode_stack.setFixedHeight(max(strength_page.sizeHint().height(), upscale_page.sizeHint().height()))
        layout.addWidget(self.mode_stack)
        self.restore = restore_ui.RestorePanel(self)  # Upscale: "Restore (SUPIR)" (restore_ui.py)
        # SUPIR's options and the control rows: scrolled, one row's height asked (extras.py).
        self.extras = Extras(self, [self.restore, self.controls])
        layout.addWidget(self.extras)

        buttons = QHBoxLayout()
        self.generate_button = QPushButton("Generate")
        self.generate_button.setDefault(True)
        self.generate_button.clicked.connect(lambda: self._guard(self.run_mode))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Cancel the running job (the queue tab cancels others, or all)")
        self.cancel_button.clicked.connect(self.cancel_current)
        buttons.addWidget(self.generate_button, 2)
        buttons.addWidget(self.cancel_button, 1)
        layout.addLayout(buttons)

        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setTextVisible(True)
        self.progress.setFormat("Idle")
        self.progress.setFixedHeight(self.progress.sizeHint().height())
        layout.addWidget(self.progress)
        self.status = QLabel("Connecting…")
        self.message = QLabel("")
        status_row = QHBoxLayout()
        status_row.setSpacing(2)
        for label in (self.status, self.message):
            label.setWordWrap(False)
            label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)  # long text never widens the docker
        status_row.addWidget(self.status, 1)
        self.history_button = QToolButton()
        self.history_button.setText("History")
        self.history_button.setAutoRaise(True)
        self.history_button.setToolTip("Show the PaintBridge History docker: the queue and the results")
        self.history_button.clicked.connect(self.show_history)
        status_row.addWidget(self.history_button)
        layout.addLayout(status_row)
        layout.addWidget(self.message)
        self.history_panel = HistoryPanel(self)  # hosted by the PaintBridge History docker

        layout.addWidget(self.live.panel, 4)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.regions_ui = RegionsTab(self)  # region_ui.py: layers with a prompt of their own
        self.tabs.addTab(_scrolled(self.regions_ui), "Regions")
        self.tabs.addTab(_scrolled(self._options_tab()), "Options")
        self.tabs.addTab(_scrolled(self._connection_tab()), "Server")
        self.tabs_holder = TabsHolder(self.tabs)  # no minimum height: shown inline when they fit (drawer.py)
        self.drawer = Drawer(self)  # else in a popup over the docker
        layout.addWidget(self.tabs_holder, 1)
        root.setMinimumHeight(0)
        self.setWidget(root)
        self._mode_changed()

    def open_options(self, index: int = -1) -> None:
        """Show the Regions/Options/Server tabs: inline if the docker has room, else in the drawer."""
        if index >= 0:
            self.tabs.setCurrentIndex(index)
        if self.drawer.needed():
            self.drawer.open()

    def show_history(self) -> None:
        """Show and raise the PaintBridge History docker (Settings > Dockers has it too)."""
        docker = history_docker(self)
        if docker is None:
            self.show_message("Open Settings ▸ Dockers ▸ PaintBridge History")
            return
        docker.show()
        docker.raise_()

    def _options_tab(self) -> QWidget:
        s = self.settings
        page = QWidget()
        form = QFormLayout(page)
        form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
        self.negative_edit = QPlainTextEdit(s.negative_prompt)
        self.negative_edit.setPlaceholderText("Negative prompt")
        self.negative_edit.setFixedHeight(44)
        form.addRow(self.negative_edit)
        self.preset_editor = PresetEditor(self)  # presets_ui.py
        self.preset_combo, self.preset_name = self.preset_editor.combo, self.preset_editor.name
        form.addRow("Style", self.preset_editor)
        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.sampler_combo = QComboBox()
        self.sampler_combo.addItem(s.sampler)
        form.addRow("Model", self.model_combo)
        form.addRow("Sampler", self.sampler_combo)
        lora_row = QHBoxLayout()
        self.lora_combo = QComboBox()
        self.lora_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        add_lora = QPushButton("Add")
        add_lora.setToolTip("Insert <lora:name:0.8> into the prompt")
        add_lora.clicked.connect(self.add_lora)
        lora_row.addWidget(self.lora_combo, 1)
        lora_row.addWidget(add_lora)
        form.addRow("LoRA", lora_row)
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
        seed_row.addWidget(self.seed_spin, 1)
        seed_row.addWidget(self.random_check)
        form.addRow("Seed", seed_row)
        self.last_seed_label = QLabel("")
        form.addRow("", self.last_seed_label)
        self.resolution_combo = QComboBox()
        self.resolution_combo.addItem("Automatic (native size + hires fix)", "auto")
        self.resolution_combo.addItem("Exact size", "exact")
        self.resolution_combo.setCurrentIndex(0 if s.resolution == "auto" else 1)
        self.resolution_combo.currentIndexChanged.connect(self._update_labels)
        form.addRow("Resolution", self.resolution_combo)
        self.sizes_label = QLabel("")
        self.sizes_label.setToolTip("Size the model paints first → size of the result")
        form.addRow("Sizes", self.sizes_label)
        self.hires_spin = _dspin(0.0, 1.0, s.hires_denoise, 0.05)
        self.hires_spin.setToolTip("Hires fix denoising strength (WebUI default range 0.4-0.5)")
        form.addRow("Hires denoise", self.hires_spin)
        self.source_combo = QComboBox()
        self.source_combo.addItem("Visible image", VISIBLE)
        self.source_combo.addItem("Active layer", LAYER)
        self.source_combo.setCurrentIndex(0 if s.source == VISIBLE else 1)
        form.addRow("Source", self.source_combo)
        self.grow_spin = _spin(0, 256, s.mask_grow)
        self.grow_spin.setSuffix(" px")
        self.feather_spin = _spin(0, 256, s.mask_feather)
        self.feather_spin.setSuffix(" px")
        self.feather_spin.setToolTip("Soft edge of the repainted area: the new layer fades into the painting")
        form.addRow("Selection grow", self.grow_spin)
        form.addRow("Selection feather", self.feather_spin)
        self.inpaint_combo = QComboBox()
        for key, text in (("fill", "Fill (replace the content)"), ("add", "Add content"), ("remove", "Remove content")):
            self.inpaint_combo.addItem(text, key)
        self.inpaint_combo.setCurrentIndex(max(0, self.inpaint_combo.findData(s.inpaint_mode)))
        self.inpaint_combo.currentIndexChanged.connect(self._update_labels)
        form.addRow("Inpaint", self.inpaint_combo)
        expand_row = QHBoxLayout()
        self.expand_spin = _spin(8, 2048, s.expand_pixels)
        self.expand_spin.setSuffix(" px")
        self.expand_side = QComboBox()
        self.expand_side.addItems(SIDES)
        self.expand_side.setCurrentIndex(max(0, self.expand_side.findText(s.expand_side)))
        self.expand_button = QPushButton("Expand")
        self.expand_button.setToolTip("Grow the canvas on that side and paint the new strip")
        self.expand_button.clicked.connect(lambda: self._guard(self.expand_canvas))
        expand_row.addWidget(self.expand_spin)
        expand_row.addWidget(self.expand_side)
        expand_row.addWidget(self.expand_button)
        form.addRow("Expand canvas", expand_row)
        self.denoise_spin = _dspin(0.0, 1.0, s.upscale_denoise, 0.05)
        self.denoise_spin.setToolTip("Upscale: 0 = the upscaler only; above = tiled diffusion with this strength")
        form.addRow("Upscale detail", self.denoise_spin)
        return page

    def _connection_tab(self) -> QWidget:
        s = self.settings
        page = QWidget()
        form = QFormLayout(page)
        self.server_edit = QLineEdit(s.server)
        self.token_edit = QLineEdit(s.token)
        self.token_edit.setEchoMode(QLineEdit.Password)
        self.remember_check = QCheckBox("Remember the token")
        self.remember_check.setChecked(s.remember_token)
        note = QLabel(prefs.TOKEN_NOTE)
        note.setWordWrap(True)
        self.server_edit.editingFinished.connect(self._reconfigure)
        self.token_edit.editingFinished.connect(self._reconfigure)
        self.remember_check.toggled.connect(lambda _v: self._read_settings())
        form.addRow("Server", self.server_edit)
        form.addRow("Token", self.token_edit)
        form.addRow(self.remember_check)
        form.addRow(note)
        return page

    # -- labels that follow the state -------------------------------------------------------
    def _mode(self) -> str:
        return next((k for k in ("upscale", "live") if self.mode_buttons[k].isChecked()), "generate")

    def _mode_changed(self) -> None:
        mode = self._mode()
        self.mode_stack.setCurrentIndex({"upscale": 1, "live": 2}.get(mode, 0))
        # What this mode hides goes first, what it shows last: a widget shown while the ones it
        # replaces are still there raises the docker's minimum height for a moment, and Qt grows
        # Krita's window to that at once (inside setVisible) and never shrinks it back. Live's
        # picture shown before the tabs, the progress bar and the message were hidden made the
        # window 76 px taller than a 1280x800 screen.
        self.restore.update_visibility()  # inside the extras: no height of its own
        if mode == "live":
            self.extras.fit()  # hidden: live jobs send neither controls nor SUPIR
            self.live.set_active(True)
        else:
            self.live.set_active(False)
            self.extras.fit()
        self._update_labels()

    def _has_selection(self) -> bool:
        document = kritadoc.active_document()
        return document is not None and kritadoc.selection_rect(document) is not None

    def _update_labels(self) -> None:
        strength = self.strength_slider.value() / 100
        selection = self._has_selection()
        mode = self._mode()
        label = prefs.strength_label(strength, selection)
        if selection and strength >= 1.0:
            label = {"fill": "Fill selection", "add": "Add to selection", "remove": "Remove in selection"}.get(
                self.inpaint_combo.currentData() or "fill", label)
        self.strength_label.setText(label)
        self.generate_button.setText(prefs.button_label(strength, selection, mode))
        document = kritadoc.active_document()
        if document is not None:
            area = work_area(Rect(0, 0, document.width(), document.height()), kritadoc.selection_rect(document), 0)
            resolution = self.resolution_combo.currentData() or "auto"
            self.sizes_label.setText(plan_sizes(area.width, area.height, self._native(), resolution).text())

    def _upscaler_tip(self) -> None:
        self.upscaler_combo.setToolTip(self.upscaler_combo.currentText())

    def _native(self) -> int:
        info = self._model_info(self.model_combo.currentText())
        return info.native_size if info is not None and info.native_size else 512

    def _model_info(self, name: str):
        if self.capabilities is None:
            return None
        return next((m for m in self.capabilities.models if m.name == name), None)

    def _model_changed(self) -> None:
        """Another model: the sampler, steps and CFG last used with its family come back; the
        ones set for the family being left are kept for it (prefs.FamilyMemory)."""
        info = self._model_info(self.model_combo.currentText())
        current = {"model": self._current_model, "sampler": self.sampler_combo.currentText(),
                   "steps": self.steps_spin.value(), "cfg_scale": self.cfg_spin.value()}
        remembered = self.families.switch(info.family if info is not None else "", current)
        self._current_model = self.model_combo.currentText()
        self._load_into_ui(remembered)
        self._update_labels()

    def _save_on_close(self) -> None:
        """Krita is closing: the settings as they are now are the next session's."""
        try:
            self._read_settings()
        except Exception:  # never block Krita's exit
            pass

    # -- settings -------------------------------------------------------------------------------
    def _read_settings(self) -> Settings:
        s = self.settings
        s.server, s.token = self.server_edit.text().strip(), self.token_edit.text()
        s.remember_token = self.remember_check.isChecked()
        s.model = prefs.listed_choice(self.model_combo.currentText(), self.model_combo.count(), s.model)
        s.sampler = prefs.listed_choice(self.sampler_combo.currentText(), self.sampler_combo.count(), s.sampler)
        s.prompt, s.negative_prompt = self.prompt_edit.toPlainText(), self.negative_edit.toPlainText()
        s.strength = self.strength_slider.value() / 100
        s.steps, s.cfg_scale, s.batch = self.steps_spin.value(), self.cfg_spin.value(), self.batch_spin.value()
        s.seed, s.random_seed = self.seed_spin.value(), self.random_check.isChecked()
        s.source = self.source_combo.currentData()
        s.upscale_factor, s.upscale_denoise = self.factor_spin.value(), self.denoise_spin.value()
        s.upscaler = prefs.listed_choice(self.upscaler_combo.currentText(), self.upscaler_combo.count(), s.upscaler)
        s.preset = prefs.listed_choice(self.preset_combo.currentText(), self.preset_combo.count(), s.preset)
        s.live_strength = self.live.strength
        s.resolution = self.resolution_combo.currentData()
        s.hires_denoise = self.hires_spin.value()
        s.mask_grow, s.mask_feather = self.grow_spin.value(), self.feather_spin.value()
        s.inpaint_mode = self.inpaint_combo.currentData()
        s.expand_side, s.expand_pixels = self.expand_side.currentText(), self.expand_spin.value()
        s.mode = self._mode()
        prefs.save(self.store, s, s.remember_token)
        info = self._model_info(s.model)
        if info is not None:
            prefs.remember_family(self.store, info.family, s)
        return s

    def _load_into_ui(self, values: dict) -> None:
        """Reuse settings: a result's (or a preset's) values back into the widgets."""
        widgets = {
            "prompt": lambda v: self.prompt_edit.setPlainText(v),
            "negative_prompt": lambda v: self.negative_edit.setPlainText(v),
            "steps": lambda v: self.steps_spin.setValue(int(v)),
            "cfg_scale": lambda v: self.cfg_spin.setValue(float(v)),
            "seed": lambda v: self.seed_spin.setValue(int(v)),
            "random_seed": lambda v: self.random_check.setChecked(bool(v)),
            "strength": lambda v: self.strength_slider.setValue(round(float(v) * 100)),
            "batch": lambda v: self.batch_spin.setValue(int(v)),
            "model": lambda v: v and self.model_combo.findText(v) >= 0 and self.model_combo.setCurrentIndex(self.model_combo.findText(v)),
            "sampler": lambda v: v and self.sampler_combo.findText(v) >= 0 and self.sampler_combo.setCurrentIndex(self.sampler_combo.findText(v)),
        }
        for key, value in values.items():
            if key in widgets and value is not None:
                widgets[key](value)

    def _reconfigure(self) -> None:
        s = self._read_settings()
        self.worker.configure(s.server, s.token)

    def show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setToolTip(text)
        self.log.append(text)

    def _guard(self, action) -> None:
        try:
            action()
        except UserError as exc:
            self.show_message(str(exc))

    # -- actions ------------------------------------------------------------------------------
    def _document(self):
        document = kritadoc.active_document()
        if document is None:
            raise UserError("Open or create a document first.")
        return document

    def _submit(self, request, job: PendingJob) -> str:
        tag = next(self._tags)
        job.color = (job.document.colorModel(), job.document.colorDepth())
        self.jobs[tag] = job
        t0 = time.perf_counter()
        self.worker.submit(tag, request)
        job.timings["submit_ms"] = (time.perf_counter() - t0) * 1000
        self.queue.add(tag, job.mode, job.prompt)
        self._refresh_queue()
        self.show_message(f"Sent: {job.mode}")
        return tag

    def run_mode(self) -> str:
        if self._mode() == "live":
            return self.live.apply()
        return self.upscale_document() if self._mode() == "upscale" else self.generate()

    def generate(self) -> str:
        """Generate (100%) or refine (below); with a selection only the selection, softly."""
        s, document = self._read_settings(), self._document()
        t0 = time.perf_counter()
        canvas = Rect(0, 0, document.width(), document.height())
        selection = kritadoc.selection_rect(document)
        mask = None
        if selection is not None:
            margin = s.mask_grow + s.mask_feather + s.context
            area = selection.expand(margin, canvas).snap8(canvas)
            mask = kritadoc.soft_mask(document, area, s.mask_grow, s.mask_feather)
        else:
            area = canvas
        with self.controls.hidden(document, s.strength < 1.0 or mask is not None) as hidden:
            # Read on the network thread, a strip at a time, unless control layers are hidden for it
            raw = (kritadoc.read_raw(document, area, s.source, later=not hidden)
                   if (s.strength < 1.0 or mask is not None) else None)
        units = self.controls.units(document, area)
        read_ms = (time.perf_counter() - t0) * 1000
        native, settings = self._native(), Settings(**asdict(s))
        soft = RawImage(area.width, area.height, 1, mask) if mask is not None else None
        region_layers = self.regions_ui.layers(document, area)

        def build():  # on the network thread: the RGBA conversion stays off the UI thread
            image = raw.to_rgba() if raw is not None else None
            request = self.controls.attach(generate_request(settings, area.width, area.height, image, soft,
                                                            native=native), units)
            return with_regions(request, region_layers, area.width, area.height)

        mode = "inpaint" if mask is not None and s.strength >= 1.0 else "refine" if s.strength < 1.0 else "generate"
        kind = "inpaint" if mask is not None else "img2img" if s.strength < 1.0 else "txt2img"
        sizes = plan_sizes(area.width, area.height, native, s.resolution)
        job = PendingJob(kind, mode, document, area, s.prompt, asdict(s), mask=mask,
                         first_pass=sizes.first if kind == "txt2img" else None)
        job.timings["read_ms"] = read_ms
        return self._submit(build, job)

    def expand_canvas(self, side: str = "", pixels: int = 0) -> str:
        """Grow the canvas on one side, then outpaint the new strip into a new layer."""
        s, document = self._read_settings(), self._document()
        side, pixels = side or s.expand_side, pixels or s.expand_pixels
        plan = expand(Rect(0, 0, document.width(), document.height()), side, pixels)
        document.resizeImage(*plan.resize_args)
        document.waitForDone()
        document.refreshProjection()
        mask = strip_mask(plan.area, plan.strip, min(s.mask_feather, 16))
        raw = kritadoc.read_raw(document, plan.area, VISIBLE, later=True)
        settings = Settings(**{**asdict(s), "strength": 1.0})

        def build():
            return generate_request(settings, plan.area.width, plan.area.height, raw.to_rgba(),
                                    RawImage(plan.area.width, plan.area.height, 1, mask), inpaint_mode="expand")

        return self._submit(build, PendingJob("inpaint", "expand", document, plan.area, s.prompt, asdict(s), mask=mask))

    def upscale_document(self) -> str:
        s, document = self._read_settings(), self._document()
        canvas = Rect(0, 0, document.width(), document.height())
        t0 = time.perf_counter()
        with self.controls.hidden(document) as hidden:
            raw = kritadoc.read_raw(document, canvas, VISIBLE, later=not hidden)
        read_ms = (time.perf_counter() - t0) * 1000
        settings = Settings(**asdict(s))
        supir = self.restore.active()
        if supir:
            self.restore.validate(settings)
        units = None if supir else self.controls.units(document, canvas)  # SUPIR's adaptor is its control

        def request():
            if supir:
                return self.restore.request(settings, raw.to_rgba())
            return self.controls.attach(upscale_request(settings, raw.to_rgba()), units)

        new_size = (round(canvas.width * s.upscale_factor), round(canvas.height * s.upscale_factor))
        job = PendingJob("upscale", "upscale", document, canvas, s.prompt, asdict(s), scale_to=new_size)
        job.timings["read_ms"] = read_ms
        return self._submit(request, job)

    def cancel(self, tag: str) -> None:
        if self.queue.request_cancel(tag):
            if self.connection[0] != CONNECTED:
                # The server cannot hear us now: the job is cancelled here, its result ignored.
                self.worker.cancel(tag)
                self.jobs.pop(tag, None)
                self.queue.finish(tag, jobqueue.CANCELLED)
            else:
                self.worker.cancel(tag)
        self._refresh_queue()

    def cancel_current(self) -> None:
        active = self.queue.active()
        running = [r for r in active if r.state == jobqueue.RUNNING]
        target = running[0] if running else (active[0] if active else None)
        if target is not None:
            self.cancel(target.tag)

    def cancel_selected(self) -> None:
        item = self.queue_list.currentItem()
        if item is not None:
            self.cancel(item.data(Qt.UserRole))

    def cancel_all(self) -> None:
        for row in self.queue.active():
            self.cancel(row.tag)

    def _clear_finished(self) -> None:
        self.queue.clear_done()
        self._refresh_queue()

    # -- presets and LoRA ---------------------------------------------------------------------------
    def _load_presets(self) -> None:
        self.preset_editor.reload(self.preset_combo.currentText() or self.settings.preset)

    def use_preset(self) -> None:
        self.preset_editor.use()

    def save_preset(self) -> None:
        self.preset_editor.save()

    def add_lora(self) -> None:
        name = self.lora_combo.currentText()
        if name:
            self.prompt_edit.setPlainText(prefs.insert_lora(self.prompt_edit.toPlainText(), name))

    # -- events from the worker ---------------------------------------------------------------------
    def _poll(self) -> None:
        now = time.perf_counter()
        self.timer_gaps.append((now - self._last_tick) * 1000)
        self.ticks += 1
        del self.timer_gaps[:-2000]
        self._last_tick = now
        changed = False
        while not self.worker.events.empty():
            event = self.worker.events.get_nowait()
            changed = True
            try:
                self._on_event(event)
            except Exception as exc:
                self.show_message(f"PaintBridge: {exc}")
        self._drain_background()
        if self.ticks % 16 == 0:  # ~0.5 s: Krita signals no selection change; keep the labels true
            window = Krita.instance().activeWindow()
            self.autosave.watch_window(window.qwindow() if window is not None else None)
            try:
                self._update_labels()
            except Exception:  # a document closing under us: next tick
                pass
        if self._dirty and not self.background.busy:
            self._save_histories()
        if changed:
            self._refresh_queue()

    def _on_event(self, event) -> None:
        if self.live.on_event(event):  # live jobs are the live panel's
            return
        if event.kind == "state":
            state, text = event.data
            self.connection = (state, text or "")
            if text:
                self.log.append(text)
        elif event.kind == "welcome":
            self._on_welcome(event.data)
        elif event.kind == "accepted":
            job = self.jobs.get(event.tag)
            if job is not None:
                job.job_id = event.data[0]
            self.queue.accepted(event.tag, event.data[0], event.data[1])
        elif event.kind == "progress":
            self._on_progress(event.tag, event.data)
        elif event.kind == "result":
            job = self.jobs.get(event.tag)
            if job is not None:
                try:
                    self._on_result(event.tag, job, event.data)
                finally:  # only now: Krita may run events while it scales the image
                    self.jobs.pop(event.tag, None)
                    self.queue.finish(event.tag, jobqueue.FINISHED)
        elif event.kind == "cancelled":
            self.jobs.pop(event.tag, None)
            self.queue.finish(event.tag, jobqueue.CANCELLED)
            self.show_message("Cancelled.")
        elif event.kind == "failed":
            self.jobs.pop(event.tag, None)
            code, text = event.data
            self.queue.finish(event.tag, jobqueue.LOST if code == "job_lost" else jobqueue.FAILED_JOB, text)
            self.show_message(f"Failed: {text}")

    def _on_welcome(self, welcome) -> None:
        caps = self.capabilities = welcome.capabilities
        wanted_model, wanted_sampler = self.settings.model, self.settings.sampler
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems([m.name for m in caps.models if m.kind == "checkpoint"])
        self.model_combo.setCurrentIndex(max(0, self.model_combo.findText(wanted_model or caps.default_model)))
        self.model_combo.blockSignals(False)
        self._current_model = self.model_combo.currentText()
        info = self._model_info(self._current_model)
        self.families.start(info.family if info is not None else "")
        self.sampler_combo.clear()
        self.sampler_combo.addItems(caps.samplers)
        self.sampler_combo.setCurrentIndex(max(0, self.sampler_combo.findText(wanted_sampler)))
        self.upscaler_combo.clear()
        for name in caps.upscalers:
            self.upscaler_combo.addItem(name)
            self.upscaler_combo.setItemData(self.upscaler_combo.count() - 1, name, Qt.ToolTipRole)
        self.upscaler_combo.view().setMinimumWidth(self.upscaler_combo.view().sizeHintForColumn(0) + 24)
        self.upscaler_combo.setCurrentIndex(max(0, self.upscaler_combo.findText(self.settings.upscaler)))
        self._upscaler_tip()
        self.lora_combo.clear()
        self.lora_combo.addItems([m.name for m in caps.models if m.kind == "lora"])
        self._load_presets()
        self._update_labels()
        self.controls.on_welcome()
        self.restore.on_welcome()

    def _on_progress(self, tag: str, progress) -> None:
        total = max(progress.total, 1)
        value = progress.step / total
        if progress.tiles:
            value = (progress.step - 1 + progress.tile / progress.tiles) / total
        self.queue.progress(tag, progress.step, progress.total, progress.stage, value, progress.preview)

    # -- results -> history -> layers -----------------------------------------------------------------
    def _history(self, document) -> History:
        key = kritadoc.document_key(document)
        self._documents[key] = document
        if key not in self.histories:
            self.histories[key] = History.from_bytes(kritadoc.read_history(document))
            kritadoc.leave_preview(document)  # a preview saved with the file: hidden, no undo step
        return self.histories[key]

    def _on_result(self, tag: str, job: PendingJob, result) -> None:
        """Hand the images to the background thread; they come back layer-ready."""
        if job.kind == "preprocess":  # a new control layer "from the canvas"
            self.controls.on_result(job, result)
            return
        t0 = time.perf_counter()
        model, depth = job.color
        rect = Rect(0, 0, *job.scale_to) if job.scale_to is not None else job.rect
        mask = None if SERVER_MASKS else job.mask  # the server's RGBA already has the blend mask as alpha
        upscale = job.scale_to is not None
        # Layers made here (cheap) and filled on the background thread, outside the stack: the
        # UI thread later only puts them in (the upscale's layers; the first result's preview,
        # unless a preview is there already: that one is repainted, no new undo step).
        wanted = len(result.images) if upscale else int(kritadoc.find_preview(job.document) is None)
        layers = [kritadoc.new_layer(job.document, kritadoc.PREVIEW_NAME) for _ in result.images[:wanted]]

        def prepare():
            out = []
            for index, image in enumerate(result.images):
                ready = kritadoc.layer_ready(image, rect, mask)
                rgba = kritadoc.image_bytes(ready.convertToFormat(QImage.Format_RGBA8888))  # for the PNG
                pixels = kritadoc.Ready.make(ready, model, depth)
                if index < len(layers):
                    kritadoc.fill_layer(layers[index], pixels, rect.x, rect.y)
                    pixels.layer = layers[index]
                out.append((pixels, kritadoc.thumbnail_png(ready), ready.width(), ready.height(), rgba))
            return out

        self.background.submit(prepare, lambda prepared: self._place(tag, job, result, prepared))
        job.timings["result_ms"] = (time.perf_counter() - t0) * 1000

    def _drain_background(self) -> None:
        while not self.background.done.empty():
            then, value, error = self.background.done.get_nowait()
            try:
                if error is not None:
                    self.show_message(f"PaintBridge: {error}")
                else:
                    then(value)
            except Exception as exc:
                self.show_message(f"PaintBridge: {exc}")
            finally:  # only now: Krita may run events (and timers) while it adds layers
                self.background.busy -= 1

    def _place(self, tag: str, job: PendingJob, result, prepared) -> None:
        """UI thread: the history entries and the preview (or, for upscale, the layer)."""
        t0 = time.perf_counter()
        document = job.document
        history = self._history(document)
        key = kritadoc.document_key(document)
        upscale = job.scale_to is not None
        if upscale:  # applied at once, and kept in the history with its pixels like any result
            self._apply_upscale(job, result, [p[0] for p in prepared])
        batch = uuid.uuid4().hex[:8] if len(result.images) > 1 else ""
        infotexts = result.infotexts or [result.infotext] * len(result.images)
        first = result.parameters.get("first_pass") if isinstance(result.parameters, dict) else None
        first_pass = tuple(first) if first else job.first_pass
        x, y, width, height = (0, 0, *job.scale_to) if upscale else (job.rect.x, job.rect.y, job.rect.width, job.rect.height)
        if upscale:
            first_pass = (job.rect.width, job.rect.height)  # the size it was upscaled from
        added = []
        for index, ((ready, thumbnail, pixel_width, pixel_height, rgba), seed) in enumerate(zip(prepared, result.seeds, strict=False)):
            entry = Entry(history.new_id(), job.prompt, seed, job.mode, job.kind, x, y, width, height, first_pass=first_pass,
                          settings={**job.settings, "seed": seed, "random_seed": False, "token": ""},
                          infotext=infotexts[index] if index < len(infotexts) else "", batch=batch, thumbnail=thumbnail)
            for dropped in history.add(entry):
                self._pixels.pop(dropped.id, None)
                self._prefilled.pop(dropped.id, None)
            self._pixels[entry.id] = ready
            if ready.layer is not None:  # filled off the UI thread: the preview goes in as it is
                self._prefilled[entry.id], ready.layer = ready.layer, None

            def encode(entry=entry, width=pixel_width, height=pixel_height, rgba=rgba):
                entry.png = pngio.encode_rgba(width, height, rgba)  # lossless, for the .kra

            def encoded(_none, key=key, entry=entry):
                if entry.mode == "upscale":  # big: from here on it is read back from its PNG when needed
                    self._pixels.pop(entry.id, None)
                self._dirty.add(key)

            self.background.submit(encode, encoded)
            added.append(entry)
        if upscale:
            job.timings["place_ms"] = (time.perf_counter() - t0) * 1000
            self._record_timings(tag, job)
            if key == _active_key():
                self._refresh_history()
            return
        self.last_seed = result.seeds[0] if result.seeds else None
        self.last_seed_label.setText(f"last: {self.last_seed}")
        if key == _active_key():
            self._refresh_history(select=added[0].id if added else None)
        job.timings["place_ms"] = (time.perf_counter() - t0) * 1000
        self._record_timings(tag, job)
        self.show_message(f"{len(added)} result(s) in the history: Apply keeps one as a layer")

    def _record_timings(self, tag: str, job: PendingJob) -> None:
        self.log.append(f"timings {tag}: " + ", ".join(f"{k} {v:.1f}" for k, v in job.timings.items()))
        self.last_timings = dict(job.timings)

    def _apply_upscale(self, job: PendingJob, result, ready: list) -> None:
        document = job.document
        width, height = job.scale_to
        kritadoc.leave_preview(document)
        scaled = self._scale_document(document, width, height)
        layers = [n for n in document.topLevelNodes() if not n.type().endswith("mask")]
        top = layers[-1] if layers else None
        added = 0
        for image, seed in zip(ready, result.seeds, strict=False):
            top = kritadoc.add_layer(document, _upscale_name(job.settings, seed), image, 0, 0, top,
                                     filled=image.layer, timings=job.timings)
            image.layer = None
            added += 1
        if scaled and added:  # Image > Scale and the layer(s): one Ctrl+Z takes them back together
            kritadoc.link_last(document, 1 + added)
        self.show_message(f"Upscaled to {width}x{height}")

    def _save_histories(self) -> None:
        for key in list(self._dirty):
            document, history = self._documents.get(key), self.histories.get(key)
            if document is None or history is None:
                self._dirty.discard(key)
                continue
            if any(not e.png for e in history.entries if e.id in self._pixels):
                continue  # a PNG is still being written
            kritadoc.write_history(document, history.to_bytes())
            self._dirty.discard(key)

    def flush_history(self, timeout: float = 30.0) -> None:
        """Before saving: wait for the PNG encoder, then write the annotation."""
        deadline = time.monotonic() + timeout
        while self.background.busy and time.monotonic() < deadline:
            time.sleep(0.02)
            self._drain_background()
        self._save_histories()

    # -- the history list ---------------------------------------------------------------------------
    def _refresh_history(self, select: str | None = None) -> None:
        document = kritadoc.active_document()
        self.history_list.blockSignals(True)
        current = select or (self.history_list.currentItem().data(Qt.UserRole) if self.history_list.currentItem() else None)
        self.history_list.clear()
        if document is not None:
            for entry in self._history(document).search(self.history_search.text()):
                first_line = (f"Upscaled ×{float(entry.settings.get('upscale_factor', 2)):g} "
                              f"{entry.settings.get('upscaler') or ''}".strip() if entry.mode == "upscale"
                              else " ".join(entry.prompt.split()) or "(no prompt)")
                item = QListWidgetItem(f"{first_line}\n{entry.describe()}")
                item.setData(Qt.UserRole, entry.id)
                item.setToolTip(entry.infotext or entry.prompt)
                if entry.thumbnail:
                    item.setIcon(QIcon(QPixmap.fromImage(QImage.fromData(entry.thumbnail, "PNG"))))
                self.history_list.addItem(item)
                if entry.id == current:
                    self.history_list.setCurrentItem(item)
        self.history_list.blockSignals(False)
        self.history_panel.fit_history()
        self.history_button.setText(f"History ({self.history_list.count()})" if self.history_list.count() else "History")
        if select is not None:
            self._preview_item(self.history_list.currentItem())

    def _selected_entry(self) -> tuple[Any, Entry]:
        document = self._document()
        item = self.history_list.currentItem()
        entry = self._history(document).get(item.data(Qt.UserRole)) if item is not None else None
        if entry is None:
            raise UserError("Pick a result in the history first.")
        return document, entry

    def _pixels_of(self, entry: Entry, document) -> kritadoc.Ready:
        ready = self._pixels.get(entry.id)
        if ready is None:
            if not entry.png:
                raise UserError("This result's pixels were not kept.")
            image = kritadoc.from_png(entry.png)
            ready = kritadoc.Ready.make(image, document.colorModel(), document.colorDepth())
            if entry.mode != "upscale":  # a whole upscaled image is not worth keeping in memory
                self._pixels[entry.id] = ready
        return ready

    def _preview_item(self, item) -> None:
        document = kritadoc.active_document()
        if item is None or document is None:
            return
        entry = self._history(document).get(item.data(Qt.UserRole))
        if entry is None or (entry.mode == "upscale" and (entry.width, entry.height) != (document.width(), document.height())):
            return  # an upscale previews only on a document of its size
        try:
            # Filled off the UI thread: it goes in as it is, unless a preview is there to repaint.
            filled = self._prefilled.pop(entry.id, None)
            fresh = filled is not None and kritadoc.find_preview(document) is None
            kritadoc.show_preview(document, None if fresh else self._pixels_of(entry, document), entry.x, entry.y,
                                  filled=filled if fresh else None, shows=entry.id)
        except UserError as exc:
            self.show_message(str(exc))

    def apply_selected(self) -> list[str]:
        document, entry = self._selected_entry()
        return self._apply_entries(document, [entry])

    def apply_batch(self) -> list[str]:
        document, entry = self._selected_entry()
        return self._apply_entries(document, self._history(document).batch_of(entry.id))

    def _apply_entries(self, document, entries: list[Entry]) -> list[str]:
        """New layers above the active one, as ONE undo step (a batch goes in one group), with no
        image-sized copy on the UI thread for the result the preview shows.

        The shown result applied alone, while the preview's "Add Layer" is still the last undo
        step: the preview is renamed in place and that step is the apply's (kritadoc.keep_preview).
        Otherwise the preview is copied copy-on-write, left (its step undone where it can be, else
        hidden), and the copy goes in with the other layers in one add.
        """
        t0 = time.perf_counter()
        labels = {"generate": "Generated", "refine": "Refined", "inpaint": "Inpainted", "expand": "Expanded",
                  "upscale": "Upscaled"}
        names = [_upscale_name(e.settings, e.seed) if e.mode == "upscale" else f"{labels.get(e.mode, 'PaintBridge')}: {e.title()}"
                 for e in entries]
        upscales = [e for e in entries if e.mode == "upscale"]
        size = (upscales[-1].width, upscales[-1].height) if upscales else (document.width(), document.height())
        shown = kritadoc.preview_shows(document)
        if not (len(entries) == 1 and entries[0].id == shown and size == (document.width(), document.height())
                and kritadoc.keep_preview(document, names[0]) is not None):
            copy = kritadoc.copy_of_preview(document) if any(e.id == shown for e in entries) else None
            kritadoc.leave_preview(document)  # its own undo step is taken back where it can be
            # An upscale's pixels cover the whole upscaled image: scale the painter's layers to it first
            # (Image > Scale, one more command, linked to the add below; none when the size is right).
            scaled = bool(upscales) and self._scale_document(document, *size)
            layers = [(name, copy if copy is not None and e.id == shown else self._pixels_of(e, document), e.x, e.y)
                      for name, e in zip(names, entries, strict=True)]
            if len(layers) == 1:
                kritadoc.add_layer(document, *layers[0])
            elif layers:
                first = entries[0]
                kritadoc.add_group(document, f"{labels.get(first.mode, 'PaintBridge')} ×{len(layers)}: "
                                   f"{first.title().rsplit(' (seed', 1)[0]}", layers)
            if scaled and layers:
                kritadoc.link_last(document, 2)  # the scale and the one add: one Ctrl+Z
        self.last_apply_ms = (time.perf_counter() - t0) * 1000
        self.show_message(f"Applied {len(names)} layer(s)" + (f": {names[0]}" if names else ""))
        return names

    def _scale_document(self, document, width: int, height: int) -> bool:
        """Image > Scale to the upscale's size; False when the document has that size already."""
        if (width, height) == (document.width(), document.height()):
            return False
        resolution = int(document.resolution())
        document.scaleImage(width, height, resolution, resolution, "Bicubic")  # the painter's layers, as Image > Scale
        document.waitForDone()
        return True

    def discard_selected(self) -> None:
        document, entry = self._selected_entry()
        history = self._history(document)
        row = self.history_list.currentRow()
        history.discard(entry.id)
        self._pixels.pop(entry.id, None)
        self._prefilled.pop(entry.id, None)
        kritadoc.leave_preview(document)
        self._dirty.add(kritadoc.document_key(document))
        self._refresh_history()
        if self.history_list.count():
            self.history_list.setCurrentRow(min(row, self.history_list.count() - 1))
        self.show_message("Discarded.")

    def reuse_selected(self) -> None:
        _document, entry = self._selected_entry()
        self._load_into_ui(entry.settings)
        self.show_message(f"Settings of seed {entry.seed} loaded")

    def copy_parameters(self) -> None:
        _document, entry = self._selected_entry()
        QApplication.clipboard().setText(entry.infotext or entry.prompt)
        self.show_message("Parameters copied (WebUI text)")

    # -- the queue list and the status line ------------------------------------------------------------
    def _refresh_queue(self) -> None:
        current = self.queue_list.currentItem().data(Qt.UserRole) if self.queue_list.currentItem() else None
        self.queue_list.clear()
        for row in self.queue.rows:
            item = QListWidgetItem(row.text())
            item.setData(Qt.UserRole, row.tag)
            item.setData(Qt.UserRole + 1, row.active)
            item.setToolTip(row.text())
            if row.preview is not None:
                p = row.preview
                image = QImage(p.data, p.width, p.height, p.width * 4, QImage.Format_RGBA8888).copy()
                item.setIcon(QIcon(QPixmap.fromImage(image)))
            self.queue_list.addItem(item)
            if row.tag == current:
                self.queue_list.setCurrentItem(item)
        self.history_panel.fit_queue()
        first_active = next((i for i, r in enumerate(self.queue.rows) if r.active), None)
        if first_active is not None:
            self.queue_list.scrollToItem(self.queue_list.item(first_active))
        state, text = self.connection
        self.status.setText(self.queue.status_line(state, text))
        self.status.setToolTip(self.status.text())
        running = next((r for r in self.queue.rows if r.state == jobqueue.RUNNING), None)
        if state != CONNECTED and self.queue.active():
            self.progress.setFormat("Disconnected — waiting for the server")
        elif running is not None:
            self.progress.setValue(round(100 * running.fraction))
            self.progress.setFormat(f"{running.mode} %p% (step {running.step}/{running.total})")
        elif self.queue.active():
            self.progress.setValue(0)
            self.progress.setFormat("Queued")
        else:
            done = self.queue.rows[-1] if self.queue.rows else None
            self.progress.setValue(100 if done is not None and done.state == jobqueue.FINISHED else 0)
            self.progress.setFormat(done.state.capitalize() if done is not None else "Idle")


def _upscale_name(settings: dict, seed: int) -> str:
    return f"Upscaled ×{float(settings.get('upscale_factor', 2)):g} (seed {seed})"


def _active_key() -> str:
    document = kritadoc.active_document()
    return kritadoc.document_key(document) if document is not None else ""


def _resource_root() -> str:
    """Krita's user resource folder (where brushes and presets live), else its data folder."""
    app = Krita.instance()
    root = app.readSetting("", "ResourceDirectory", "")
    if not root:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        root = os.path.join(base, "krita")
    return root


def _scrolled(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QScrollArea.NoFrame)
    area.setWidget(widget)
    area.setMinimumHeight(0)
    return area


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
    # The results and the queue: on the left, below Krita's toolbox (see history_docker.py for why).
    app.addDockWidgetFactory(DockWidgetFactory(HISTORY_DOCKER_ID, DockWidgetFactoryBase.DockLeft, PaintBridgeHistoryDocker))
    scenario = os.environ.get("PAINTBRIDGE_SCENARIO")
    if scenario:
        # Test hook: a scenario module drives the plugin's own code paths.
        spec = importlib.util.spec_from_file_location("paintbridge_scenario", scenario)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        QTimer.singleShot(1000, module.run)
