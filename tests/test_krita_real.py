"""The plugin inside the real Krita, under Xvfb, against the real server.

Installs the built plugin into a throw-away Krita profile, starts Krita with
a scenario module (tests/krita_scenario/scenario.py) that drives the docker's
own code paths, and asserts on the JSON report it writes. The screenshot is
kept in build/test-artifacts/ (or $PAINTBRIDGE_ARTIFACTS).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.krita]

missing = [tool for tool in ("krita", "xvfb-run") if shutil.which(tool) is None]


@pytest.mark.skipif(bool(missing), reason=f"needs {' and '.join(missing)} (apt-get install krita xvfb)")
def test_plugin_in_real_krita(server, tmp_path):
    profile = {
        "HOME": tmp_path / "home",
        "XDG_DATA_HOME": tmp_path / "data",
        "XDG_CONFIG_HOME": tmp_path / "config",
        "XDG_CACHE_HOME": tmp_path / "cache",
        "XDG_RUNTIME_DIR": tmp_path / "run",
    }
    for folder in profile.values():
        folder.mkdir(mode=0o700)
    done = run_cli("install-plugin", "--krita-dir", str(profile["XDG_DATA_HOME"] / "krita"),
                   "--kritarc", str(profile["XDG_CONFIG_HOME"] / "kritarc"))
    assert done.returncode == 0, done.stderr
    artifacts = Path(os.environ.get("PAINTBRIDGE_ARTIFACTS", ROOT / "build" / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    report_path = tmp_path / "report.json"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))},
        **{k: str(v) for k, v in profile.items()},
        "PAINTBRIDGE_SCENARIO": str(ROOT / "tests" / "krita_scenario" / "scenario.py"),
        "PAINTBRIDGE_REPORT": str(report_path),
        "PAINTBRIDGE_SCREENSHOT": str(artifacts / "krita-paintbridge.png"),
        "PAINTBRIDGE_SERVER": server.url,
    }
    log = tmp_path / "krita.log"
    with open(log, "w") as out:
        # Krita 5.1.5 often segfaults on quit (status 139): judge by the report.
        subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", "krita", "--nosplash"],
                       env=env, stdout=out, stderr=subprocess.STDOUT, timeout=480)
    assert report_path.is_file(), log.read_text()[-3000:]
    report = json.loads(report_path.read_text())
    shutil.copy(report_path, artifacts / "krita-report.json")
    assert report.get("done") and not report["errors"], report
    steps = {s["step"]: s for s in report["steps"]}

    assert steps["connected"]["status"].startswith("Connected") and "paintbridge-demo" in steps["connected"]["models"]
    generated = steps["generate"]
    assert generated["new"] == ["Generated: a lighthouse at dusk (seed 1234)"]
    assert generated["stats"]["opaque"] == 256 * 256  # a full layer with pixels

    inpainted = steps["inpaint"]
    assert inpainted["new"][0].startswith("Inpainted: a lighthouse at dusk")
    assert inpainted["inside"]["opaque"] == inpainted["inside"]["n"]  # set inside the selection
    assert inpainted["outside_band"]["clear"] == inpainted["outside_band"]["n"]  # transparent outside
    assert inpainted["painted_unchanged"]  # the painter's layer is untouched

    upscaled = steps["upscale"]
    assert (upscaled["width"], upscaled["height"]) == (512, 512)
    assert upscaled["top"].startswith("Upscaled:") and upscaled["top_stats"]["opaque"] == 512 * 512
    assert upscaled["originals_kept"]
    assert (artifacts / "krita-paintbridge.png").stat().st_size > 10_000
