"""Runs inside the real Krita (loaded by the plugin's test hook).

Drives the PaintBridge docker through its own code paths, step by step on Qt
timers, as a painter would: the docker's layout on a 1280x800 screen, automatic
resolution, a feathered selection refine, expand, the history (apply, discard,
saved in the .kra and restored), the queue (cancel one of two), upscale, and the
UI-thread time of a 4096x4096 job. Writes a JSON report and screenshots, then
quits Krita.
"""

import os
import sys
import time

from krita import Krita, Selection
from PyQt5.QtCore import QTimer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared harness beside this file
from harness import (
    WORK,
    checksum,
    configure,
    configure_upscale,
    ctx,
    docker,
    essentials,
    idle,
    kd,
    last_sent,
    layout,
    log,
    names,
    new_document,
    record_requests,
    report,
    s_docker,
    s_reopen,
    set_mode,
    settled,
    shot,
)
from harness import run as start

ONLY = set(filter(None, os.environ.get("PAINTBRIDGE_ONLY", "").split(",")))


def alpha_of(node, x, y, w, h):
    return bytes(node.pixelData(x, y, w, h))[3::4]


# -- steps ---------------------------------------------------------------------------------
def s_connected():
    d = docker()
    if d.capabilities is None:
        return False
    log("connected", models=[m.name for m in d.capabilities.models], status=d.status.text(),
        upscalers=d.capabilities.upscalers)
    record_requests(d)
    ctx["doc"], ctx["paint"] = new_document(2048, 1536, "Auto resolution")
    return True


def s_layout():
    """The painter's screen: 1280x800, Krita's default dockers and ours."""
    d = docker()
    if not settled(2):  # let the window settle
        return False
    fit = layout({**essentials(d), "strength": d.strength_slider, "progress": d.progress, "message": d.message},
                 shot_name="krita-layout.png")
    log("layout", **fit, strength_label=d.strength_label.text())
    report["layout_screenshot"] = fit["screenshot"]
    return True


def s_generate_auto():
    d = docker()
    configure(d, "a lighthouse at dusk", steps=2)
    d.resolution_combo.setCurrentIndex(0)  # automatic
    ctx["sizes_before"] = d.sizes_label.text()
    ctx["tag"] = d.generate()
    return True


def s_generated_auto():
    d, doc = docker(), ctx["doc"]
    if not idle(d):
        return False
    history = d._history(doc)
    entry = history.entries[-1] if history.entries else None
    before = names(doc)
    applied = d.apply_selected() if entry is not None else []
    new = [n for n in doc.topLevelNodes() if n.name() not in before]
    bounds = new[0].bounds() if new else None
    request = last_sent()
    log("auto resolution", sizes_label=ctx["sizes_before"], request={"kind": request.kind, "width": request.width, "height": request.height,
        "resolution": getattr(request, "resolution", None), "hires": request.hires and {"scale": request.hires.scale}},
        infotext=entry.infotext if entry else "", entry_sizes=entry.size_text if entry else "", applied=applied,
        layer=[bounds.width(), bounds.height()] if bounds else None, message=d.message.text(), queue=[r.text() for r in d.queue.rows])
    return True


def s_refine_ellipse():
    d = docker()
    doc, paint = new_document(256, 256, "Feathered refine")
    ctx.update(doc=doc, paint=paint, paint_sum=checksum(paint, doc))
    mask = bytearray(256 * 256)
    for y in range(256):
        for x in range(256):
            if ((x - 128) / 70) ** 2 + ((y - 128) / 50) ** 2 <= 1:
                mask[y * 256 + x] = 255
    selection = Selection()
    selection.setPixelData(bytes(mask), 0, 0, 256, 256)
    doc.setSelection(selection)
    configure(d, "a glowing moon", steps=4, strength=50, seed=77)
    d.grow_spin.setValue(4)
    d.feather_spin.setValue(8)
    d._update_labels()
    ctx["strength_label"], ctx["button"] = d.strength_label.text(), d.generate_button.text()
    from paintbridge.regions import Rect

    ctx["expected"] = kd().soft_mask(doc, Rect(0, 0, 256, 256), 4, 8)
    ctx["tag"] = d.generate()
    return True


def s_refined():
    d, doc = docker(), ctx["doc"]
    if not idle(d):
        return False
    before = names(doc)
    Krita.instance().action("deselect").trigger()
    applied = d.apply_selected()
    new = [n for n in doc.topLevelNodes() if n.name() not in before]
    alpha = alpha_of(new[0], 0, 0, 256, 256) if new else b""
    expected = ctx["expected"]
    diff = max((abs(a - e) for a, e in zip(alpha, expected, strict=False)), default=999)
    outside = [a for a, e in zip(alpha, expected, strict=False) if e == 0]
    soft = sum(1 for e in expected if 0 < e < 255)
    request = last_sent()
    log("refine selection", applied=applied, new=[n.name() for n in new], max_alpha_diff=diff,
        outside_max=max(outside, default=0), outside_n=len(outside), soft_pixels=soft, inside_opaque=sum(1 for a in alpha if a == 255),
        painter_unchanged=checksum(ctx["paint"], doc) == ctx["paint_sum"], strength_label=ctx["strength_label"],
        button=ctx["button"], request={"kind": request.kind, "strength": request.strength,
                                       "inpaint_mode": getattr(request, "inpaint_mode", None)},
        layers=names(doc))
    return True


def s_expand():
    d = docker()
    doc, paint = new_document(256, 256, "Expand")
    ctx.update(doc=doc, paint=paint, original=bytes(paint.pixelData(0, 0, 256, 256)))
    configure(d, "a calm sea", steps=4, seed=5)
    ctx["before"] = names(doc)
    ctx["tag"] = d.expand_canvas("right", 64)
    return True


def s_expanded():
    d, doc = docker(), ctx["doc"]
    if not idle(d):
        return False
    applied = d.apply_selected()
    new = [n for n in doc.topLevelNodes() if n.name() not in ctx["before"]]
    strip = bytes(new[0].pixelData(256, 0, 64, 256)) if new else b""
    strip_alpha = strip[3::4]
    colours = {strip[i:i + 3] for i in range(0, len(strip), 4 * 97)}
    log("expand", size=[doc.width(), doc.height()], applied=applied,
        painter_unchanged=bytes(ctx["paint"].pixelData(0, 0, 256, 256)) == ctx["original"],
        strip_opaque=sum(1 for a in strip_alpha if a == 255), strip_n=len(strip_alpha), strip_colours=len(colours),
        request_mode=getattr(last_sent(), "inpaint_mode", None))
    return True


def s_history():
    d = docker()
    doc, paint = new_document(128, 128, "History")
    ctx.update(doc=doc, paint=paint, before=names(doc))
    configure(d, "two red apples on a table", steps=3, seed=42, batch=2)
    ctx["tag"] = d.generate()
    return True


def s_history_done():
    d, doc = docker(), ctx["doc"]
    if not idle(d):
        return False
    history = d._history(doc)
    ctx["entries"] = [(e.id, e.seed) for e in history.entries]
    d.history_list.setCurrentRow(0)
    preview = kd().find_preview(doc)
    ctx["preview_seen"] = preview is not None
    d.discard_selected()
    d.history_list.setCurrentRow(0)
    kept = d._selected_entry()[1]
    ctx["kept"] = {"id": kept.id, "seed": kept.seed, "prompt": kept.prompt}
    applied = d.apply_selected()
    new = [n for n in doc.topLevelNodes() if n.name() not in ctx["before"]]
    path = os.path.join(WORK, "history.kra")
    d.flush_history()
    doc.setBatchmode(True)
    saved = doc.saveAs(path)
    log("history", entries=ctx["entries"], preview_seen=ctx["preview_seen"], applied=applied,
        new=[n.name() for n in new], saved=saved, annotation_types=list(doc.annotationTypes()),
        remaining=[e.id for e in history.entries])
    ctx["path"] = path
    doc.close()
    return True


def s_reopened():
    d, doc = docker(), ctx["doc"]
    if not settled(1):
        return False
    d._refresh_history()
    history = d._history(doc)
    items = [d.history_list.item(i) for i in range(d.history_list.count())]
    entry = history.entries[0] if history.entries else None
    log("reopened", entries=[(e.id, e.seed, e.prompt) for e in history.entries], kept=ctx["kept"],
        items=[i.text() for i in items], icons=[not i.icon().isNull() for i in items],
        settings={k: entry.settings.get(k) for k in ("prompt", "steps", "seed", "sampler")} if entry else None,
        png_bytes=len(entry.png) if entry else 0, layers=names(doc))
    d.show_history()  # the PaintBridge History docker (history_docker.py)
    return True


def s_queue():
    d = docker()
    report["history_screenshot"] = shot("krita-history.png")
    doc, _paint = new_document(256, 256, "Queue")
    configure(d, "first in line", steps=12, seed=1)
    first = d.generate()
    configure(d, "second in line", steps=12, seed=2)
    second = d.generate()
    ctx.update(doc=doc, first=first, second=second, seen={})
    return True


def s_queue_both_accepted():
    d = docker()
    rows = {r.tag: r for r in d.queue.rows}
    if not all(rows[t].job_id for t in (ctx["first"], ctx["second"])):
        return False
    ctx["rows_then"] = [r.text() for r in d.queue.rows if r.tag in (ctx["first"], ctx["second"])]
    ctx["states_then"] = [rows[ctx["first"]].state, rows[ctx["second"]].state]
    ctx["status_then"] = d.status.text()
    d.cancel(ctx["second"])
    return True


def s_queue_done():
    d = docker()
    rows = {r.tag: r for r in d.queue.rows}
    if rows[ctx["first"]].active or rows[ctx["second"]].active:
        if rows[ctx["first"]].state == "running":
            ctx["status_running"] = d.status.text()
            ctx["progress_running"] = d.progress.text()
        return False
    log("queue", rows_then=ctx["rows_then"], states_then=ctx["states_then"], status_then=ctx["status_then"],
        status_running=ctx.get("status_running"), progress_running=ctx.get("progress_running"),
        final=[rows[ctx["first"]].state, rows[ctx["second"]].state], rows=[r.text() for r in d.queue.rows],
        status=d.status.text())
    return True


PHASES = ("read_ms", "submit_ms", "result_ms", "place_ms")  # UI-thread time of one job, by phase


def big_start(size):
    """size x size: the UI thread's time to read, send, receive and place (an upscale x1)."""
    d = docker()
    if ctx.get("big_doc") != size:  # the document first; the job on the next tick, so that
        ctx["doc"], _paint = new_document(size, size, f"Big {size}", fill=bytes((40, 90, 160, 255)))
        ctx["big_doc"] = size  # making it (a test's set-up) is not counted as the job's stall
        return False
    doc = ctx["doc"]
    doc.waitForDone()
    configure_upscale(d, 1.0, denoise=0.0)
    ctx["gaps_from"] = d.ticks
    ctx["t0"] = time.perf_counter()
    watch(d)
    ctx["tag"] = d.run_mode()
    return True


def watch(d):
    """Where the UI stalls fall: a 5 ms Python heartbeat and marks of what the plugin did when."""
    marks = ctx["marks"] = []
    stalls = ctx["stalls"] = []
    if "beat" not in ctx:
        beat = ctx["beat"] = {"last": time.perf_counter()}

        def tick():
            now = time.perf_counter()
            if now - beat["last"] > 0.04:
                ctx["stalls"].append((round((beat["last"] - ctx["t0"]) * 1000), round((now - beat["last"]) * 1000)))
            beat["last"] = now

        timer = ctx["beat_timer"] = QTimer()
        timer.timeout.connect(tick)
        timer.start(5)

        def mark(name, fn):
            def wrapped(*args, **kwargs):
                ctx["marks"].append((name, round((time.perf_counter() - ctx["t0"]) * 1000)))
                out = fn(*args, **kwargs)
                ctx["marks"].append((name + " end", round((time.perf_counter() - ctx["t0"]) * 1000)))
                return out
            return wrapped

        d._on_result = mark("on_result", d._on_result)
        d._place = mark("place", d._place)
        put = d.worker.events.put
        d.worker.events.put = lambda event, *a, **k: (ctx["marks"].append(("event " + event.kind, round((time.perf_counter() - ctx["t0"]) * 1000))), put(event, *a, **k))[1]
    return marks, stalls


def big_done(size):
    d, doc = docker(), ctx["doc"]
    if not idle(d):
        return False
    if "big_snap" not in ctx:  # what the job cost, taken before this step's own reads and checksums
        gaps = d.timer_gaps[-(d.ticks - ctx["gaps_from"]):] if d.ticks > ctx["gaps_from"] else []
        ctx["big_snap"] = {"timings": dict(getattr(d, "last_timings", {})), "gaps": gaps, "stalls": list(ctx["stalls"]),
                           "marks": [m for m in ctx["marks"] if not m[0].startswith("event progress")],
                           "wall_s": time.perf_counter() - ctx["t0"]}
        return False
    snap = ctx.pop("big_snap")
    timings, gaps = snap["timings"], snap["gaps"]
    top = [n for n in doc.topLevelNodes()][-1]
    painted = next(n for n in doc.topLevelNodes() if n.name() == "Painted")
    same = checksum(top, doc) == checksum(painted, doc)  # Lanczos x1 gives the painter's pixels back
    ui_total = sum(timings.get(k, 0.0) for k in PHASES)
    log("big" if size == 4096 else f"big {size}", size=size, timings=timings, ui_total_ms=ui_total,
        ours_ms=ui_total - timings.get("krita_add_ms", 0.0), wall_s=snap["wall_s"],
        max_timer_gap_ms=max(gaps, default=0), timer_gaps_over_100ms=sum(1 for g in gaps if g > 100),
        ticks=len(gaps), top=top.name(), rows=[r.text() for r in d.queue.rows], all_log=d.log[-10:],
        top_size=[top.bounds().width(), top.bounds().height()], pixels_right=same, message=d.message.text(),
        marks=snap["marks"], stalls_over_40ms=snap["stalls"])
    report["log"] = d.log[-30:]
    parts = {}
    from PyQt5.QtGui import QImage

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        parts[name] = round((time.perf_counter() - t0) * 1000, 1)
        return out

    # The previous plugin's UI-thread path, side by side in this session on the same document:
    # the whole read on the UI thread, then an empty layer added and filled in the stack.
    raw = timed("before: read (document.pixelData, UI thread)", lambda: doc.pixelData(0, 0, size, size))
    data = bytes(raw)
    old = doc.createNode("before", "paintlayer")
    timed("before: addChildNode (empty)", lambda: doc.rootNode().addChildNode(old, None))
    timed("before: setPixelData (in the stack)", lambda: old.setPixelData(data, 0, 0, size, size))
    parts["before: UI total"] = round(sum(v for k, v in parts.items() if k.startswith("before: ")), 1)
    old.remove()
    doc.waitForDone()
    if size != 4096:
        log(f"big {size} parts", parts=parts)
        return True
    node = top
    timed("node.pixelData", lambda: node.pixelData(0, 0, 4096, 4096))
    timed("document.pixelData, one 2 MiB strip", lambda: doc.pixelData(0, 0, 4096, 128))
    timed("projection()", lambda: doc.projection(0, 0, 4096, 4096))
    image = timed("QImage wrap", lambda: QImage(data, 4096, 4096, 4096 * 4, QImage.Format_ARGB32))
    rgba = timed("convert to RGBA8888", lambda: image.convertToFormat(QImage.Format_RGBA8888))
    timed("constBits asstring", lambda: kd().image_bytes(rgba))
    fresh = doc.createNode("bench", "paintlayer")
    timed("setPixelData (outside the stack)", lambda: fresh.setPixelData(data, 0, 0, 4096, 4096))
    timed("setPixelData, one 2 MiB strip", lambda: fresh.setPixelData(data[: 4096 * 4 * 128], 0, 0, 4096, 128))
    copy = timed("duplicate()", fresh.duplicate)
    timed("addChildNode (filled)", lambda: doc.rootNode().addChildNode(fresh, None))
    timed("addChildNode (duplicate)", lambda: doc.rootNode().addChildNode(copy, None))
    timed("remove()", copy.remove)
    timed("refreshProjection", doc.refreshProjection)
    timed("waitForDone", doc.waitForDone)
    log("big parts", parts=parts)
    set_mode(d, "generate")
    return True


def s_big_small():
    return big_start(1024)


def s_big_small_done():
    return big_done(1024)


def s_big():
    return big_start(4096)


def s_big_done():
    return big_done(4096)


STEPS = [
    (s_docker, 120), (s_connected, 120), (s_layout, 30),
    (s_generate_auto, 10), (s_generated_auto, 600),
    (s_refine_ellipse, 30), (s_refined, 120),
    (s_expand, 30), (s_expanded, 120),
    (s_history, 10), (s_history_done, 120), (s_reopen, 30), (s_reopened, 30),
    (s_queue, 10), (s_queue_both_accepted, 60), (s_queue_done, 180),
    (s_big_small, 60), (s_big_small_done, 120), (s_big, 60), (s_big_done, 240),
]
if ONLY:  # a quicker run of some parts: PAINTBRIDGE_ONLY=layout,refine,...
    groups = {"auto": (s_generate_auto, s_generated_auto), "refine": (s_refine_ellipse, s_refined),
              "expand": (s_expand, s_expanded), "history": (s_history, s_history_done, s_reopen, s_reopened),
              "queue": (s_queue, s_queue_both_accepted, s_queue_done), "big": (s_big_small, s_big_small_done, s_big, s_big_done)}
    keep = {s_docker, s_connected, s_layout} | {f for g in ONLY for f in groups.get(g, ())}
    STEPS = [s for s in STEPS if s[0] in keep]


def run():
    start(STEPS)
