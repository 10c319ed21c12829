"""The style presets editor in the docker's Options tab (the logic is prefs.py's).

A preset is a named bundle — model, sampler, steps, CFG, prompt prefix and suffix,
negative prompt — saved as one JSON file in Krita's resource folder, so that painters
can send each other a style (Import… / Export…). Picking a preset fills the editor;
"Use" loads it into the docker; "Save" stores the docker's current model, sampler,
steps, CFG and negative prompt with the prefix and suffix typed here.
"""

from __future__ import annotations

import os

from PyQt5.QtWidgets import QComboBox, QFileDialog, QGridLayout, QLineEdit, QPushButton, QWidget

from . import prefs
from .kritadoc import UserError


class PresetEditor(QWidget):
    def __init__(self, owner) -> None:
        super().__init__()
        self.owner = owner
        self.folder = owner.presets_folder
        self.presets: list[prefs.Preset] = []
        self.in_use: prefs.Preset | None = None  # its prefix/suffix are in the prompt now
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        self.combo = QComboBox()
        self.combo.setToolTip(f"Style presets: JSON files in {self.folder}")
        self.combo.currentIndexChanged.connect(lambda _i: self._picked())
        grid.addWidget(self.combo, 0, 0, 1, 3)
        self.buttons = {}
        for col, (key, text, tip, action) in enumerate((
            ("use", "Use", "Load this style: model, sampler, steps, CFG, negative prompt; prefix and suffix around the prompt",
             self.use),
        )):
            self.buttons[key] = self._button(text, tip, action)
            grid.addWidget(self.buttons[key], 0, 3 + col)
        self.name = QLineEdit()
        self.name.setPlaceholderText("Preset name")
        self.prefix = QLineEdit()
        self.prefix.setPlaceholderText("Prompt prefix, e.g. ink wash painting")
        self.suffix = QLineEdit()
        self.suffix.setPlaceholderText("Prompt suffix, e.g. muted colours, paper texture")
        grid.addWidget(self.name, 1, 0, 1, 4)
        grid.addWidget(self.prefix, 2, 0, 1, 4)
        grid.addWidget(self.suffix, 3, 0, 1, 4)
        for col, (key, text, tip, action) in enumerate((
            ("save", "Save", "Save the current model, sampler, steps, CFG and negative prompt with this prefix/suffix",
             self.save),
            ("delete", "Delete", "Delete this preset's file", self.delete),
            ("import", "Import…", "Add a preset file someone shared", self.import_file),
            ("export", "Export…", "Write this preset to a JSON file to share", self.export_file),
        )):
            self.buttons[key] = self._button(text, tip, action)
            grid.addWidget(self.buttons[key], 4, col)

    def _button(self, text: str, tip: str, action) -> QPushButton:
        button = QPushButton(text)
        button.setToolTip(tip)
        button.setMinimumWidth(0)
        button.clicked.connect(lambda _c=False: self.owner._guard(action))
        return button

    # -- list ---------------------------------------------------------------------------------
    def reload(self, select: str = "") -> None:
        current = select or self.combo.currentText()
        self.combo.blockSignals(True)
        self.combo.clear()
        self.presets = prefs.load_presets(self.folder)
        self.combo.addItems([p.name for p in self.presets])
        self.combo.setCurrentIndex(max(0, self.combo.findText(current)) if self.presets else -1)
        self.combo.blockSignals(False)
        self._picked()

    def selected(self) -> prefs.Preset | None:
        return next((p for p in self.presets if p.name == self.combo.currentText()), None)

    def _picked(self) -> None:
        preset = self.selected()
        if preset is not None:
            self.name.setText(preset.name)
            self.prefix.setText(preset.prompt_prefix)
            self.suffix.setText(preset.prompt_suffix)

    # -- actions ------------------------------------------------------------------------------
    def use(self) -> prefs.Preset:
        preset = self.selected()
        if preset is None:
            raise UserError("No style preset selected.")
        self.owner._load_into_ui(preset.values(self.owner.prompt_edit.toPlainText(), self.in_use))
        self.in_use = preset
        self.owner.show_message(f"Style: {preset.name}")
        return preset

    def save(self) -> str:
        name = self.name.text().strip()
        if not name:
            raise UserError("Name the preset first.")
        s = self.owner._read_settings()
        preset = prefs.Preset(name, s.model, s.sampler, s.steps, s.cfg_scale, prompt_prefix=self.prefix.text().strip(),
                              prompt_suffix=self.suffix.text().strip(), negative_prompt=s.negative_prompt)
        path = prefs.save_preset(self.folder, preset)
        self.reload(select=name)
        self.owner.show_message(f"Saved style preset '{name}' in {self.folder}")
        return path

    def delete(self) -> None:
        preset = self.selected()
        if preset is None:
            raise UserError("No style preset selected.")
        prefs.delete_preset(self.folder, preset.name)
        self.reload()
        # The editor keeps its fields: Save brings the preset back.
        self.name.setText(preset.name)
        self.owner.show_message(f"Deleted style preset '{preset.name}' (Save brings it back)")

    def import_file(self, path: str = "") -> prefs.Preset:
        path = path or QFileDialog.getOpenFileName(self, "Import a style preset", os.path.expanduser("~"),
                                                   "PaintBridge style (*.json)")[0]
        if not path:
            raise UserError("No file chosen.")
        try:
            preset = prefs.import_preset(self.folder, path)
        except prefs.PresetError as exc:
            raise UserError(f"Cannot import: {exc}") from None
        self.reload(select=preset.name)
        self.owner.show_message(f"Imported style preset '{preset.name}'")
        return preset

    def export_file(self, path: str = "") -> str:
        preset = self.selected()
        if preset is None:
            raise UserError("No style preset selected.")
        default = os.path.join(os.path.expanduser("~"), os.path.basename(prefs.preset_path(self.folder, preset.name)))
        path = path or QFileDialog.getSaveFileName(self, "Export the style preset", default, "PaintBridge style (*.json)")[0]
        if not path:
            raise UserError("No file chosen.")
        try:
            prefs.export_preset(self.folder, preset.name, path)
        except (OSError, prefs.PresetError) as exc:
            raise UserError(f"Cannot export: {exc}") from None
        self.owner.show_message(f"Exported '{preset.name}' to {path}")
        return path
