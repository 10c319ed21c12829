"""The "PaintBridge History" docker: the queue and the results, where a painter sees them.

Why a second docker: on a 1280x800 screen Krita's default dockers leave the PaintBridge
docker about 240 px, all of it needed by the prompt, the strength, Generate/Cancel, the
progress and the status; tabs below them got almost no height. krita-ai-diffusion keeps
its history in a docker of its own for the same reason. This one opens on the left, under
Krita's toolbox, where a default layout leaves the column empty below the tools: the
history gets most of the screen's height without taking a row from the Layers docker
(measured in tests/krita_scenario/docker2.py, screenshots in build/test-artifacts/).

The widgets belong to the main docker (it fills and reads them, and its public methods
apply_selected, cancel_all... act on them); this docker only hosts them. Whichever of the
two Krita creates first, `link` puts the panel into the history docker.
"""

from __future__ import annotations

from krita import DockWidget
from PyQt5.QtCore import QSize, Qt
from PyQt5.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QMainWindow,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

HISTORY_DOCKER_ID = "paintbridge_history"
HISTORY_DOCKERS: list[PaintBridgeHistoryDocker] = []  # live history dockers
QUEUE_ROWS = 3  # queue rows shown before it scrolls: the history keeps the rest


class HistoryPanel(QWidget):
    """Queue rows (only while there are any), a search box, the results, their actions."""

    def __init__(self, owner) -> None:
        super().__init__()
        self.owner = owner
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(3)

        # The queue: a one-line header with its actions, then one row per job.
        self.queue_box = QWidget()
        queue_layout = QVBoxLayout(self.queue_box)
        queue_layout.setContentsMargins(0, 0, 0, 0)
        queue_layout.setSpacing(1)
        header = QHBoxLayout()
        header.setSpacing(1)
        self.queue_label = QLabel("Queue")
        self.queue_label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        header.addWidget(self.queue_label, 1)
        for text, tip, action in (("Cancel", "Cancel the selected job", owner.cancel_selected),
                                  ("Cancel all", "Cancel every queued or running job", owner.cancel_all),
                                  ("Clear", "Remove the finished rows", owner._clear_finished)):
            button = QToolButton()
            button.setText(text)
            button.setToolTip(tip)
            button.setAutoRaise(True)
            button.clicked.connect(action)
            header.addWidget(button)
        queue_layout.addLayout(header)
        owner.queue_list = self.queue_list = QListWidget()
        self.queue_list.setIconSize(QSize(20, 20))
        self.queue_list.setUniformItemSizes(True)
        self.queue_list.setTextElideMode(Qt.ElideMiddle)
        self.queue_list.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # rows elide, never scroll sideways
        self.queue_list.setToolTip("One row per job: its state, its own progress and preview")
        queue_layout.addWidget(self.queue_list)
        self.queue_box.setVisible(False)
        layout.addWidget(self.queue_box)

        owner.history_search = self.search = QLineEdit()
        self.search.setPlaceholderText("Search by prompt")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(lambda _t: owner._refresh_history())
        layout.addWidget(self.search)

        owner.history_list = self.history_list = QListWidget()
        self.history_list.setIconSize(QSize(64, 64))
        self.history_list.setSelectionMode(QAbstractItemView.SingleSelection)
        self.history_list.setTextElideMode(Qt.ElideRight)
        self.history_list.setWordWrap(True)
        self.history_list.setMinimumHeight(0)
        self.history_list.currentItemChanged.connect(lambda item, _prev: owner._preview_item(item))
        self.history_list.itemDoubleClicked.connect(lambda _item: owner._guard(owner.apply_selected))
        layout.addWidget(self.history_list, 1)
        self.empty_note = QLabel("Results appear here: click one to preview it on the canvas, "
                                 "Apply keeps it as a layer.")
        self.empty_note.setWordWrap(True)
        self.empty_note.setEnabled(False)
        layout.addWidget(self.empty_note)

        grid = QGridLayout()
        grid.setSpacing(2)
        owner.history_buttons = {}
        for index, (key, text, tip, action) in enumerate((
            ("apply", "Apply", "Keep this result as a layer above the active one (double-click does it too)",
             owner.apply_selected),
            ("all", "Apply all", "Keep every image of this batch, in one group (one undo step)", owner.apply_batch),
            ("discard", "Discard", "Remove this result from the history", owner.discard_selected),
            ("reuse", "Reuse", "Load this result's prompt, seed and settings into PaintBridge", owner.reuse_selected),
            ("copy", "Copy", "Copy the WebUI parameters text", owner.copy_parameters),
        )):
            button = QPushButton(text)
            button.setToolTip(tip)
            # Qt's styles give push buttons 80 px at least; these labels need less, and the
            # docker's width is the canvas's loss.
            button.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
            button.clicked.connect(lambda _c=False, a=action: owner._guard(a))
            owner.history_buttons[key] = button
            # Apply and Apply all wide on the first row; Discard, Reuse, Copy below.
            grid.addWidget(button, *((0, 3 * index, 1, 3) if index < 2 else (1, 2 * (index - 2), 1, 2)))
        self.grid = grid
        layout.addLayout(grid)

    def fit_queue(self) -> None:
        """As many rows as there are jobs, up to QUEUE_ROWS; none without jobs."""
        rows = self.queue_list.count()
        self.queue_box.setVisible(rows > 0)
        if rows:
            row = max(self.queue_list.sizeHintForRow(0), 22)
            self.queue_list.setFixedHeight(row * min(rows, QUEUE_ROWS) + 2 * self.queue_list.frameWidth())
            active = sum(1 for i in range(rows) if self.queue_list.item(i).data(Qt.UserRole + 1))
            self.queue_label.setText(f"Queue: {active} active" if active else "Queue")

    def fit_history(self) -> None:
        self.empty_note.setVisible(self.history_list.count() == 0 and not self.search.text())


class PaintBridgeHistoryDocker(DockWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("PaintBridge History")
        self.setWidget(QLabel("PaintBridge: open the PaintBridge docker (Settings ▸ Dockers)."))
        HISTORY_DOCKERS.append(self)
        from .docker import DOCKERS

        for owner in DOCKERS:
            link(owner)

    def canvasChanged(self, canvas) -> None:
        pass

    def showEvent(self, event) -> None:
        super().showEvent(event)
        owner = getattr(self.widget(), "owner", None)
        if owner is not None and owner.store.get("history_docker_placed") != "true":
            owner.store.set("history_docker_placed", "true")  # once: then Krita keeps the painter's layout
            from PyQt5.QtCore import QTimer

            QTimer.singleShot(0, lambda: place(self, owner))


LEFT_WIDTH = 220  # px: thumbnails and prompts readable, the canvas keeps most of the width
MAIN_WIDTH = 400  # px: the right column (main docker, Layers...) close to Krita's default


def place(history: QDockWidget, main: QDockWidget) -> None:
    """The first time: under the toolbox, the toolbox only as tall as its tools need at this
    width, the rest of the column for the history."""
    window = history.parentWidget()
    while window is not None and not isinstance(window, QMainWindow):
        window = window.parentWidget()
    if window is None or history.isFloating():
        return
    docks, widths = [history], [LEFT_WIDTH]
    if main.isVisible() and not main.isFloating() and window.dockWidgetArea(main) != window.dockWidgetArea(history):
        # A new column squeezes the others to their minimum (262 px measured): give the main
        # docker's column back about the width Krita's default layout has (430 px at 1280x800).
        docks, widths = [history, main], [LEFT_WIDTH, MAIN_WIDTH]
    window.resizeDocks(docks, widths, Qt.Horizontal)
    toolbox = window.findChild(QDockWidget, "ToolBox")
    if toolbox is not None and toolbox.isVisible() and window.dockWidgetArea(toolbox) == window.dockWidgetArea(history):
        from PyQt5.QtCore import QTimer

        QTimer.singleShot(50, lambda: _fit_toolbox(window, toolbox, history))


def _fit_toolbox(window: QMainWindow, toolbox: QDockWidget, history: QDockWidget) -> None:
    """The toolbox flows its buttons into the column's width: as tall as its lowest button."""
    from PyQt5.QtCore import QPoint

    buttons = [b for b in toolbox.findChildren(QToolButton) if b.isVisible()]
    if not buttons:
        return
    bottom = max(b.mapTo(toolbox, QPoint(0, b.height())).y() for b in buttons)
    window.resizeDocks([toolbox, history], [bottom + 6, window.height()], Qt.Vertical)


def link(owner) -> None:
    """Put the main docker's history panel into a history docker, if both exist."""
    panel = owner.history_panel
    for docker in HISTORY_DOCKERS:
        if docker.widget() is panel:
            return
    for docker in HISTORY_DOCKERS:
        if not isinstance(docker.widget(), HistoryPanel):
            docker.setWidget(panel)
            return


def history_docker(owner) -> PaintBridgeHistoryDocker | None:
    return next((d for d in HISTORY_DOCKERS if d.widget() is owner.history_panel), None)
