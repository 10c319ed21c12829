"""The docker's rows whose number varies, in one scroll area that needs one row's height.

Whatever raises the docker's minimum height makes Krita's window taller than a 1280x800
screen (fit.py): one control row did (837 px), SUPIR's two rows too (864-889 px). So the rows that come and go (SUPIR's
options in Upscale mode, one row per control layer) share this scroll area: it asks for
all of them and needs only the first; the rest scroll, and show where the docker is taller.
Live mode sends neither, so it hides them and its picture gets their room.
"""

from __future__ import annotations

from PyQt5.QtCore import Qt
from PyQt5.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from .fit import SPACING, extras_heights


class Extras(QScrollArea):
    def __init__(self, docker, panels: list) -> None:
        super().__init__()
        self.docker, self.panels = docker, panels
        holder = QWidget()
        box = QVBoxLayout(holder)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(SPACING)
        for panel in panels:
            box.addWidget(panel)
        box.addStretch(1)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setWidget(holder)
        self.setVisible(False)

    def fit(self) -> None:
        """Called when a panel shows, hides or changes its rows, and on a mode switch."""
        shown = [p for p in self.panels if not p.isHidden()]
        if self.docker._mode() == "live":
            shown = []
        low, high = extras_heights([p.first_row_height() for p in shown], [p.sizeHint().height() for p in shown])
        if not shown:
            self.setVisible(False)
            return
        self.setMinimumHeight(0)  # lowered first: a maximum below the old minimum would be refused
        self.setMaximumHeight(high)
        self.setMinimumHeight(low)
        self.setVisible(True)
