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


def remember_family(store: Store, family: str, settings) -> None:
    """The last model, sampler, steps and CFG used with this family (sd15, sdxl...)."""
    if family:
        store.set(f"family_{family}", json.dumps({k: getattr(settings, k) for k in FAMILY_KEYS}))


def family_defaults(store: Store, family: str) -> dict:
    try:
        data = json.loads(store.get(f"family_{family}", "") or "{}")
    except ValueError:
        return {}
    return {k: v for k, v in data.items() if k in FAMILY_KEYS}


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
        parts = [self.prompt_prefix.strip(), prompt.strip(), self.prompt_suffix.strip()]
        return ", ".join(p for p in parts if p)


def _file_name(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "preset"
    return f"{slug}.json"


def presets_dir(resource_root: str) -> str:
    """Where Krita keeps user resources (Settings > Manage Resources > Open resource folder)."""
    return os.path.join(resource_root, "paintbridge", "presets")


def save_preset(folder: str, preset: Preset) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, _file_name(preset.name))
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"paintbridge_preset": 1, **asdict(preset)}, f, indent=1, ensure_ascii=False)
    return path


def load_presets(folder: str) -> list[Preset]:
    """Every readable preset in the folder, by name; broken files are skipped."""
    presets = []
    if not os.path.isdir(folder):
        return presets
    known = {f.name for f in fields(Preset)}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or not data.get("paintbridge_preset"):
                continue
            presets.append(Preset(**{k: v for k, v in data.items() if k in known}))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(presets, key=lambda p: p.name.lower())


def delete_preset(folder: str, name: str) -> None:
    path = os.path.join(folder, _file_name(name))
    if os.path.exists(path):
        os.remove(path)


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
