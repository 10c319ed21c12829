"""Upscale mode's "Restore (SUPIR)" row: the Qt side of restore.py.

Shown in Upscale mode only, and only when the server lists a SUPIR model:
[x] Restore (SUPIR) [SUPIR-v0Q]
Fidelity ---o--- Detail  balanced (τ 4)
SDXL [checkpoint]
"""

from __future__ import annotations

from typing import Any

from PyQt5.QtCore import Qt
from PyQt5.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

from . import restore
from .kritadoc import UserError


class RestorePanel(QWidget):
    def __init__(self, docker: Any) -> None:
        super().__init__()
        self.docker = docker
        s = docker.settings
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        top = QHBoxLayout()
        self.check = QCheckBox("Restore (SUPIR)")
        self.check.setChecked(s.supir_on)
        self.check.setToolTip("After the upscaler, SUPIR restores the image with an SDXL checkpoint "
                              "(50 steps with the authors' settings: slow on a CPU)")
        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(8)
        top.addWidget(self.check)
        top.addWidget(self.model_combo, 1)
        layout.addLayout(top)
        self.details = QWidget()
        more = QVBoxLayout(self.details)
        more.setContentsMargins(0, 0, 0, 0)
        more.setSpacing(2)
        row = QHBoxLayout()
        row.addWidget(QLabel("Fidelity"))
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, 100)
        self.slider.setValue(s.supir_detail)
        self.slider.setToolTip("Restore guidance τr: left keeps the picture, right lets the model add detail")
        row.addWidget(self.slider, 1)
        row.addWidget(QLabel("Detail"))
        more.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("SDXL"))
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.checkpoint_combo.setMinimumContentsLength(8)
        self.checkpoint_combo.setToolTip("The SDXL checkpoint SUPIR restores with")
        row.addWidget(self.checkpoint_combo, 1)
        self.value_label = QLabel()
        row.addWidget(self.value_label)
        more.addLayout(row)
        layout.addWidget(self.details)
        self.check.toggled.connect(lambda _on: self._changed())
        self.slider.valueChanged.connect(lambda _v: self._changed())
        self.model_combo.currentIndexChanged.connect(lambda _i: self._changed())
        self.checkpoint_combo.currentIndexChanged.connect(lambda _i: self._changed())
        self._changed()
        self.setVisible(False)

    def models(self) -> list:
        caps = self.docker.capabilities
        return caps.models if caps is not None else []

    def on_welcome(self) -> None:
        s = self.docker.settings
        for combo, names, wanted in (
            (self.model_combo, restore.supir_models(self.models()), s.supir),
            (self.checkpoint_combo, restore.sdxl_checkpoints(self.models()),
             restore.pick_checkpoint(self.models(), self.docker.model_combo.currentText(), s.supir_checkpoint)),
        ):
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            combo.setCurrentIndex(max(0, combo.findText(wanted)))
            combo.blockSignals(False)
        self._changed()
        self.update_visibility()

    def update_visibility(self) -> None:
        """Upscale mode, with a SUPIR model on the server."""
        self.setVisible(self.docker._mode() == "upscale" and bool(restore.supir_models(self.models())))

    def _changed(self) -> None:
        s = self.docker.settings
        s.supir_on = self.check.isChecked()
        if self.model_combo.count():  # before the server's list arrives, the remembered names stay
            s.supir = self.model_combo.currentText()
        if self.checkpoint_combo.count():
            s.supir_checkpoint = self.checkpoint_combo.currentText()
        s.supir_detail = self.slider.value()
        self.value_label.setText(restore.describe(s.supir_detail))
        self.details.setEnabled(s.supir_on)
        if self.checkpoint_combo.count() == 0:
            self.checkpoint_combo.setToolTip("The server has no SDXL checkpoint: SUPIR cannot run")

    def active(self) -> bool:
        return self.isVisible() and self.check.isChecked()

    def check(self, settings) -> None:
        """UI thread, before the job is sent: what the painter must fix first."""
        if not settings.supir:
            raise UserError("Choose a SUPIR model (or untick Restore).")
        if not settings.supir_checkpoint or not self.checkpoint_combo.count():
            raise UserError("SUPIR restores with an SDXL checkpoint and the server has none.")

    @staticmethod
    def request(settings, image):
        """The SUPIR upscale request (network thread: no widgets read here)."""
        return restore.supir_request(settings, image, settings.supir, settings.supir_checkpoint, settings.supir_detail)
