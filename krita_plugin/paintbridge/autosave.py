"""Settings saved as the painter changes them, not only when Krita quits.

Saving only from Krita's `applicationClosing` (Qt's aboutToQuit) is not enough: by
then File > Quit has closed the main window, and the docker's widgets may be gone with
it, and a Krita that ends badly after that never writes kritarc at all. So every
setting widget's change signal (re)starts one short single-shot timer, and the timer
writes all settings at once (prefs.save through the docker's _read_settings): one
kritarc write per burst of changes, whatever the painter quits with. The main
window's close event flushes a pending save before the widgets go.

Qt only; which widgets hold settings is the docker's list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from PyQt5.QtCore import QEvent, QObject, QTimer
from PyQt5.QtWidgets import (
    QAbstractButton,
    QAbstractSlider,
    QAbstractSpinBox,
    QComboBox,
    QLineEdit,
    QPlainTextEdit,
    QWidget,
)

DELAY_MS = 400  # a burst of changes (typing, dragging a slider) is one write


def _signal(widget: QWidget):
    """The signal that says the painter changed this widget's value."""
    if isinstance(widget, (QLineEdit, QPlainTextEdit)):
        return widget.textChanged
    if isinstance(widget, QComboBox):
        return widget.currentIndexChanged
    if isinstance(widget, (QAbstractSlider, QAbstractSpinBox)):
        return widget.valueChanged
    if isinstance(widget, QAbstractButton):
        return widget.toggled
    raise TypeError(f"no change signal known for {type(widget).__name__}")


class AutoSave(QObject):
    def __init__(self, owner: QWidget, save: Callable[[], object], widgets: Iterable[QWidget],
                 delay_ms: int = DELAY_MS) -> None:
        super().__init__(owner)
        self._save = save
        self.saves = 0  # how many writes (for tests)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(delay_ms)
        self.timer.timeout.connect(self.flush)
        for widget in widgets:
            _signal(widget).connect(self._changed)
        self._window: QWidget | None = None

    def _changed(self, *_args) -> None:
        self.timer.start()

    def watch_window(self, window: QWidget | None) -> None:
        """Flush when this (Krita's main) window closes, before its dockers are deleted."""
        if window is not None and window is not self._window:
            window.installEventFilter(self)
            self._window = window

    def eventFilter(self, watched, event) -> bool:  # Qt's name
        if event.type() == QEvent.Close and self.timer.isActive():
            self.flush()
        return False

    def flush(self) -> None:
        self.timer.stop()
        try:
            self._save()
            self.saves += 1
        except RuntimeError:  # a widget already deleted (Krita closing): nothing left to save
            pass
