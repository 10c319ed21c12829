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


def run_krita(server_url: str, tmp_path: Path, only: str = "", scenario: str = "scenario.py",
              fresh: bool = True) -> dict:
    """Run one scenario module of tests/krita_scenario/ in a fresh Krita profile; its report.

    `fresh=False`: the profile of an earlier run in the same tmp_path (its kritarc, resources
    and installed plugin), as a painter starts Krita again."""
    profile = {
        "HOME": tmp_path / "home",
        "XDG_DATA_HOME": tmp_path / "data",
        "XDG_CONFIG_HOME": tmp_path / "config",
        "XDG_CACHE_HOME": tmp_path / "cache",
        "XDG_RUNTIME_DIR": tmp_path / "run",
    }
    if fresh:
        for folder in profile.values():
            folder.mkdir(mode=0o700)
        done = run_cli("install-plugin", "--krita-dir", str(profile["XDG_DATA_HOME"] / "krita"),
                       "--kritarc", str(profile["XDG_CONFIG_HOME"] / "kritarc"))
        assert done.returncode == 0, done.stderr
    artifacts = Path(os.environ.get("PAINTBRIDGE_ARTIFACTS", ROOT / "build" / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    report_path = tmp_path / "report.json"
    report_path.unlink(missing_ok=True)  # an earlier run's report is not this run's
    stem = Path(scenario).stem + (f"-{only}" if only and scenario != "scenario.py" else "")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))},
        **{k: str(v) for k, v in profile.items()},
        "PAINTBRIDGE_SCENARIO": str(ROOT / "tests" / "krita_scenario" / scenario),
        "PAINTBRIDGE_REPORT": str(report_path),
        "PAINTBRIDGE_SCREENSHOT": str(artifacts / f"krita-{stem}.png"),
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
    shutil.copy(report_path, artifacts / f"krita-report-{stem}.json")
    assert report.get("done") and not report["errors"], report
    return report


def assert_fits(layout: dict, *names: str) -> None:
    """At 1280x800 with Krita's default dockers, PaintBridge never makes Krita's main window taller
    than the screen, and the named widgets are shown, on the screen, inside their docker."""
    assert layout["screen"] == [1280, 800], layout
    x, y, width, height = layout["frame"]
    assert height <= 800 and width <= 1280 and x >= 0 and y >= 0 and y + height <= 800, layout
    for name in names or layout["widgets"]:
        widget = layout["widgets"][name]
        assert widget["visible"] and widget["on_screen"] and widget["in_docker"], (name, layout)
    if "screenshot" in layout:
        assert Path(layout["screenshot"]).stat().st_size > 10_000, layout


@pytest.mark.skipif(bool(missing), reason=f"needs {' and '.join(missing)} (apt-get install krita xvfb)")
def test_painter_workflow_in_real_krita(server, tmp_path):
    report = run_krita(server.url, tmp_path, os.environ.get("PAINTBRIDGE_ONLY", ""))
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["connected"]["status"].startswith("Connect") and "paintbridge-demo" in steps["connected"]["models"]

    # 1280x800 with Krita's default dockers: the essentials fit, and so does Krita's window
    assert_fits(steps["layout"], "prompt", "strength", "generate", "cancel", "progress", "status")

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


@pytest.mark.skipif(bool(missing), reason=f"needs {' and '.join(missing)} (apt-get install krita xvfb)")
def test_history_docker_undo_upscale_history_and_presets_in_real_krita(server, tmp_path):
    report = run_krita(server.url, tmp_path, scenario="docker2.py")
    steps = {s["step"]: s for s in report["steps"]}

    layout = steps["layout"]  # 1280x800, Krita's default dockers plus both of ours
    assert_fits({**layout, "widgets": layout["main"]})  # the essentials stay in the main docker, on screen
    for name, widget in layout["history"].items():  # search, list, every button, the queue row
        assert widget["visible"] and widget["on_screen"] and widget["in_docker"], (name, layout)
    assert layout["history_list_height"] >= 150 and layout["history_rows"] == 2, layout

    one = steps["apply one"]  # Apply = one undo step; one Ctrl+Z takes the layer back, nothing else
    assert one["preview_after_results"] and one["after_results"][0] == one["start"] + ["Add Layer"], one  # the preview
    assert one["after_click"][0] == one["after_results"][0]  # clicking through results adds nothing
    assert one["after_apply"][0] == one["start"] + ["Add Layer"], one  # the preview's step taken back, one added
    assert one["layers_after_apply"] == one["before_generate"] + [one["applied"][0]], one
    assert one["layers_after_undo"] == one["before_generate"] and one["painter_unchanged"], one
    # and the canvas shows it all: the preview, the next clicked result, the applied layer, then the painting
    assert one["canvas_preview"] and one["canvas_preview_clicked"] and one["canvas_applied"], one
    assert one["canvas_after_undo"], one

    batch = steps["apply all"]  # Apply all: one group, one undo step
    assert len(batch["children"]) == 2 and batch["projection_later"], batch
    assert batch["undo_after"][0] == one["start"] + ["Add Layer"], batch
    assert batch["after_undo"] == one["before_generate"], batch

    leave = steps["leave preview"]  # a preview left alone: the stack as it was (its add undone)
    done = len(leave["before"][0])
    assert leave["preview_seen"] and leave["result"] == "undone", leave
    assert leave["after"][0][:done] == leave["before"][0] and "[PaintBridge preview]" not in leave["layers"], leave
    # the painter acted in between: hidden (no undo step of ours), the painter's step stays on top
    assert leave["second_shown"] and leave["second_leave"] == "hidden" and leave["preview_hidden"], leave
    assert leave["second_after"][0] == leave["undo_mid"][0], leave
    assert leave["canvas_painter"], leave

    up = steps["upscale history"]  # an upscale result kept with its pixels applies again
    assert up["first"]["entry"]["mode"] == "upscale" and up["first"]["entry"]["png_bytes"] > 100, up
    assert up["first"]["after_undos"][:2] == [64, 48], up
    assert up["size"] == [128, 96] and up["same_pixels"] and up["top"].startswith("Upscaled ×2"), up

    presets = steps["presets"]
    assert presets["saved_exists"] and presets["prompt"] == "ink wash painting, a heron, paper texture", presets
    assert "Ink wash" not in presets["after_delete"] and presets["imported"] == "Ink wash" and presets["steps"] == 17

    drawer = steps["options drawer"]  # the Options tab is usable at 1280x800: a drawer over the docker
    assert drawer["open"] and drawer["height"] >= 400 and drawer["back_in_docker"] and drawer["closed"], drawer
    assert drawer["steps"]["visible"] and drawer["steps"]["on_screen"] and drawer["negative"]["visible"], drawer


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
    assert layout["preview"][3] >= 48 and not layout["tabs_visible"], layout
    assert_fits(layout)  # Live never makes Krita's window taller than the screen
    # Popped out: the newest picture large in a tool window above Krita's, which stays on the screen.
    opened, window = picture["popout_opened"], picture["popout"]
    assert opened["visible"] and opened["shows_first"] and opened["stored"] == "", opened
    assert window["visible"] and window["is_tool"] and window["parent_is_main"], window
    assert window["shows_newest"] and window["picture"][3] >= 400 and window["picture"][2] >= 400, window  # 256x256
    x, y, width, height = window["frame"]
    assert x >= 0 and y >= 0 and x + width <= 1280 and y + height <= 800, window
    assert window["main_frame"][3] <= 800 and window["main_frame"][1] + window["main_frame"][3] <= 800, window
    assert window["picture"][3] >= 4 * window["docker_picture"][1], window  # large, next to the docker's
    assert Path(window["screenshot"]).stat().st_size > 10_000, window
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
    # Leaving Live closes the pop-out; where the painter put it is remembered for next time.
    assert undo["popout_left"] == {"visible": False, "button": False, "stored": "60,80,500,450",
                                   "reopened": [60, 80, 500, 450], "closed_again": True}, undo

    region = steps["region"]
    assert region["items"] == ["Umbrella: a red umbrella"], region
    assert '"a red umbrella"' in region["annotation"], region  # saved with the document
    assert region["request_regions"] == [{"prompt": "a red umbrella", "weight": 1.5, "mask": [256, 256],
                                          "covered": 128 * 128}], region
    assert "Region 1 prompt: a red umbrella" in region["infotext"], region
    assert_fits(region["layout"], "prompt", "generate", "cancel", "status", "progress")

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


@pytest.mark.skipif(bool(missing), reason=f"needs {' and '.join(missing)} (apt-get install krita xvfb)")
def test_control_layers_in_real_krita(server, tmp_path):
    """A Canny control made from the canvas is a new layer of edges; Generate, refine and
    upscale send it (the server's infotext says so); it is never changed; it is saved."""
    report = run_krita(server.url, tmp_path, scenario="control.py")
    steps = {s["step"]: s for s in report["steps"]}
    assert ["paintbridge-demo-control", "sd15"] in steps["connected"]["controlnets"]
    assert not steps["connected"]["restore_visible"]  # the demo server has no SUPIR model

    layer = steps["control layer"]  # the preprocessor's output: the square's outline, white on black
    assert layer["layer_name"] == "[Control] canny" and layer["layers"] == ["Background", "Drawing", "[Control] canny"], layer
    assert layer["opaque"] == 256 * 256 and layer["painter_unchanged"]
    assert layer["white"] >= layer["perimeter"] * 0.8 and layer["white_near_edge"] == layer["white"], layer
    assert layer["list"] == [["canny", True, layer["node_id"]]] and layer["row_name"] == "[Control] canny"
    # No ControlNet named "canny" on the demo server: the row opens and Generate says what to do.
    assert layer["row_details_open"] and "choose" in layer["row_model"] and layer["queued"] == 0
    assert "no canny ControlNet for sd15" in layer["no_net_message"], layer

    generate = steps["generate"]
    assert generate["kind"] == "txt2img" and generate["units"] == 1, generate
    assert generate["unit"] == {"model": "paintbridge-demo-control", "strength": 0.8, "preprocess": "none",
                                "size": [256, 256], "start": 0.0, "end": 1.0}
    assert 'ControlNet 0: "Module: none, Model: paintbridge-demo-control, Weight: 0.8' in generate["infotext"]
    assert generate["control_unchanged"] and generate["control_visible"]

    refine = steps["refine"]
    assert refine["kind"] == "img2img" and refine["units"] == 1 and "ControlNet 0:" in refine["infotext"], refine
    assert refine["image_is_the_drawing"] and refine["visible_after_read"] and refine["control_unchanged"]

    reopened = steps["reopened"]
    assert reopened["saved"] and reopened["node_id"] == reopened["control_id"], reopened
    assert reopened["list"] == [["canny", "paintbridge-demo-control", 0.8, reopened["control_id"]]]
    assert reopened["rows"] == ["[Control] canny"]

    upscale = steps["upscale"]
    assert upscale["kind"] == "upscale" and upscale["units"] == 1 and upscale["size"] == [512, 512], upscale
    assert "ControlNet 0:" in upscale["infotext"]

    assert_fits(steps["row open"], "prompt", "generate", "cancel", "status", "progress")  # details open: they scroll
    assert_fits(steps["layout"])  # one control row: Krita's window still fits the screen


@pytest.mark.skipif(bool(missing), reason=f"needs {' and '.join(missing)} (apt-get install krita xvfb)")
def test_supir_restore_in_real_krita(tmp_path):
    """Upscale mode offers Restore (SUPIR) when the server lists a SUPIR model; its upscale
    runs SUPIR with the SDXL checkpoint, at the slider's tau_r."""
    import json as json_

    from engine.demo.builder import build_checkpoint, build_sdxl_folder
    from engine.demo.supir import build_supir_file
    from tests.conftest import ServerProcess

    models = tmp_path / "models"
    build_checkpoint(models / "checkpoints" / "a-sd15.safetensors")
    folder = build_sdxl_folder(models / "checkpoints" / "tiny-xl")
    unet = json_.loads((folder / "unet" / "config.json").read_text())
    vae = json_.loads((folder / "vae" / "config.json").read_text())
    build_supir_file(models / "SUPIR" / "SUPIR-v0Q.safetensors", unet, vae, seed=1)
    server = ServerProcess("--models", str(models), "--no-preload")
    try:
        report = run_krita(server.url, tmp_path, scenario="supir.py")
    finally:
        server.stop()
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["connected"]["model"] == "a-sd15" and steps["connected"]["supir"] == ["SUPIR-v0Q"]
    assert steps["connected"]["sdxl"] == "tiny-xl"  # the docker's SD1.5 model cannot restore: the SDXL one
    panel = steps["panel"]
    assert panel["visible"] and not panel["generate_mode_visible"], panel
    assert not panel["details_before"] and panel["details_after"] and panel["label"] == "fidelity (τ 2)"
    # Restore ticked: Krita's window still fits the screen; the first row shows, the second scrolls
    assert_fits(panel["layout"], "prompt", "generate", "cancel", "status", "progress", "restore")
    done = steps["upscaled"]
    assert done["size"] == [96, 80] and done["panel_on_screen"], done
    assert done["request"] == {"model": "tiny-xl", "sampler": "Euler", "steps": 1, "cfg": 7.5, "supir": "SUPIR-v0Q",
                               "guidance": 2.0, "s_churn": 5.0, "cfg_start": 4.0, "units": 0}
    assert "SUPIR: SUPIR-v0Q, Restore guidance: 2" in done["infotext"], done


def kritarc_group(path: Path, group: str) -> dict[str, str]:
    """One [group] of Krita's settings file (KConfig's INI dialect), as plain strings."""
    entries, current = {}, None
    for line in path.read_text("utf-8").splitlines():
        if line.startswith("[") and line.rstrip().endswith("]"):
            current = line.strip()[1:-1]
        elif current == group and "=" in line:
            key, value = line.split("=", 1)
            entries[key.strip()] = value
    return entries


@pytest.mark.skipif(bool(missing), reason=f"needs {' and '.join(missing)} (apt-get install krita xvfb)")
def test_settings_stay_across_krita_sessions(demo_models, tmp_path, monkeypatch):
    """Issue 13, "settings that stay": Krita started twice over one profile. The first session
    types the server, the token ("Remember the token" ticked) and the docker's settings into
    its widgets and quits by File > Quit; the second shows them all again before anything is
    typed and connects to a token-guarded server with the remembered token. Unticking
    "Remember" there takes the token out of kritarc."""
    import secrets

    from tests.conftest import ServerProcess

    token = "pb-" + secrets.token_urlsafe(12)
    monkeypatch.setenv("PAINTBRIDGE_TEST_TOKEN", token)
    server = ServerProcess("--demo", "--token", token)
    kritarc = tmp_path / "config" / "kritarc"
    try:
        server.wait_for_log(r"loaded paintbridge-demo", timeout=180.0)
        first = {s["step"]: s for s in run_krita(server.url, tmp_path, "first", scenario="sessions.py")["steps"]}
        stored = kritarc_group(kritarc, "paintbridge")
        second = {s["step"]: s for s in run_krita(server.url, tmp_path, "second", scenario="sessions.py",
                                                  fresh=False)["steps"]}
    finally:
        server.stop()
    stored_after = kritarc_group(kritarc, "paintbridge")

    assert first["first start"]["shown"]["token"] == "" and not first["first start"]["shown"]["remember"]
    wanted = first["first set"]["shown"]
    assert wanted["server"] == server.url and wanted["token"] == token and wanted["remember"], wanted
    assert wanted["mode"] == "upscale" and wanted["preset"] == "Ink wash (sessions)" and wanted["upscaler"], wanted
    assert wanted["sampler"] != "Euler a" and wanted["live_strength"] == 40 and wanted["hires"] == 0.3, wanted
    # Kept in kritarc, in plain text, only because "Remember the token" was ticked (prefs.py says why
    # kritarc: Krita 5.1's Python and PyQt5 reach no system keychain); unticked, it is gone.
    assert stored.get("token") == token and stored.get("remember_token") == "true", stored
    assert stored_after.get("token", "") == "" and stored_after.get("remember_token") == "false", stored_after

    # The second Krita, before anything is typed: every setting as the first one left it. The
    # lists that come from the server (models, upscalers, presets' list) fill at connection.
    shown = second["second start"]["shown"]
    later = {"model", "upscaler", "preset"}
    assert {k: v for k, v in shown.items() if k not in later} == {k: v for k, v in wanted.items() if k not in later}
    connected = second["second connected"]
    assert connected["shown"] == wanted, (connected["shown"], wanted)  # and the server's lists pick the same
    assert connected["status"].startswith("Connected"), connected  # the remembered token opened the door
    assert second["forgotten"]["shown"]["token"] == token and not second["forgotten"]["shown"]["remember"]


@pytest.mark.skipif(bool(missing), reason=f"needs {' and '.join(missing)} (apt-get install krita xvfb)")
def test_upscale_undo_steps_and_the_api_probes_in_real_krita(server, tmp_path):
    """Issue 13: an upscale applied onto an image of the old size is two commands in Krita 5.1.5
    (Image > Scale, then Add Layer; BENCHMARKS.md "What lands on the undo stack" says why not
    one), which the plugin links: one Ctrl+Z gives back the size, the layers and every pixel,
    one Ctrl+Shift+Z the upscale. The probes pin down the API facts behind that (and behind
    Live's overlay, issue 18)."""
    report = run_krita(server.url, tmp_path, scenario="undo_steps.py")
    steps = {s["step"]: s for s in report["steps"]}

    up = steps["upscale undo"]
    before, after = up["before"], up["after"]
    assert before["size"] == [64, 48] and after["size"] == [128, 96], up
    assert after["layers"][:-1] == before["layers"] and after["layers"][-1].startswith("Upscaled ×2"), up
    new = up["undo_after"]["texts"][len(up["undo_before"]["texts"]):]
    assert len(new) == 2 and new[-1] == "Add Layer", new  # Krita's two commands: the scaling, then the layer
    undone = up["undone"]  # one Ctrl+Z: the old size, the painter's layers, every pixel as it was
    assert undone["size"] == [64, 48] and undone["layers"] == before["layers"], undone
    assert undone["sums"] == before["sums"], undone
    assert undone["undo"]["done"] == up["undo_before"]["done"] == 2, undone  # the stack's position as before
    assert undone["undo"]["texts"] == up["undo_after"]["texts"], undone  # (both still there to redo)
    redone = up["redone"]  # one Ctrl+Shift+Z: the upscale back, whole
    assert {k: redone[k] for k in ("size", "layers", "sums")} == after, redone
    assert redone["undo"]["done"] == up["undo_after"]["done"] == 4, redone
    assert redone["undo"]["texts"] == up["undo_after"]["texts"], redone

    probe = steps["probe setChildNodes"]
    # Node.setChildNodes (the only way into the stack without an undo command) puts a layer in
    # without a command, but reorders the painter's layers on the way ...
    before_layers = probe["before"]["layers"]
    assert probe["added"]["undo"]["texts"] == probe["before"]["undo"]["texts"], probe
    assert sorted(probe["added"]["layers"]) == sorted([*before_layers, "Added without undo"]), probe
    assert probe["added"]["layers"] != [*before_layers, "Added without undo"], probe
    # ... one undo of an Image > Scale made after it gives the old size back and keeps that layer:
    # no single undo step takes back a size change and a layer together through this API ...
    assert probe["one_undo"]["size"] == [32, 24] and "Added without undo" in probe["one_undo"]["layers"], probe
    # ... and it cannot take the layer out again (the stack only reshuffled once more).
    assert "Added without undo" in probe["removed"]["layers"], probe
    repaint = steps["probe repaint"]  # a repaint adds no undo command; refreshProjection shows it ...
    assert repaint["undo_after"] == repaint["undo_before"], repaint
    # ... in the projection, which is what Live mode reads: an overlay layer would be read back.
    assert repaint["projection_pixel"] == [30, 160, 220, 255] != repaint["painting_pixel"], repaint
    print("refreshProjection after setPixelData, 1024x1024 (ms):", repaint["ms"])
