"""The Options/Server tabs as a drawer when the docker is too short to show them.

At 1280x800 with Krita's default dockers the PaintBridge docker is about 260 px tall:
the essentials (prompt, strength, Generate/Cancel, progress, status) take it all and the
Options tab below gets a sliver. Clicking a tab then opens the tabs in a popup over the
docker, tall enough to use (it closes with a click outside or Esc, like a combo box's
list), and puts them back afterwards. A docker the painter made taller shows them inline.
"""

from __future__ import annotations

from PyQt5.QtCore import QPoint, Qt
from PyQt5.QtWidgets import QApplication, QFrame, QScrollArea, QVBoxLayout

INLINE_HEIGHT = 160  # px of tab content below which the drawer opens instead
DRAWER_HEIGHT = 520  # px the drawer asks for (less where the screen has less)


class Drawer(QFrame):
    def __init__(self, owner) -> None:
        super().__init__(owner, Qt.Popup)
        self.owner = owner
        self.setFrameShape(QFrame.StyledPanel)
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(4, 4, 4, 4)
        self.home = None  # (layout, index) the tabs came from

    def needed(self) -> bool:
        tabs = self.owner.tabs
        return not self.isVisible() and tabs.height() - tabs.tabBar().height() < INLINE_HEIGHT

    def open(self) -> None:
        tabs, root = self.owner.tabs, self.owner.widget()
        layout = root.layout()
        self.home = (layout, layout.indexOf(tabs))
        layout.removeWidget(tabs)
        self.layout_.addWidget(tabs)
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

    def hideEvent(self, event) -> None:
        super().hideEvent(event)
        if self.home is not None:
            layout, index = self.home
            self.home = None
            tabs = self.owner.tabs
            self.layout_.removeWidget(tabs)
            layout.insertWidget(index, tabs, 1)
            tabs.show()
