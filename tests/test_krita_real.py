"""The plugin inside the real Krita, under Xvfb at 1280x800, against the real server.

Installs the built plugin into a throw-away Krita profile, starts Krita with
a scenario module (tests/krita_scenario/scenario.py) that drives the docker's
own code paths as a painter would, and asserts on the JSON report it writes.
Screenshots and the report are kept in build/test-artifacts/ (or
$PAINTBRIDGE_ARTIFACTS). Only one Krita runs at a time (flock on /tmp/krita.lock).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.krita]

missing = [tool for tool in ("krita", "xvfb-run") if shutil.which(tool) is None]


def run_krita(server_url: str, tmp_path: Path, only: str = "", scenario: str = "scenario.py") -> dict:
    """Run one scenario module of tests/krita_scenario/ in a fresh Krita profile; its report."""
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
        "PAINTBRIDGE_SCENARIO": str(ROOT / "tests" / "krita_scenario" / scenario),
        "PAINTBRIDGE_REPORT": str(report_path),
        "PAINTBRIDGE_SCREENSHOT": str(artifacts / f"krita-{Path(scenario).stem}.png"),
        "PAINTBRIDGE_SERVER": server_url,
        "PAINTBRIDGE_WORKDIR": str(tmp_path),
        "PAINTBRIDGE_ONLY": only,
    }
    log = tmp_path / "krita.log"
    with open("/tmp/krita.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one real Krita at a time on this machine
        for _attempt in range(3):
            with open(log, "w") as out:
                # Krita 5.1.5 often segfaults on quit (status 139): judge by the report.
                subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", "krita", "--nosplash"],
                               env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900)
            # xvfb-run -a can race another X server for a display number: try again.
            if report_path.is_file() or "could not connect to display" not in log.read_text():
                break
    assert report_path.is_file(), log.read_text()[-3000:]
    report = json.loads(report_path.read_text())
    shutil.copy(report_path, artifacts / f"krita-report-{Path(scenario).stem}.json")
    assert report.get("done") and not report["errors"], report
    return report


@pytest.mark.skipif(bool(missing), reason=f"needs {' and '.join(missing)} (apt-get install krita xvfb)")
def test_painter_workflow_in_real_krita(server, tmp_path):
    report = run_krita(server.url, tmp_path, os.environ.get("PAINTBRIDGE_ONLY", ""))
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["connected"]["status"].startswith("Connect") and "paintbridge-demo" in steps["connected"]["models"]

    layout = steps["layout"]  # 1280x800 with Krita's default dockers: the essentials fit
    assert layout["screen"] == [1280, 800]
    for name in ("prompt", "strength", "generate", "cancel", "progress", "status"):
        widget = layout["widgets"][name]
        assert widget["visible"] and widget["on_screen"] and widget["in_docker"], (name, layout)
    assert Path(report["layout_screenshot"]).stat().st_size > 10_000

    if "auto resolution" in steps:  # 2048x1536: a first pass near 512x512 pixels, hires to the area
        auto = steps["auto resolution"]
        first = [int(v) for v in auto["entry_sizes"].split(" → ")[0].split("x")]
        assert 0.5 <= first[0] * first[1] / 512**2 <= 1.5, auto
        assert auto["entry_sizes"].endswith("2048x1536") and auto["layer"] == [2048, 1536], auto
        assert "Hires" in auto["infotext"], auto
        assert auto["applied"][0].startswith("Generated: a lighthouse at dusk (seed 1234)")

    if "refine selection" in steps:  # an elliptical feathered selection, refine 50%
        refine = steps["refine selection"]
        assert refine["request"]["kind"] == "inpaint" and refine["request"]["strength"] == 0.5
        assert refine["soft_pixels"] > 500  # the selection really is feathered
        assert refine["max_alpha_diff"] <= 2 and refine["outside_max"] == 0, refine
        assert refine["painter_unchanged"]
        assert refine["strength_label"] == "Refine selection 50%" and refine["button"] == "Refine"

    if "expand" in steps:  # 256x256 expanded by 64 px on the right
        expand = steps["expand"]
        assert expand["size"] == [320, 256] and expand["painter_unchanged"]
        assert expand["strip_opaque"] == expand["strip_n"] == 64 * 256 and expand["strip_colours"] > 3, expand

    if "history" in steps:  # two results, discard one, apply the other; saved, reopened
        history = steps["history"]
        assert len(history["entries"]) == 2 and history["preview_seen"]
        assert len(history["new"]) == 1 and history["saved"], history
        reopened = steps["reopened"]
        assert [e[0] for e in reopened["entries"]] == [reopened["kept"]["id"]], reopened
        assert reopened["icons"] == [True] and reopened["png_bytes"] > 100
        assert reopened["settings"]["prompt"] == "two red apples on a table" and reopened["settings"]["steps"] == 3
        assert "[PaintBridge preview]" not in reopened["layers"]

    if "queue" in steps:  # two jobs, cancel the second: the first finishes
        queue = steps["queue"]
        assert len(queue["rows_then"]) == 2 and "queued" in queue["rows_then"][1], queue
        assert queue["final"] == ["finished", "cancelled"], queue

    for name in ("big 1024", "big"):  # an upscale x1 of a 1024x1024, then a 4096x4096 canvas
        if name not in steps:
            continue
        big = steps[name]
        size = big["size"]
        assert big["top_size"] == [size, size] and big["pixels_right"], big
        timings = big["timings"]
        # Ours on the UI thread: reading only takes the node (the pixels are read on the network
        # thread), placing only puts a layer filled on the background thread into the stack.
        # Well under a millisecond each when the machine is quiet; the bounds leave room for a
        # loaded CI machine, where any Python on the UI thread can wait for the GIL.
        assert timings["read_ms"] + timings["submit_ms"] < 20, big
        assert timings["result_ms"] < 300 and big["ours_ms"] < 400, big
        assert timings["place_ms"] - timings["krita_add_ms"] < 100, big
        # What remains is Krita's own: Node.addChildNode waits until the whole image is recomposited
        # (measured 19-149 ms at 1024x1024 and 0.3-2.5 s at 4096x4096 on 2 cores at load 14-16).
        assert big["ui_total_ms"] < (3000 if size <= 1024 else 15000), big
        print(f"{size}x{size} UI-thread ms:", timings, "max timer gap", big["max_timer_gap_ms"],
              "before, same session:", steps.get(f"{name} parts", {}).get("parts", {}).get("before: UI total"))
