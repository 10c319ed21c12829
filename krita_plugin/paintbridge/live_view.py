"""The live picture's widgets: the one in the docker and the popped-out window (Qt).

The docker's picture gets what height Krita's dockers leave it (56 px at 1280x800 with
the default dockers, fit.py); its "Pop out" button opens LiveWindow, a tool window
parented to Krita's main window (so it stays above it and goes with it), as large as
the painter makes it, with its own Apply. The rules (the picture's place in the window,
the window's geometry on the screen, remembered in kritarc): popout.py. The live panel
(live_ui.py) feeds both with every new picture and closes the window when Live ends.
"""

from __future__ import annotations

from collections.abc import Callable

from PyQt5.QtCore import QRectF, QSize, Qt
from PyQt5.QtGui import QGuiApplication, QImage, QPainter
from PyQt5.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSizePolicy, QToolButton, QVBoxLayout, QWidget

from . import popout
from .popout import Box

# px: at 1280x800 under Krita's default dockers the docker has no height to spare (fit.py); the
# picture takes what Live frees (the tabs, the progress bar, the message line and the extras, which
# live jobs do not use) and grows with the docker. It asks for more than its minimum, so that where
# the docker is short the prompt gives up its third line to it first.
PREVIEW_MIN_HEIGHT = 56
PREVIEW_HINT_HEIGHT = 240


class PreviewLabel(QWidget):
    """The live picture, drawn scaled into whatever room it is given (aspect kept).

    A plain widget that paints itself rather than a QLabel with a pixmap: a label's
    pixmap and wrapped text feed into the layout's size hints (a pixmap's size is a
    label's minimum), and the docker must never ask for height it does not have."""

    def __init__(self, min_height: int = PREVIEW_MIN_HEIGHT) -> None:
        super().__init__()
        self.image: QImage | None = None
        self.placeholder = ""
        self.corner: QToolButton | None = None
        self.setMinimumSize(48, min_height)
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Expanding)  # its size hint counts: see PREVIEW_HINT_HEIGHT

    def setText(self, text: str) -> None:  # Qt's spelling, as QLabel's
        self.placeholder = text
        self.update()

    def set_image(self, image: QImage | None) -> None:
        self.image = image
        self.update()

    def sizeHint(self) -> QSize:  # Qt's name
        return QSize(48, PREVIEW_HINT_HEIGHT)

    def picture_rect(self) -> Box:
        """Where the picture is drawn in this widget (empty without one)."""
        if self.image is None or self.image.isNull():
            return Box(0, 0, 0, 0)
        return popout.fit_picture(self.image.width(), self.image.height(), self.width(), self.height())

    def paintEvent(self, _event) -> None:  # Qt's name
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().base())
        place = self.picture_rect()
        if place.width:
            painter.setRenderHint(QPainter.SmoothPixmapTransform)
            painter.drawImage(QRectF(place.x, place.y, place.width, place.height), self.image)
        elif self.placeholder:
            painter.drawText(self.rect(), Qt.AlignCenter | Qt.TextWordWrap, self.placeholder)
        painter.end()

    def add_corner_button(self, text: str, tip: str) -> QToolButton:
        """A small checkable button over the top-right corner: it takes no height of the docker's
        layout (a row of its own would raise the docker's minimum, fit.py)."""
        button = QToolButton(self)
        button.setText(text)
        button.setToolTip(tip)
        button.setCheckable(True)
        button.setAutoRaise(True)
        button.setAutoFillBackground(True)  # readable over the picture
        button.adjustSize()
        self.corner = button
        return button

    def resizeEvent(self, event) -> None:  # Qt's name
        super().resizeEvent(event)
        if self.corner is not None:
            self.corner.move(max(0, self.width() - self.corner.width()), 0)


class LiveWindow(QWidget):
    """The newest live picture in a resizable tool window above Krita's main window."""

    def __init__(self, parent: QWidget | None, store, apply: Callable[[], None],
                 closed: Callable[[], None]) -> None:
        super().__init__(parent, Qt.Tool)  # a window of its own, kept above its parent
        self.setWindowTitle("PaintBridge Live")
        self.setAttribute(Qt.WA_DeleteOnClose, False)  # closed, not destroyed: opened again as it was
        # Opening it leaves the keyboard with the canvas: the painter's shortcuts (brush size, undo)
        # keep going to Krita, and so does Krita's notion of the active view.
        self.setAttribute(Qt.WA_ShowWithoutActivating, True)
        self.store = store
        self._closed = closed
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        self.picture = PreviewLabel(popout.MIN_HEIGHT // 2)
        self.picture.setText("Paint: the picture follows your strokes")
        layout.addWidget(self.picture, 1)
        row = QHBoxLayout()
        self.line = QLabel("")
        self.line.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip("Keep the live picture as a new layer (one undo step)")
        self.apply_button.clicked.connect(apply)
        row.addWidget(self.line, 1)
        row.addWidget(self.apply_button)
        layout.addLayout(row)
        self._placing = False

    def chrome_height(self) -> int:
        """px the window takes besides the picture: margins, spacing, the Apply row."""
        return 4 + 4 + 4 + max(self.apply_button.sizeHint().height(), self.line.sizeHint().height())

    def set_image(self, image: QImage | None) -> None:
        if image is not None:
            self.picture.setText("")
        self.picture.set_image(image)

    def set_line(self, text: str) -> None:
        self.line.setText(text)
        self.line.setToolTip(text)

    def open(self, image: QImage | None) -> None:
        """Shown where it was last (kept on the screen), or beside the canvas the first time."""
        self.set_image(image)
        aspect = image.width() / image.height() if image is not None and image.height() else 1.0
        screen = _screen_box(self.parentWidget())
        place = popout.geometry_for(self.store.get(popout.STORE_KEY, ""), screen, aspect, self.chrome_height())
        self._placing = True
        self.setGeometry(place.x, place.y, place.width, place.height)
        self._placing = False
        self.show()
        self.raise_()  # above its parent; not activated (WA_ShowWithoutActivating)

    def remember(self) -> None:
        g = self.geometry()
        self.store.set(popout.STORE_KEY, Box(g.x(), g.y(), g.width(), g.height()).to_text())

    # Qt's names: the painter moves or resizes it (remembered at once: Krita may end any time),
    # or closes it with the title bar's button (the docker's toggle follows).
    def moveEvent(self, event) -> None:
        super().moveEvent(event)
        if self.isVisible() and not self._placing:
            self.remember()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self.isVisible() and not self._placing:
            self.remember()

    def closeEvent(self, event) -> None:
        if self.isVisible():
            self.remember()
        super().closeEvent(event)
        self._closed()


def _screen_box(widget: QWidget | None) -> Box:
    """The available area (less panels and docks) of the screen the widget is on."""
    screen = None
    if widget is not None:
        handle = widget.window().windowHandle()
        screen = handle.screen() if handle is not None else None
    screen = screen or QGuiApplication.primaryScreen()
    a = screen.availableGeometry()
    return Box(a.x(), a.y(), a.width(), a.height())
