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

    if "big" in steps:
        big = steps["big"]
        assert big["top_size"] == [4096, 4096], big
        print("4096x4096 UI-thread ms:", big["timings"], "max timer gap", big["max_timer_gap_ms"])


@pytest.mark.skipif(bool(missing), reason=f"needs {' and '.join(missing)} (apt-get install krita xvfb)")
def test_live_mode_and_region_layers_in_real_krita(server, tmp_path):
    """Live mode: a stroke leads to a new picture; Apply is one layer and one undo step;
    leaving Live leaves the undo stack as it was. A region layer's prompt goes with Generate."""
    report = run_krita(server.url, tmp_path, scenario="live.py")
    steps = {s["step"]: s for s in report["steps"]}

    picture = steps["live picture"]
    assert picture["live_visible"] and picture["button"] == "Apply live picture", picture
    assert picture["differs"] and picture["results"] >= 2, picture  # the stroke made a new picture
    layout = picture["layout"]  # the picture has room; the queue's tabs give theirs to it
    assert layout["preview"][3] >= 48 and layout["docker_min"] < 300 and not layout["tabs_visible"], layout
    # Known, not yet fixed: turning Live on at 1280x800 makes Krita's window taller than the screen
    # (875 px; docker_min stays small), so layout["preview_on_screen"] is not asserted yet.
    request = picture["request"]
    assert request["live"] and not request["preview"] and request["kind"] == "img2img", request
    assert request["strength"] == 0.5 and request["seed"] == 4321 and picture["seeds"] == [4321], picture

    undo = steps["apply and undo"]
    applied = undo["applied"]
    assert len(applied["new"]) == 1 and applied["new"][0].startswith("Live: a lighthouse at dusk (seed 4321)"), applied
    assert applied["layer"] == [256, 256] and applied["opaque"] == 256 * 256, applied
    start, before, after = undo["undo_start"], applied["undo_before"], applied["undo_after"]
    assert before == start, undo  # Live mode itself added nothing to the undo stack
    assert before["redo"] == after["redo"] == "Redo", applied  # nothing to redo
    assert after["rows"] == before["rows"] + 1 and after["undo"] == "Undo Add Layer", applied  # one command
    undone = undo["after_undo"]
    assert undone["layers"] == undo["layers_start"], undo  # one undo removes the layer
    assert undone["undo"]["redo"] == "Redo Add Layer" and undone["undo"]["rows"] == after["rows"], undo
    # Leaving Live: the stack as the painter left it (the undone Apply redo-able, nothing added).
    assert undo["undo_end"] == undone["undo"], undo
    assert not undo["live_active"] and not undo["live_visible"] and undo["layers_end"] == undo["layers_start"]

    region = steps["region"]
    assert region["items"] == ["Umbrella: a red umbrella"], region
    assert '"a red umbrella"' in region["annotation"], region  # saved with the document
    assert region["request_regions"] == [{"prompt": "a red umbrella", "weight": 1.5, "mask": [256, 256],
                                          "covered": 128 * 128}], region
    assert "Region 1 prompt: a red umbrella" in region["infotext"], region

    if "measure" in steps:  # PAINTBRIDGE_LIVE_STROKES=20 PAINTBRIDGE_LIVE_SIDE=512: the latency figures
        figures = live_latency(steps["measure"], server.log())
        out = Path(os.environ.get("PAINTBRIDGE_ARTIFACTS", ROOT / "build" / "test-artifacts")) / "live-latency.json"
        out.write_text(json.dumps(figures, indent=1))
        print("live latency:", json.dumps(figures["summary"], indent=1))


def live_latency(measure: dict, server_log: str) -> dict:
    """Each stroke's clock (the plugin's perf_counter) and its job's engine time (the server's log):
    stroke-to-picture, the waits by design (poll, debounce) and what the plugin and server add."""
    import re

    engine = {m[1]: float(m[2]) for m in re.finditer(r"job (\S+) engine ([\d.]+) ms", server_log)}
    rows = []
    for s in measure["strokes"]:
        if s["job_id"] not in engine:
            continue
        ms = {
            "stroke_to_picture": 1000 * (s["shown"] - s["stroke"]),
            "poll_wait": 1000 * (s["changed"] - s["stroke"]),  # until the next poll saw it
            "debounce_wait": 1000 * (s["sent"] - s["changed"]) - s["read_ms"],  # quiet time, by design
            "plugin_ui": s["read_ms"] + s["show_ms"],  # UI thread: read, hash, hand over; show
            "round_trip": 1000 * (s["received"] - s["sent"]),  # network thread, socket, server, model
            "engine": engine[s["job_id"]],
        }
        ms["server_and_transfer"] = ms["round_trip"] - ms["engine"]
        ms["added"] = ms["plugin_ui"] + ms["server_and_transfer"]  # the goal: < 50 ms
        rows.append(ms)

    summary: dict = {key: spread_of([r[key] for r in rows]) for key in rows[0]} if rows else {}
    summary["n"] = len(rows)
    summary["side"] = measure["side"]
    summary["poll_ms"] = spread_of(measure["poll_ms"])
    summary["poll_interval_ms"] = measure["poll_interval_ms"]
    return {"summary": summary, "rows": rows}


def spread_of(values: list[float]) -> dict:
    import statistics

    values = sorted(values)
    cut = statistics.quantiles(values, n=10) if len(values) > 1 else values * 9
    return {"median": round(statistics.median(values), 2), "p10": round(cut[0], 2), "p90": round(cut[-1], 2)}
