"""Shared fixtures: tiny demo models in a temp cache, an engine, a real server.

Nothing here downloads weights: the models are built from random init by the
same builder `paintbridge serve --demo` uses, into a temporary cache.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

# Before any engine import: the whole run uses a private cache folder.
_CACHE = tempfile.mkdtemp(prefix="paintbridge-test-cache-")
os.environ["PAINTBRIDGE_CACHE"] = _CACHE
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def demo_models() -> Path:
    from engine.demo.builder import demo_models_dir

    return demo_models_dir()


@pytest.fixture(scope="session")
def engine(demo_models):
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    return Engine(Registry(demo_models).scan(), ModelManager(device="cpu"))


class ServerProcess:
    """`paintbridge serve` as a real subprocess on a free port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="paintbridge-server-", suffix=".log")[1])
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge_server", "serve", "--port", "0", *args],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.port = self._wait_for_port()
        self.url = f"ws://127.0.0.1:{self.port}"

    def _wait_for_port(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"listening on ws://[^:]+:(\d+)", self.log())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log()}")
            time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, pattern: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in the server log:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not end within the grace time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def server(demo_models):
    proc = ServerProcess("--demo")
    proc.wait_for_log(r"loaded paintbridge-demo", timeout=180.0)  # a loaded 2-core machine takes over a minute
    yield proc
    proc.stop()


def run_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bridge_server", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@contextmanager
def running_server(engine, tmp_path, **settings):
    """The real server in this process, its event loop on a thread (state in tmp_path)."""
    import asyncio
    import threading

    from bridge_server.config import ServerConfig
    from bridge_server.server import PaintBridgeServer

    config = ServerConfig(models_dir=engine.registry.root, port=0, preload=False, state_dir=tmp_path / "state",
                          **settings)
    server = PaintBridgeServer(config, engine)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield server, f"ws://127.0.0.1:{server.port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
