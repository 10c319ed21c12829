"""Package the Krita plugin: a self-contained zip, or an install into pykrita/.

Krita runs plugins in its own Python, which on Windows and macOS has no pip.
So the plugin carries everything it imports besides the standard library and
PyQt5: our `protocol` package (with its client shell, protocol/shell/), and pure-Python copies of
`websockets` and `msgpack` (their C speed-ups are left out; both fall back to
pure Python by themselves).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import zipfile
from pathlib import Path

NAME = "paintbridge"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} not found")
    return Path(next(iter(spec.submodule_search_locations)))


def _py_files(root: Path, prefix: str) -> dict[str, Path]:
    return {
        f"{prefix}/{path.relative_to(root).as_posix()}": path
        for path in sorted(root.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def plugin_files() -> dict[str, Path]:
    """Path inside pykrita/ -> source file."""
    source = _package_dir("krita_plugin")
    files = {f"{NAME}.desktop": source / f"{NAME}.desktop"}
    files |= _py_files(source / NAME, NAME)
    vendor = f"{NAME}/vendor"
    files |= _py_files(_package_dir("protocol"), f"{vendor}/protocol")
    files |= _py_files(_package_dir("websockets"), f"{vendor}/websockets")
    files |= _py_files(_package_dir("msgpack"), f"{vendor}/msgpack")
    return files


def build_zip(out: Path) -> Path:
    """A zip for Krita's Tools > Scripts > Import Python Plugin from File."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path in plugin_files().items():
            archive.write(path, name)
    return out


def default_locations() -> tuple[Path, Path]:
    """(Krita's resource folder holding pykrita/, the kritarc file) for this OS."""
    home = Path.home()
    if sys.platform == "win32":
        appdata = Path(os.environ.get("APPDATA", home / "AppData" / "Roaming"))
        local = Path(os.environ.get("LOCALAPPDATA", home / "AppData" / "Local"))
        return appdata / "krita", local / "kritarc"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "krita", home / "Library" / "Preferences" / "kritarc"
    data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return data / "krita", config / "kritarc"


def enable_in_kritarc(kritarc: Path) -> None:
    """Set `[python] enable_paintbridge=true`, leaving every other line as it was.

    Edited line by line rather than with configparser, which would rewrite
    (and could mangle) the rest of Krita's settings file.
    """
    key = f"enable_{NAME}"
    lines = kritarc.read_text("utf-8").splitlines() if kritarc.is_file() else []
    section, start = None, None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
            if section == "python":
                start = i
            continue
        if section == "python" and stripped.split("=", 1)[0].strip() == key:
            lines[i] = f"{key}=true"
            break
    else:
        if start is None:
            lines += ([""] if lines and lines[-1].strip() else []) + ["[python]", f"{key}=true"]
        else:
            lines.insert(start + 1, f"{key}=true")
    kritarc.parent.mkdir(parents=True, exist_ok=True)
    kritarc.write_text("\n".join(lines) + "\n", "utf-8")


def install(krita_dir: Path, kritarc: Path) -> Path:
    """Install or update the plugin in `krita_dir`/pykrita and enable it."""
    pykrita = krita_dir / "pykrita"
    target = pykrita / NAME
    if target.exists():
        shutil.rmtree(target)  # an update replaces the old version entirely
    for name, path in plugin_files().items():
        dest = pykrita / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    enable_in_kritarc(kritarc)
    return target
