"""The docker's Live mode: the canvas re-rendered as the painter paints.

Krita 5.1's Python API has no stroke signal, so a QTimer polls: it reads the
live area's pixels (the projection over the selection's box plus context, or
the whole canvas) and hashes them (live.fingerprint). A change starts the
debounce (live.Debounce); when it is due and no live job is in flight, one
refine at the live strength and the fixed seed goes to the server with
`live: true` (the server drops a superseded one). One job in flight at a
time: a painter who never pauses still sees a new picture every model run,
instead of each stroke cancelling the last one's run.

The newest picture is shown in the docker, as large as its room allows, and
large in a window of its own when the painter pops it out (live_view.py:
at 1280x800 the docker has 56 px for it). Live mode only reads the
document: no preview layer, so the undo stack stays as it was; "Apply" adds
one layer (Node.addChildNode is one undo step; its pixels are set in the
same node before Krita composites it).

Plain rules in live.py; this module is the Qt side. The docker hooks it in
with a few lines (docker.py: LivePanel(self), the mode switch, _on_event).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from PyQt5.QtCore import QRectF, Qt, QTimer
from PyQt5.QtGui import QImage, QPainter
from PyQt5.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from protocol import RawImage

from . import kritadoc, live, worker
from .connection import CONNECTED
from .fit import hide_first
from .kritadoc import UserError
from .live_view import PREVIEW_HINT_HEIGHT, PREVIEW_MIN_HEIGHT, LiveWindow, PreviewLabel  # noqa: F401 (theirs, re-exported)
from .regions import Rect, work_area
from .requests import VISIBLE, Settings

IN_FLIGHT_TIMEOUT_S = 60.0
# While Live is on, the network thread looks for a new request every 5 ms instead of 50 and the
# docker's timer picks up results every 10 ms instead of 30: about 40 ms less per round, for
# a few hundred idle wake-ups a second that cost well under 1% of a core.
LIVE_WORKER_POLL_S = 0.005
LIVE_TIMER_MS = 10  # a live job that never answered is forgotten after this


class LivePanel:
    """Live mode's widgets and its polling loop, owned by the docker."""

    def __init__(self, docker) -> None:
        self.docker = docker
        self.state = live.LiveState()
        self.debounce = live.Debounce()
        self.poller = live.Poller()
        self.active = False
        self.image: QImage | None = None  # the newest result, composited for display
        self.result: tuple | None = None  # (RawImage, Rect, document key, seed, settings) for Apply
        self.poll_ms: list[float] = []  # UI-thread cost of each poll (read + hash)
        self.log: list[dict] = []  # finished rounds, for the latency figures
        self._count = 0
        self._sent_pixels: dict[str, tuple] = {}  # tag -> (base QImage, Rect, settings, document key)
        self._timer_ms = 30  # the docker's own timer interval, restored when Live ends
        self._build()
        self.timer = QTimer(docker)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self._tick)

    # -- widgets ------------------------------------------------------------------------
    def _build(self) -> None:
        d = self.docker
        # The row under the prompt (the docker's mode stack): the live strength and the seed.
        self.strength_page = QWidget()
        row = QHBoxLayout(self.strength_page)
        row.setContentsMargins(0, 0, 0, 0)
        self.strength_slider = QSlider(Qt.Horizontal)
        self.strength_slider.setRange(5, 99)
        self.strength_slider.setValue(round(getattr(d.settings, "live_strength", live.DEFAULT_STRENGTH) * 100))
        self.strength_slider.setToolTip("How much the model repaints your strokes: low keeps them, high invents")
        self.strength_label = QLabel()
        self.strength_label.setFixedWidth(self.strength_label.fontMetrics().horizontalAdvance("Live 100%") + 6)
        self.strength_slider.valueChanged.connect(self._strength_changed)
        self.seed_button = QToolButton()
        self.seed_button.setText("New seed")
        self.seed_button.setAutoRaise(True)
        self.seed_button.setToolTip("Live keeps one seed so the picture does not jump; try another")
        self.seed_button.clicked.connect(self.new_seed)
        self.pause_button = QToolButton()  # in this row: the picture below gets the height a row of its own took
        self.pause_button.setText("Pause")
        self.pause_button.setCheckable(True)
        self.pause_button.setAutoRaise(True)
        self.pause_button.setToolTip("Stop re-rendering while you paint; resume to catch up")
        self.pause_button.toggled.connect(self._paused)
        row.addWidget(self.strength_slider, 1)
        row.addWidget(self.strength_label)
        row.addWidget(self.seed_button)
        row.addWidget(self.pause_button)
        self._strength_changed()

        # The panel below the status line: the picture, as large as the docker allows, and its line.
        # The docker's big button reads "Apply live picture" in Live mode (docker.run_mode -> apply).
        self.panel = QWidget()
        layout = QVBoxLayout(self.panel)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        self.preview = PreviewLabel()
        self.preview.setText("Paint: the picture follows your strokes")
        self.preview.setToolTip("The newest live picture; Apply keeps it as a layer")
        # The docker has ~56 px for it at 1280x800: "Pop out" shows it large in a window of its own.
        self.popout_button = self.preview.add_corner_button(
            "Pop out", "Show the live picture large, in a window above Krita's (moved and sized as you like)")
        self.popout_button.toggled.connect(self._popout_toggled)
        self.window: LiveWindow | None = None
        self.docker.destroyed.connect(self.close_window)  # the docker goes away: so does its window
        layout.addWidget(self.preview, 1)
        self.line = QLabel("")
        self.line.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
        layout.addWidget(self.line)
        self.panel.setVisible(False)

    def _strength_changed(self) -> None:
        self.strength_label.setText(f"Live {self.strength_slider.value()}%")

    def _paused(self, paused: bool) -> None:
        self.pause_button.setText("Resume" if paused else "Pause")
        if not paused:
            self._schedule(0)

    @property
    def strength(self) -> float:
        return self.strength_slider.value() / 100

    # -- on and off ------------------------------------------------------------------------
    def set_active(self, active: bool) -> None:
        if active == self.active:
            return
        self.active = active
        if active:
            self._timer_ms = self.docker.timer.interval()
        # The queue's widgets give their room to the picture. Hidden before the picture is shown
        # (and the picture hidden before they come back): never both at once, not even for a moment,
        # or Qt grows Krita's window to that minimum height and leaves it taller than the screen.
        queue_widgets = [w for w in (getattr(self.docker, n, None) for n in ("tabs_holder", "progress", "message"))
                         if w is not None]
        for widget, visible in hide_first([(w, not active) for w in queue_widgets] + [(self.panel, active)]):
            widget.setVisible(visible)
        self.docker.worker.poll_s = LIVE_WORKER_POLL_S if active else worker.POLL_S
        self.docker.timer.setInterval(LIVE_TIMER_MS if active else self._timer_ms)
        if active:
            self.state = live.LiveState(seed=self.state.seed)  # a new session keeps its seed
            self.debounce = live.Debounce()
            self._schedule(0)
        else:
            self.close_window()
            self.timer.stop()
            for tag in list(self.state.tags):  # nobody is waiting for these any more
                self.docker.worker.cancel(tag)
            self.state.tags.clear()
            self._sent_pixels.clear()

    def new_seed(self) -> None:
        self.state.seed = live.live_seed(Settings(random_seed=True), None)
        if not self.docker.random_check.isChecked():  # the docker's fixed seed is the live seed: change it
            self.docker.seed_spin.setValue(self.state.seed)
        self.state.sent_fingerprint = b""  # re-render with it
        self.debounce.changed(time.perf_counter())
        self._show_line(f"Seed {self.state.seed}")

    def _schedule(self, delay_s: float | None = None) -> None:
        if not self.active:
            return
        if delay_s is None:  # the next poll at the polling rate, or when the debounce is due if sooner
            delay_s = self.poller.interval_s
            due_in = self.debounce.due_in(time.perf_counter())
            if due_in is not None and not self.state.tags:
                delay_s = min(delay_s, due_in)
        self.timer.start(round(1000 * delay_s))

    # -- the poll ------------------------------------------------------------------------------
    def _area(self, document) -> tuple[Rect, Rect | None]:
        s = self.docker.settings
        canvas = Rect(0, 0, document.width(), document.height())
        selection = kritadoc.selection_rect(document)
        if selection is None:
            return canvas, None
        return work_area(canvas, selection, s.mask_grow + s.mask_feather + s.context), selection

    def _extra(self) -> str:
        """Settings whose change re-renders too (a new prompt is a new picture)."""
        d = self.docker
        return "\x00".join((d.prompt_edit.toPlainText(), d.negative_edit.toPlainText(), d.model_combo.currentText(),
                            str(self.strength_slider.value()), d.sampler_combo.currentText(), d.steps_spin.text(),
                            d.cfg_spin.text(), d.seed_spin.text(), str(d.random_check.isChecked())))

    def _tick(self) -> None:
        try:
            self.poll()
        except Exception as exc:  # a document closing under us, a colour space we cannot read
            self._show_line(f"Live: {exc}")
        finally:
            self._schedule()

    def poll(self) -> bool:
        """One look at the canvas; sends a refine when one is due. True if sent."""
        if not self.active or self.pause_button.isChecked():
            return False
        document = kritadoc.active_document()
        if document is None:
            return False
        t0 = time.perf_counter()
        area, selection = self._area(document)
        raw = kritadoc.read_raw(document, area, VISIBLE)
        data = raw.data if not isinstance(raw.data, QImage) else kritadoc.image_bytes(raw.data)
        key = kritadoc.document_key(document)
        print_ = live.fingerprint(bytes(data), (key, area.x, area.y, area.width, area.height,
                                                selection is not None), self._extra())
        now = time.perf_counter()
        self.state.observe(print_, now, self.debounce)
        cost = now - t0
        self.poller.record(cost)
        self.poll_ms.append(cost * 1000)
        del self.poll_ms[:-500]
        self._expire(now)
        if not self.debounce.due(now) or self.state.tags or self.docker.connection[0] != CONNECTED:
            return False
        self.send(document, area, selection, raw, print_, now, cost)
        return True

    def _expire(self, now: float) -> None:
        for tag, stroke in list(self.state.tags.items()):
            if now - stroke.changed > IN_FLIGHT_TIMEOUT_S:
                self.state.tags.pop(tag, None)
                self._sent_pixels.pop(tag, None)

    def send(self, document, area: Rect, selection, raw, print_: bytes, changed: float, read_s: float) -> str:
        d = self.docker
        t0 = time.perf_counter()
        d.settings.live_strength = self.strength
        s = d._read_settings()
        info = d._model_info(s.model)
        few = live.few_step_of(info)
        native = info.native_size if info is not None and info.native_size else 512
        self.state.seed = live.live_seed(s, self.state.seed)
        settings = live.live_settings(Settings(**asdict(s)), self.strength, self.state.seed, few)
        mask = kritadoc.soft_mask(document, area, s.mask_grow, s.mask_feather) if selection is not None else None
        regions = d.regions_ui.layers(document, area) if getattr(d, "regions_ui", None) is not None else []
        size = live.live_size(area.width, area.height, native)

        def build():  # the network thread: conversions and scaling in Qt's C++, GIL released
            image = raw.to_rgba()
            soft = RawImage(area.width, area.height, 1, mask) if mask is not None else None
            scaled_regions = regions
            if size != (area.width, area.height):
                image = _scaled(image, size)
                soft = _scaled(soft, size) if soft is not None else None
                scaled_regions = [_scaled_region(r, area, size) for r in regions]
            request = live.live_request(settings, image, soft, few)
            if scaled_regions:
                from .region_layers import with_regions

                request = with_regions(request, scaled_regions, size[0], size[1])
            return request

        self._count += 1
        tag = f"live{self._count}"
        stroke = live.Stroke(changed=self.debounce.first_change or changed)  # when the first unsent change was seen
        self.state.sending(tag, print_, stroke)
        self.debounce.fired()
        base = QImage(bytes(raw.data), area.width, area.height, area.width * 4, QImage.Format_ARGB32).copy() \
            if kritadoc.is_fast(document) and not isinstance(raw.data, QImage) else None
        self._sent_pixels[tag] = (base, area, settings, kritadoc.document_key(document))
        d.worker.submit(tag, build)
        stroke.sent = time.perf_counter()
        stroke.read_ms = (read_s + stroke.sent - t0) * 1000
        self._show_line(f"Rendering… (seed {self.state.seed}, {size[0]}x{size[1]}, {settings.steps} steps)")
        return tag

    # -- events from the worker --------------------------------------------------------------------
    def owns(self, tag: str) -> bool:
        return tag.startswith("live")

    def on_event(self, event) -> bool:
        """The docker hands every event here first; True when it was a live job's."""
        if not self.owns(event.tag):
            return False
        if event.kind == "accepted":
            stroke = self.state.tags.get(event.tag)
            if stroke is not None:
                stroke.job_id = event.data[0]
        elif event.kind == "result":
            self._on_result(event.tag, event.data)
        elif event.kind in ("failed", "cancelled"):
            self.state.tags.pop(event.tag, None)
            self._sent_pixels.pop(event.tag, None)
            if event.kind == "failed" and event.data and event.data[0] != "superseded":
                self._show_line(f"Live: {event.data[1]}")
        if self.active and not self.state.tags and self.debounce.pending:
            self._schedule(0)  # strokes made meanwhile: render them now
        return True

    def _on_result(self, tag: str, result) -> None:
        received = time.perf_counter()
        sent = self._sent_pixels.pop(tag, None)
        stroke = self.state.finished(tag)
        if stroke is None or sent is None or not result.images:
            return
        stroke.received = received
        base, area, settings, key = sent
        image = result.images[0]
        fmt = QImage.Format_RGBA8888 if image.channels == 4 else QImage.Format_RGB888
        picture = QImage(image.data, image.width, image.height, image.width * image.channels, fmt)
        if base is not None and image.channels == 4:  # a selection: the result over what was sent
            shown = base.scaled(image.width, image.height, Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
            shown = shown.convertToFormat(QImage.Format_ARGB32_Premultiplied)
            painter = QPainter(shown)
            painter.drawImage(QRectF(0, 0, image.width, image.height), picture)
            painter.end()
        else:
            shown = picture.copy()
        self.image = shown
        self.result = (image, area, key, result.seeds[0] if result.seeds else settings.seed, settings)
        self.preview.setText("")
        self.preview.set_image(shown)
        if self.window is not None and self.window.isVisible():
            self.window.set_image(shown)
        self.state.results += 1
        stroke.shown = time.perf_counter()
        stroke.show_ms = (stroke.shown - received) * 1000
        self.log.append(stroke.as_dict())
        del self.log[:-200]
        self._show_line(f"{stroke.shown - stroke.changed:.1f} s after the stroke · seed {self.result[3]}")

    # -- apply -----------------------------------------------------------------------------------
    def apply(self) -> str:
        """The newest live picture as a new layer above the active one: one undo step."""
        if self.result is None:
            raise UserError("No live picture yet: paint a stroke first.")
        image, area, key, seed, settings = self.result
        document = self.docker._document()
        if kritadoc.document_key(document) != key:
            raise UserError("The live picture belongs to another document.")
        ready = kritadoc.layer_ready(image, area, None)  # scaled to the area; the alpha is the blend mask
        pixels = kritadoc.Ready.make(ready, document.colorModel(), document.colorDepth())
        prompt = " ".join(settings.prompt.split())
        name = f"Live: {prompt[:40] or '(no prompt)'} (seed {seed})"
        kritadoc.add_layer(document, name, pixels, area.x, area.y)
        self.docker.show_message(f"Applied: {name}")
        self._show_line(f"Applied: {name}")
        return name

    def _show_line(self, text: str) -> None:
        self.line.setText(text)
        self.line.setToolTip(text)
        if self.window is not None:
            self.window.set_line(text)

    # -- the popped-out picture (live_view.LiveWindow) ----------------------------------------
    def _popout_toggled(self, on: bool) -> None:
        if on:
            self.open_window()
        else:
            self.close_window()

    def open_window(self) -> LiveWindow:
        if self.window is None:  # made once, parented to Krita's main window: above it, gone with it
            self.window = LiveWindow(kritadoc.main_window(), self.docker.store,
                                     apply=self._apply_from_window,
                                     closed=self._window_closed)
            self.window.set_line(self.line.text())
        self.window.open(self.image)
        self.popout_button.setChecked(True)
        return self.window

    def _apply_from_window(self) -> None:
        try:
            self.docker.run_mode()  # in Live mode: apply(), the docker's big button's action
        except UserError as exc:  # the docker's message line is hidden in Live: say it here
            self._show_line(str(exc))

    def close_window(self) -> None:
        try:
            if self.window is not None and self.window.isVisible():
                self.window.close()  # closeEvent remembers where it was and unticks the button
        except RuntimeError:  # Krita's main window (its parent) already deleted it
            self.window = None

    def _window_closed(self) -> None:
        try:
            self.popout_button.blockSignals(True)  # it is closing already: no second close
            self.popout_button.setChecked(False)
            self.popout_button.blockSignals(False)
        except RuntimeError:  # the docker is being deleted
            pass


def _scaled(image: RawImage, size: tuple[int, int]) -> RawImage:
    fmt = {4: QImage.Format_RGBA8888, 1: QImage.Format_Grayscale8}[image.channels]
    q = QImage(image.data, image.width, image.height, image.width * image.channels, fmt)
    q = q.scaled(size[0], size[1], Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
    if image.channels == 1:
        data = b"".join(bytes(q.constScanLine(y).asstring(size[0])) for y in range(size[1]))  # rows are 4-byte aligned
    else:
        data = kritadoc.image_bytes(q)
    return RawImage(size[0], size[1], image.channels, data)


def _scaled_region(layer, area: Rect, size: tuple[int, int]):
    """A region layer's pixels scaled with the live picture (its alpha is the mask)."""
    from dataclasses import replace

    from .region_layers import alpha_mask

    alpha = alpha_mask(layer.pixels, layer.model, layer.depth)
    small = _scaled(RawImage(area.width, area.height, 1, alpha), size).data
    # Back to 8-bit BGRA with that alpha: what region_layers reads.
    pixels = bytearray(4 * len(small))
    pixels[3::4] = small
    return replace(layer, pixels=bytes(pixels), model="RGBA", depth="U8")
