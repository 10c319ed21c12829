"""Settings that stay, style presets, the LoRA picker and the docker's wording.

Plain Python. Storage is injected: the docker passes Krita's readSetting/
writeSetting (kritarc) and Krita's resource folder; tests pass a dict and a tmp dir.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

GROUP = "paintbridge"
# The token lives in kritarc, in plain text, and only when the painter ticks "Remember the
# token" (issue 13 asks for exactly that, with this note). There is no safer place that a
# Krita plugin can rely on: Krita 5.1's Python API (libkis) has no secret store, PyQt5 has no
# QtKeychain binding, and the Python that Krita bundles on Windows and macOS has neither
# `keyring` nor a Secret Service/DBus client to install into. Unticked, the token is kept
# for this session only and the stored one is overwritten with "" (save()).
TOKEN_NOTE = "Stored in plain text in Krita's settings file (kritarc)."
FAMILY_KEYS = ("model", "sampler", "steps", "cfg_scale")  # remembered per model family


class Store:
    """kritarc (or a dict): strings under one group."""

    def __init__(self, read: Callable[[str, str, str], str], write: Callable[[str, str, str], None]) -> None:
        self._read, self._write = read, write

    @classmethod
    def memory(cls) -> Store:
        data: dict[tuple[str, str], str] = {}
        return cls(lambda g, k, d: data.get((g, k), d), lambda g, k, v: data.__setitem__((g, k), v))

    def get(self, key: str, default: str = "") -> str:
        return self._read(GROUP, key, default)

    def set(self, key: str, value: str) -> None:
        self._write(GROUP, key, value)


def _encode(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _decode(text: str, like):
    if isinstance(like, bool):
        return text == "true"
    return type(like)(text)


def load(store: Store, settings) -> None:
    """Fill a Settings dataclass from the store; the token only if the painter said "remember"."""
    for f in fields(settings):
        stored = store.get(f.name, "")
        if stored == "":
            continue
        if f.name == "token" and store.get("remember_token") != "true":
            continue
        try:
            setattr(settings, f.name, _decode(stored, getattr(settings, f.name)))
        except (TypeError, ValueError):
            pass


def save(store: Store, settings, remember_token: bool) -> None:
    for f in fields(settings):
        if f.name == "remember_token":
            continue
        value = getattr(settings, f.name)
        if f.name == "token":
            value = value if remember_token else ""  # forget it when unticked
        store.set(f.name, _encode(value))
    store.set("remember_token", _encode(remember_token))


def listed_choice(current: str, listed: int, remembered: str) -> str:
    """A combo box's choice to save: its current text, or the remembered one while the box is
    still empty (the server's lists of models, samplers, upscalers and presets arrive at
    connection; a Krita closed before that must not forget the painter's choice)."""
    return current if listed else remembered


def remember_family(store: Store, family: str, settings) -> None:
    """The last model, sampler, steps and CFG used with this family (sd15, sdxl...)."""
    if family:
        values = settings if isinstance(settings, dict) else {k: getattr(settings, k) for k in FAMILY_KEYS}
        store.set(f"family_{family}", json.dumps({k: values[k] for k in FAMILY_KEYS if k in values}))


def family_defaults(store: Store, family: str) -> dict:
    try:
        data = json.loads(store.get(f"family_{family}", "") or "{}")
    except ValueError:
        return {}
    return {k: v for k, v in data.items() if k in FAMILY_KEYS}


class FamilyMemory:
    """Switching models: what the painter last used with each family comes back.

    SDXL wants other steps, CFG and samplers than SD1.5: picking an SDXL model loads
    what was last used with SDXL, and what was set for the family being left is kept
    for when the painter comes back to it, in this session and the next (kritarc).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.family = ""  # the family of the model in use

    def start(self, family: str) -> None:
        """At connection: the restored model's family; nothing is loaded (the settings are the last ones)."""
        self.family = family

    def switch(self, family: str, current: dict) -> dict:
        """The painter picked a model of `family`; `current` = the settings used until now
        (model, sampler, steps, cfg_scale). Returns the values to load (empty: keep)."""
        if not family or family == self.family:
            self.family = family or self.family
            return {}
        if self.family:
            remember_family(self.store, self.family, current)
        self.family = family
        return {k: v for k, v in family_defaults(self.store, family).items() if k != "model"}


# -- LoRA picker ------------------------------------------------------------------------
def insert_lora(prompt: str, name: str, weight: float = 0.8) -> str:
    """Append `<lora:name:0.8>` (WebUI syntax), or leave the prompt as it is if it is there."""
    if re.search(rf"<lora:{re.escape(name)}:[^>]*>", prompt):
        return prompt
    tag = f"<lora:{name}:{weight:g}>"
    text = prompt.rstrip()
    return f"{text}, {tag}" if text else tag


# -- style presets --------------------------------------------------------------------------
@dataclass
class Preset:
    """A named bundle a painter can share: a JSON file in Krita's resource folder."""

    name: str
    model: str = ""
    sampler: str = ""
    steps: int = 0  # 0 = keep the docker's
    cfg_scale: float = 0.0  # 0 = keep the docker's
    prompt_prefix: str = ""
    prompt_suffix: str = ""
    negative_prompt: str = ""
    extra: dict = field(default_factory=dict)

    def apply_prompt(self, prompt: str) -> str:
        """prefix, prompt, suffix — once: using the preset again does not repeat them."""
        core = self.strip_prompt(prompt)
        parts = [self.prompt_prefix.strip(), core, self.prompt_suffix.strip()]
        return ", ".join(p for p in parts if p)

    def strip_prompt(self, prompt: str) -> str:
        """The painter's own words: the prompt without this preset's prefix and suffix."""
        text = prompt.strip()
        prefix, suffix = self.prompt_prefix.strip(), self.prompt_suffix.strip()
        # (no str.removeprefix: Krita 5.1's own Python on Windows is 3.8)
        if prefix and text.startswith(prefix):
            text = text[len(prefix):].lstrip(" ,")
        if suffix and text.endswith(suffix):
            text = text[: len(text) - len(suffix)].rstrip(" ,")
        return text

    def values(self, prompt: str, previous: Preset | None = None) -> dict:
        """What "Use" loads into the docker: unset fields (empty, 0) keep the docker's values."""
        core = previous.strip_prompt(prompt) if previous is not None else prompt
        out = {"prompt": self.apply_prompt(core), "model": self.model or None, "sampler": self.sampler or None,
               "steps": self.steps or None, "cfg_scale": self.cfg_scale or None,
               "negative_prompt": self.negative_prompt or None}
        return {k: v for k, v in out.items() if v is not None}


class PresetError(ValueError):
    """A preset file that cannot be used; the message says why."""


PRESET_MAX_BYTES = 64 * 1024  # a preset is a few hundred bytes; anything far larger is not one


def preset_from_json(data) -> Preset:
    """A preset from parsed JSON, checked field by field (files come from other people)."""
    if not isinstance(data, dict) or not data.get("paintbridge_preset"):
        raise PresetError("not a PaintBridge style preset (no \"paintbridge_preset\" key)")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PresetError("the preset has no name")
    values: dict = {"name": name.strip()[:200]}
    for f in fields(Preset):
        if f.name in ("name", "extra") or f.name not in data:
            continue
        value, kind = data[f.name], {"steps": int, "cfg_scale": float}.get(f.name, str)
        if kind is str and not isinstance(value, str):
            raise PresetError(f"preset field '{f.name}' must be text")
        if kind is not str:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PresetError(f"preset field '{f.name}' must be a number")
            value = kind(value)
            if not 0 <= value <= (150 if f.name == "steps" else 30):
                raise PresetError(f"preset field '{f.name}' is out of range: {value}")
        values[f.name] = value
    extra = data.get("extra", {})
    values["extra"] = extra if isinstance(extra, dict) else {}
    return Preset(**values)


def read_preset_file(path: str) -> Preset:
    try:
        if os.path.getsize(path) > PRESET_MAX_BYTES:
            raise PresetError(f"{os.path.basename(path)} is too large for a style preset")
        with open(path, encoding="utf-8") as f:
            return preset_from_json(json.load(f))
    except OSError as exc:
        raise PresetError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        if isinstance(exc, PresetError):
            raise
        raise PresetError(f"{os.path.basename(path)} is not valid JSON: {exc}") from None


def import_preset(folder: str, path: str) -> Preset:
    """Share: a preset file someone sent, checked and copied into the presets folder."""
    preset = read_preset_file(path)
    save_preset(folder, preset)
    return preset


def export_preset(folder: str, name: str, path: str) -> str:
    """Share: write the named preset to `path` (a .json anyone can import)."""
    preset = next((p for p in load_presets(folder) if p.name == name), None)
    if preset is None:
        raise PresetError(f"no style preset named '{name}'")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"paintbridge_preset": 1, **asdict(preset)}, f, indent=1, ensure_ascii=False)
    return path


def _file_name(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "preset"
    return f"{slug}.json"


def presets_dir(resource_root: str) -> str:
    """Where Krita keeps user resources (Settings > Manage Resources > Open resource folder)."""
    return os.path.join(resource_root, "paintbridge", "presets")


def preset_path(folder: str, name: str) -> str:
    return os.path.join(folder, _file_name(name))


def save_preset(folder: str, preset: Preset) -> str:
    os.makedirs(folder, exist_ok=True)
    path = preset_path(folder, preset.name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"paintbridge_preset": 1, **asdict(preset)}, f, indent=1, ensure_ascii=False)
    return path


def load_presets(folder: str) -> list[Preset]:
    """Every readable preset in the folder, by name; broken files are skipped."""
    presets = []
    if not os.path.isdir(folder):
        return presets
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        try:
            presets.append(read_preset_file(os.path.join(folder, name)))
        except PresetError:
            continue
    return sorted(presets, key=lambda p: p.name.lower())


def delete_preset(folder: str, name: str) -> bool:
    """Remove the named preset's file; False if there was none."""
    removed = False
    for path in [os.path.join(folder, _file_name(name))] + [
            os.path.join(folder, f) for f in (os.listdir(folder) if os.path.isdir(folder) else []) if f.endswith(".json")]:
        try:
            if os.path.exists(path) and read_preset_file(path).name == name:
                os.remove(path)
                removed = True
        except PresetError:
            continue
    return removed


# -- wording ------------------------------------------------------------------------------
def strength_label(strength: float, selection: bool, mode: str = "generate") -> str:
    """What the strength slider does now, in the painter's words (fixed width, no shifts)."""
    percent = round(strength * 100)
    if mode == "upscale":
        return f"Detail {percent}%"
    if selection:
        return "Fill selection" if percent >= 100 else f"Refine selection {percent}%"
    return "Generate" if percent >= 100 else f"Refine {percent}%"


def button_label(strength: float, selection: bool, mode: str = "generate") -> str:
    if mode == "upscale":
        return "Upscale"
    if mode == "live":
        return "Apply live picture"
    if selection:
        return "Fill" if strength >= 1.0 else "Refine"
    return "Generate" if strength >= 1.0 else "Refine"
