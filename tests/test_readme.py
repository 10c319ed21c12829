"""Every command block of the README runs as written against `serve --demo`.

Blocks are taken from the README itself, so an example that stops working
fails here. Each runs in bash with errexit and pipefail, in a fresh folder,
with the virtualenv's bin/ first on PATH (as after `source .venv/bin/activate`)
and reachable as `.venv/` (as from the repository root),
PAINTBRIDGE_SERVER pointing at the test's demo server, and HOME in a temporary
folder (so `install-plugin` writes nowhere real).

Not run here, each for a stated reason (they run elsewhere or need what a test
machine has not): the set-up block (CI runs exactly it: `.ci/run` ->
`scripts/test`), blocks that start a server of their own on the default port
(the fixture's server stands in for them), and blocks that name a user's real
models folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

NOT_RUN = {
    "scripts/setup": "the set-up commands: CI runs them (.ci/run -> scripts/test)",
    "paintbridge serve": "starts a server on the default port: the test's demo server stands in",
    "paintbridge worker": "starts an engine worker process: tests/test_queue* start them on their own ports",
    "redis-server": "starts Redis on the default port: the queue tests start their own",
    "~/stable-diffusion-webui": "a user's real models folder",
    "bench/run": "benchmarks take minutes: not a test",
}


def blocks() -> list[tuple[int, str]]:
    text = (ROOT / "README.md").read_text()
    found = []
    for match in re.finditer(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        line = text.count("\n", 0, match.start()) + 1
        found.append((line, match.group(1)))
    return found


def test_the_readme_has_command_blocks():
    assert len(blocks()) >= 4


@pytest.mark.parametrize(("line", "block"), blocks(), ids=[f"README.md:{line}" for line, _ in blocks()])
def test_readme_block_runs_as_written(server, tmp_path, line, block):
    skip = [why for marker, why in NOT_RUN.items() if marker in block]
    if skip:
        pytest.skip(skip[0])
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PAINTBRIDGE_SERVER": server.url, "HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    (tmp_path / "home").mkdir()
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # blocks that say .venv/bin/... as from the repository root
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)  # the CLI tour runs ~15 jobs: minutes on a busy 2-core CI
    assert done.returncode == 0, f"README.md:{line} failed ({done.returncode}):\n{block}\n{done.stderr[-3000:]}"
