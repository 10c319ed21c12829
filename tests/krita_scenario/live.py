"""Runs inside the real Krita (loaded by the plugin's test hook): Live mode and region layers.

Steps on Qt timers, as a painter would: Live mode on a small painting; the
first picture, popped out into its own window; a "stroke" (pixels set on the
painter's layer, the way a brush stroke changes the canvas) leads to a new
picture, in the docker and the window; Apply (the window's) adds one layer; Krita's
undo removes it in one step; leaving Live mode leaves the undo stack as it was
and closes the window (its geometry kept in kritarc).
Then a region layer with its own prompt goes with Generate. With
PAINTBRIDGE_LIVE_STROKES=N (and PAINTBRIDGE_LIVE_SIDE=512) it also paints N
strokes one after another and records each one's clock for the latency figures.
Writes a JSON report and screenshots, then quits Krita.
"""

import os
import statistics
import sys
import time

from krita import Krita
from paintbridge import popout
from PyQt5.QtCore import Qt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared harness beside this file
from harness import (
    ctx,
    docker,
    essentials,
    last_sent,
    layout,
    log,
    names,
    new_document,
    record_requests,
    report,
    s_docker,
    settled,
    shot,
    undo_state,
)
from harness import run as start

STROKES = int(os.environ.get("PAINTBRIDGE_LIVE_STROKES", "0") or 0)
SIDE = int(os.environ.get("PAINTBRIDGE_LIVE_SIDE", "512") or 512)


def stroke(doc, node, i):
    """A stroke's effect on the canvas: a bar of colour on the painter's layer."""
    w, h = doc.width(), doc.height()
    bar_h = max(4, h // 24)
    y = (i * 2 * bar_h + bar_h) % (h - bar_h)
    colour = bytes(((40 * i) % 256, 200, (90 + 60 * i) % 256, 255))
    node.setPixelData(colour * (w // 2 * bar_h), w // 4, y, w // 2, bar_h)
    doc.refreshProjection()
    return time.perf_counter()


def s_connected():
    d = docker()
    if d.capabilities is None:
        return False
    record_requests(d)
    ctx["doc"], ctx["paint"] = new_document(256, 256, "Live")
    d.prompt_edit.setPlainText("a lighthouse at dusk")
    d.steps_spin.setValue(2)
    d.random_check.setChecked(False)
    d.seed_spin.setValue(4321)
    return True


def s_live_on():
    d = docker()
    if not settled(1.5):  # let Krita finish adding the document
        return False
    ctx["window_before"] = Krita.instance().activeWindow().qwindow().height()
    ctx["undo_start"] = undo_state()
    ctx["layers_start"] = names(ctx["doc"])
    d.live.strength_slider.setValue(50)
    d.mode_buttons["live"].click()
    ctx["live_visible"] = d.live.panel.isVisible()
    ctx["button"] = d.generate_button.text()
    return True


def s_first_picture():
    d = docker()
    if d.live.state.results < 1 or d.live.state.tags or d.live.debounce.pending:
        return False  # the first picture, and nothing else on its way
    ctx["first"] = d.live.image.copy()
    ctx["results_before"] = d.live.state.results
    d.live.popout_button.click()  # the painter pops the picture out: 56 px in the docker at 1280x800
    window = d.live.window
    ctx["popout_opened"] = {"visible": window.isVisible(), "shows_first": window.picture.image is d.live.image,
                            "stored": d.store.get(popout.STORE_KEY, "")}
    ctx["t_stroke"] = stroke(ctx["doc"], ctx["paint"], 1)
    return True


def popout_state(d, newest, shot_name):
    """The popped-out window now: where it is, how large the picture in it is, what it shows,
    and Krita's main window beside it (it must stay inside the screen); the whole screen shot."""
    window = d.live.window
    g, place = window.frameGeometry(), window.picture.picture_rect()
    frame = Krita.instance().activeWindow().qwindow().frameGeometry()
    return {"visible": window.isVisible(), "frame": [g.x(), g.y(), g.width(), g.height()],
            "picture": [place.x, place.y, place.width, place.height],
            "shows_newest": window.picture.image is newest, "line": window.line.text(),
            "is_tool": bool(window.windowFlags() & Qt.Tool), "parent_is_main": window.parentWidget() is
            Krita.instance().activeWindow().qwindow(),
            "main_frame": [frame.x(), frame.y(), frame.width(), frame.height()],
            "docker_picture": [d.live.preview.width(), d.live.preview.height()],
            "screenshot": shot(shot_name, whole_screen=True)}


def s_stroke_picture():
    d = docker()
    if d.live.state.results <= ctx["results_before"] or d.live.log[-1]["changed"] < ctx["t_stroke"]:
        return False
    newest = d.live.image
    first = ctx["first"]
    differs = newest.size() != first.size() or newest.convertToFormat(first.format()) != first
    live_requests = [r for t, r in ctx["sent"] if t.startswith("live")]
    last = live_requests[-1]
    fit = layout({**essentials(d), "preview": d.live.preview, "pause": d.live.pause_button},
                 shot_name="krita-live-picture.png")
    fit.update(preview=fit["widgets"]["preview"]["rect"], tabs_visible=d.tabs.isVisible(),
               window_before_live=ctx["window_before"])
    ctx["layout"] = fit
    report["live_screenshot"] = fit["screenshot"]
    ctx["popout"] = popout_state(d, newest, shot_name="krita-live-popout.png")
    # The painter moves and sizes it: remembered in kritarc, and where it opens next time.
    d.live.window.setGeometry(60, 80, 500, 450)
    log("live picture", differs=differs, results=d.live.state.results, live_visible=ctx["live_visible"],
        button=ctx["button"], latency_ms=1000 * (d.live.log[-1]["shown"] - ctx["t_stroke"]),
        request={"kind": last.kind, "live": last.live, "preview": last.preview, "strength": last.strength,
                 "seed": last.seed, "steps": last.steps, "size": [last.image.width, last.image.height]},
        seeds=sorted({r.seed for r in live_requests}), sent=len(live_requests), line=d.live.line.text(),
        layout=ctx["layout"], popout=ctx["popout"], popout_opened=ctx["popout_opened"],
        poll_ms=statistics.median(d.live.poll_ms) if d.live.poll_ms else None)
    return True


def s_apply():
    d, doc = docker(), ctx["doc"]
    before = names(doc)
    undo_before = undo_state()
    # Apply in the pop-out window: the docker's big button's action ("Apply live picture").
    d.live.window.apply_button.click()
    name = d.live.window.line.text().removeprefix("Applied: ")
    doc.waitForDone()
    new = [n for n in doc.topLevelNodes() if n.name() not in before]
    bounds = new[0].bounds() if new else None
    opaque = sum(1 for a in bytes(new[0].pixelData(0, 0, 256, 256))[3::4] if a == 255) if new else 0
    ctx["applied"] = {"name": name, "new": [n.name() for n in new], "undo_before": undo_before,
                      "undo_after": undo_state(), "layer": [bounds.width(), bounds.height()] if bounds else None,
                      "opaque": opaque}
    return True


def s_undo():
    """Krita's undo, once Krita's Undo History shows the Apply as the current command: on a loaded
    machine that takes a while, and an undo triggered before it left Krita's Redo action unnamed."""
    state = undo_state()
    if state["rows"] is not None and state["done"] != state["rows"] - 1 and not settled(5):
        return False
    ctx["applied"]["undo_after"] = state
    Krita.instance().action("edit_undo").trigger()
    return True


def s_undone():
    d, doc = docker(), ctx["doc"]
    # Krita names the command to redo once the undo's stroke has finished: on a loaded machine
    # that can take longer than half a second.
    if not settled(0.5) or (undo_state()["redo"] == "Redo" and not settled(5)):
        return False
    doc.waitForDone()
    ctx["after_undo"] = {"layers": names(doc), "undo": undo_state()}
    d.mode_buttons["generate"].click()
    return True


def s_left():
    d, doc = docker(), ctx["doc"]
    if not settled(0.5):
        return False
    window = d.live.window
    ctx["popout_left"] = {"visible": window is not None and window.isVisible(),
                          "button": d.live.popout_button.isChecked(), "stored": d.store.get(popout.STORE_KEY, "")}
    # Live again, popped out again: where the painter left it (the real Qt round trip of kritarc).
    d.mode_buttons["live"].click()
    d.live.popout_button.click()
    g = d.live.window.geometry()
    ctx["popout_left"]["reopened"] = [g.x(), g.y(), g.width(), g.height()]
    d.mode_buttons["generate"].click()
    ctx["popout_left"]["closed_again"] = not d.live.window.isVisible()
    log("apply and undo", applied=ctx["applied"], popout_left=ctx["popout_left"], after_undo=ctx["after_undo"], layers_start=ctx["layers_start"],
        undo_start=ctx["undo_start"], undo_end=undo_state(), live_active=d.live.active,
        live_visible=d.live.panel.isVisible(), layers_end=names(doc))
    return True


def s_region():
    docker()
    doc, _paint = new_document(256, 256, "Regions")
    ctx["rdoc"] = doc
    umbrella = doc.createNode("Umbrella", "paintlayer")
    umbrella.setPixelData(bytes((30, 30, 220, 255)) * (128 * 128), 0, 0, 128, 128)  # the top-left quarter
    doc.rootNode().addChildNode(umbrella, None)
    doc.setActiveNode(umbrella)
    doc.refreshProjection()
    ctx["umbrella"] = umbrella
    return True


def s_region_generate():
    d, doc = docker(), ctx["rdoc"]
    if not settled(1.0):
        return False
    d.tabs.setCurrentIndex(next(i for i in range(d.tabs.count()) if d.tabs.tabText(i) == "Regions"))
    node_id = d.regions_ui.add_active()
    d.regions_ui.prompt_edit.setPlainText("a red umbrella")  # typed, as the painter would
    d.regions_ui.weight_spin.setValue(1.5)
    ctx["region_items"] = [d.regions_ui.list.item(i).text() for i in range(d.regions_ui.list.count())]
    ctx["annotation"] = bytes(doc.annotation("paintbridge/regions")).decode() if "paintbridge/regions" in doc.annotationTypes() else ""
    ctx["node_id"] = node_id
    d.prompt_edit.setPlainText("a beach in summer")
    d.strength_slider.setValue(100)
    d.resolution_combo.setCurrentIndex(1)  # exact: the area as is, one pass
    ctx["region_layout"] = layout({**essentials(d), "progress": d.progress, "regions": d.regions_ui.list,
                                   "region_prompt": d.regions_ui.prompt_edit}, shot_name="krita-regions.png")
    report["regions_screenshot"] = ctx["region_layout"]["screenshot"]
    ctx["tag"] = d.generate()
    return True


def s_region_done():
    d, doc = docker(), ctx["rdoc"]
    if d.jobs or d.background.busy or d.queue.active():
        return False
    history = d._history(doc)
    entry = history.entries[-1] if history.entries else None
    request = last_sent(ctx["tag"])
    log("region", items=ctx["region_items"], annotation=ctx["annotation"], infotext=entry.infotext if entry else "",
        request_regions=[{"prompt": r.prompt, "weight": r.weight, "mask": [r.mask.width, r.mask.height],
                          "covered": sum(1 for v in r.mask.data if v)} for r in request.regions],
        message=d.message.text(), layout=ctx["region_layout"])
    return True


def s_measure_start():
    """N strokes, each after the previous picture: stroke-to-picture, as the painter waits for it."""
    d = docker()
    if not STROKES:
        return True
    doc, paint = new_document(SIDE, SIDE, "Live latency")
    ctx.update(mdoc=doc, mpaint=paint, strokes=[], settle=time.perf_counter(), phase="settle")
    d.prompt_edit.setPlainText("a lighthouse at dusk")
    d.mode_buttons["live"].click()
    return True


def s_measure():
    d = docker()
    if not STROKES:
        return True
    live = d.live
    if ctx["phase"] == "settle":  # the first picture of this canvas, then quiet
        if live.state.tags or live.debounce.pending or live.state.results == 0 or live.log[-1]["changed"] < ctx["settle"]:
            return False
        ctx["phase"] = "stroke"
    if ctx["phase"] == "stroke":
        i = len(ctx["strokes"])
        if i >= STROKES:
            log("measure", side=SIDE, strokes=ctx["strokes"], poll_ms=live.poll_ms[-400:],
                poll_interval_ms=live.poller.interval_s * 1000)
            d.mode_buttons["generate"].click()
            return True
        ctx["results"] = live.state.results
        ctx["t_stroke"] = stroke(ctx["mdoc"], ctx["mpaint"], i + 2)
        ctx["phase"] = "wait"
        return False
    if live.state.results > ctx["results"] and live.log[-1]["changed"] >= ctx["t_stroke"]:
        ctx["strokes"].append({"stroke": ctx["t_stroke"], **live.log[-1]})
        ctx["phase"] = "stroke"
    return False


def s_poll_cost():
    """What one poll costs the UI thread on bigger canvases (read the projection + hash), no job sent."""
    if not STROKES:
        return True
    from paintbridge import kritadoc, live
    from paintbridge.regions import Rect

    costs = {}
    for side_w, side_h in ((1024, 1024), (2048, 1536), (4096, 4096)):
        doc, _paint = new_document(side_w, side_h, f"Poll {side_w}")
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            raw = kritadoc.read_raw(doc, Rect(0, 0, side_w, side_h), "visible")
            live.fingerprint(bytes(raw.data))
            times.append(1000 * (time.perf_counter() - t0))
        costs[f"{side_w}x{side_h}"] = round(statistics.median(times), 1)
        doc.setModified(False)  # closed without a save prompt
        doc.close()
    log("poll cost", ms=costs)
    return True


STEPS = [
    (s_docker, 120), (s_connected, 120),
    (s_live_on, 30), (s_first_picture, 120), (s_stroke_picture, 120),
    (s_apply, 30), (s_undo, 30), (s_undone, 30), (s_left, 30),
    (s_region, 30), (s_region_generate, 30), (s_region_done, 180),
    (s_measure_start, 30), (s_measure, 60 + 30 * STROKES), (s_poll_cost, 120),
]


def run():
    start(STEPS, interval_ms=50)
