"""The Regions/Options/Server tabs: inline when the docker has room, else a drawer.

At 1280x800 with Krita's default dockers the PaintBridge docker has no height to spare
(fit.py): the tabs' minimum (their bar, 37 px) alone made Krita's window 806 px tall.
So the tabs ask for no height at all. They live in a holder whose vertical size policy is
Ignored (Qt then counts neither its size hint nor its minimum), and the holder shows them
only when the docker gave it room for them; the "Options" button in the docker's mode row
opens them in a popup over the docker otherwise (it closes with a click outside or Esc,
like a combo box's list) and puts them back afterwards.
"""

from __future__ import annotations

from PyQt5.QtCore import QPoint, Qt
from PyQt5.QtWidgets import QApplication, QFrame, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from .fit import shows_inline

DRAWER_HEIGHT = 520  # px the drawer asks for (less where the screen has less)


class TabsHolder(QWidget):
    """The tabs' place in the docker: no minimum height, the tabs shown when they fit."""

    def __init__(self, tabs) -> None:
        super().__init__()
        self.tabs = tabs
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Ignored)
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(0, 0, 0, 0)
        self.layout_.addWidget(tabs)
        tabs.setVisible(False)

    def inline(self) -> bool:
        return self.tabs.parent() is self and shows_inline(self.height(), self.tabs.tabBar().sizeHint().height())

    def put_back(self) -> None:
        self.layout_.addWidget(self.tabs)
        self.fit()

    def fit(self) -> None:
        if self.tabs.parent() is self:
            self.tabs.setVisible(self.inline())

    def resizeEvent(self, event) -> None:  # Qt's name
        super().resizeEvent(event)
        self.fit()


class Drawer(QFrame):
    def __init__(self, owner) -> None:
        super().__init__(owner, Qt.Popup)
        self.owner = owner
        self.setFrameShape(QFrame.StyledPanel)
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(4, 4, 4, 4)

    def needed(self) -> bool:
        return not self.isVisible() and not self.owner.tabs_holder.inline()

    def open(self) -> None:
        tabs, root = self.owner.tabs, self.owner.widget()
        self.layout_.addWidget(tabs)  # out of the holder
        screen = QApplication.screenAt(root.mapToGlobal(QPoint(0, 0))) or QApplication.primaryScreen()
        area = screen.availableGeometry()
        bottom = root.mapToGlobal(QPoint(0, root.height()))
        height = min(DRAWER_HEIGHT, bottom.y() - area.top())
        # As wide as the widest page needs (no sideways scrolling), at least the docker's width.
        pages = [tabs.widget(i) for i in range(tabs.count())]
        inner = [p.widget() if isinstance(p, QScrollArea) and p.widget() is not None else p for p in pages]
        content = max((w.minimumSizeHint().width() for w in inner), default=0)
        width = min(max(root.width(), content + 40), area.width())
        self.setGeometry(min(bottom.x(), area.right() + 1 - width), bottom.y() - height, width, height)
        tabs.show()
        self.show()

    def hideEvent(self, event) -> None:  # Qt's name
        super().hideEvent(event)
        if self.owner.tabs.parent() is self:
            self.layout_.removeWidget(self.owner.tabs)
            self.owner.tabs_holder.put_back()
