"""The package boundaries the brief fixes, checked on the source (AST scan).

- Nothing under krita_plugin/ imports bridge_server (Krita's Python has no
  torch; the plugin carries only protocol/, websockets and msgpack).
- protocol/ is pure: only protocol/shell/ may import websockets or sockets,
  and no part of protocol/ imports the server, the engine or torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (absolute imports)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def offenders(package: str, forbidden: tuple[str, ...], skip: str | None = None) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if skip and skip in path.relative_to(ROOT).parts:
            continue
        for name in imported_modules(path):
            if name.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def test_the_plugin_imports_nothing_from_the_server_or_the_engine():
    assert offenders("krita_plugin", ("bridge_server", "engine", "torch", "diffusers")) == []


def test_protocol_core_is_pure_and_only_its_shell_touches_sockets():
    assert offenders("protocol", ("websockets", "socket", "asyncio", "threading"), skip="shell") == []
    assert offenders("protocol", ("bridge_server", "engine", "torch", "diffusers", "numpy", "PIL")) == []


def test_the_scan_sees_imports(tmp_path):
    """The scanner itself finds `import x`, `from x.y import z`, nested ones."""
    source = tmp_path / "m.py"
    source.write_text("import os\nfrom bridge_server.client import Client\ndef f():\n    import torch.nn\n")
    assert imported_modules(source) == {"os", "bridge_server.client", "torch.nn"}


def test_the_plugin_package_carries_the_client_shell_and_no_server_code():
    from bridge_server import plugin_package

    files = plugin_package.plugin_files()
    assert files["paintbridge/vendor/protocol/shell/client.py"] == ROOT / "protocol" / "shell" / "client.py"
    assert not [name for name in files if "/vendor/bridge_server/" in name]
