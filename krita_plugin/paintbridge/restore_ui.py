"""Upscale mode's "Restore (SUPIR)" row: the Qt side of restore.py.

Shown in Upscale mode only, and only when the server lists a SUPIR model:
[x] Restore (SUPIR) [SUPIR-v0Q] [SDXL checkpoint]
Fidelity ---o--- Detail  balanced (τ 4) [50]     (this row only when ticked)
"""

from __future__ import annotations

from typing import Any

from PyQt5.QtCore import Qt
from PyQt5.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QSlider, QSpinBox, QVBoxLayout, QWidget

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
        # Two rows at most, the second only when ticked; in the docker's scrolled extras (extras.py).
        top = self.top = QHBoxLayout()
        self.check = QCheckBox("Restore (SUPIR)")
        self.check.setChecked(s.supir_on)
        self.check.setToolTip("After the upscaler, SUPIR restores the image with an SDXL checkpoint "
                              "and the authors' settings (Euler with churn, CFG 4 -> 7.5)")
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The SUPIR model (SUPIR-v0Q: quality, v0F: fidelity)")
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.setToolTip("The SDXL checkpoint SUPIR restores with")
        for combo in (self.model_combo, self.checkpoint_combo):
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(6)
        top.addWidget(self.check)
        top.addWidget(self.model_combo, 1)
        top.addWidget(self.checkpoint_combo, 1)
        layout.addLayout(top)
        self.details = QWidget()
        row = QHBoxLayout(self.details)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Fidelity"))
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, 100)
        self.slider.setValue(s.supir_detail)
        self.slider.setToolTip("Restore guidance τr: left keeps the picture, right lets the model add detail")
        row.addWidget(self.slider, 1)
        row.addWidget(QLabel("Detail"))
        self.value_label = QLabel()
        self.value_label.setMinimumWidth(self.value_label.fontMetrics().horizontalAdvance("balanced (τ 16)"))
        row.addWidget(self.value_label)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 150)
        self.steps_spin.setValue(s.supir_steps)
        self.steps_spin.setToolTip("Steps: the authors use 50; a Lightning or Turbo SDXL model needs far fewer")
        row.addWidget(self.steps_spin)
        layout.addWidget(self.details)
        self.check.toggled.connect(lambda _on: self._changed())
        self.slider.valueChanged.connect(lambda _v: self._changed())
        self.model_combo.currentIndexChanged.connect(lambda _i: self._changed())
        self.checkpoint_combo.currentIndexChanged.connect(lambda _i: self._changed())
        self.steps_spin.valueChanged.connect(lambda _v: self._changed())
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
        self.docker.extras.fit()

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
        s.supir_detail, s.supir_steps = self.slider.value(), self.steps_spin.value()
        self.value_label.setText(restore.describe(s.supir_detail))
        self.details.setVisible(s.supir_on)
        extras = getattr(self.docker, "extras", None)
        if extras is not None:
            extras.fit()
        if self.checkpoint_combo.count() == 0:
            self.checkpoint_combo.setToolTip("The server has no SDXL checkpoint: SUPIR cannot run")

    def first_row_height(self) -> int:
        return self.top.sizeHint().height()

    def active(self) -> bool:
        return self.isVisible() and self.check.isChecked()

    def validate(self, settings) -> None:
        """UI thread, before the job is sent: what the painter must fix first."""
        if not settings.supir:
            raise UserError("Choose a SUPIR model (or untick Restore).")
        if not settings.supir_checkpoint or not self.checkpoint_combo.count():
            raise UserError("SUPIR restores with an SDXL checkpoint and the server has none.")

    @staticmethod
    def request(settings, image):
        """The SUPIR upscale request (network thread: no widgets read here)."""
        return restore.supir_request(settings, image, settings.supir, settings.supir_checkpoint, settings.supir_detail,
                                     settings.supir_steps)
