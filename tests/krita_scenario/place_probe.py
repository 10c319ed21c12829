"""Probe: where Krita's UI-thread time goes when a big layer is read and placed.

Runs inside the real Krita (the plugin's scenario hook). Each experiment is timed on
the UI thread with perf_counter; a 5 ms Python QTimer heartbeat records the longest
gap (a UI stall, or the GIL held by another thread). Writes a JSON report.
"""

import json
import os
import threading
import time
import traceback

from krita import Krita
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication

REPORT = os.environ["PAINTBRIDGE_REPORT"]
SIZE = int(os.environ.get("PAINTBRIDGE_PROBE_SIZE", "4096"))
report = {"steps": [], "errors": [], "size": SIZE}
beat = {"last": time.perf_counter(), "gaps": []}
ctx = {}


def write():
    with open(REPORT, "w") as f:
        json.dump(report, f, indent=1)


def heartbeat():
    now = time.perf_counter()
    beat["gaps"].append((now - beat["last"]) * 1000)
    beat["last"] = now


def gaps_since(mark):
    g = beat["gaps"][mark:]
    return round(max(g, default=0), 1)


def timed(out, name, fn):
    t0 = time.perf_counter()
    value = fn()
    out[name] = round((time.perf_counter() - t0) * 1000, 1)
    return value


def pixel(doc, x, y):
    return list(bytes(doc.pixelData(x, y, 1, 1)))


OURS = bytes((16, 32, 48, 255))


def ours(n):
    return OURS * n


def strips_in_thread(fn, rows):
    """Run fn(y, h) for strips of `rows` rows on a Python thread; returns (thread, times)."""
    times = []

    def work():
        for y in range(0, SIZE, rows):
            t0 = time.perf_counter()
            fn(y, min(rows, SIZE - y))
            times.append((time.perf_counter() - t0) * 1000)

    thread = threading.Thread(target=work)
    thread.start()
    return thread, times


def transfers(doc, painted):
    """Reads and writes: on the UI thread, on a Python thread whole and in strips."""
    data = ours(SIZE * SIZE)
    strip = SIZE * 4
    r = {}
    mark = len(beat["gaps"])
    timed(r, "node.pixelData", lambda: painted.pixelData(0, 0, SIZE, SIZE))
    timed(r, "document.pixelData", lambda: doc.pixelData(0, 0, SIZE, SIZE))
    timed(r, "document.pixelData 256-row strip", lambda: doc.pixelData(0, 0, SIZE, 256))
    report["steps"].append({"step": "read UI", **r, "max_gap": gaps_since(mark)})
    yield 1.0
    for rows in (256, 64):  # a Python thread reading in strips: does the UI heartbeat stall?
        mark = len(beat["gaps"])
        t0 = time.perf_counter()
        chunks = []
        thread, times = strips_in_thread(lambda y, h, chunks=chunks: chunks.append(bytes(doc.pixelData(0, y, SIZE, h))), rows)
        while thread.is_alive():
            yield 0.005
        report["steps"].append({"step": f"read thread {rows} rows", "wall_ms": round((time.perf_counter() - t0) * 1000, 1),
                                "strip_max_ms": round(max(times), 1), "strip_sum_ms": round(sum(times), 1),
                                "max_gap": gaps_since(mark)})
        yield 1.0
    node = doc.createNode("bg whole", "paintlayer")  # one whole setPixelData on a Python thread
    mark = len(beat["gaps"])
    t0 = time.perf_counter()
    thread = threading.Thread(target=lambda: node.setPixelData(data, 0, 0, SIZE, SIZE))
    thread.start()
    while thread.is_alive():
        yield 0.005
    report["steps"].append({"step": "write thread whole (detached)", "wall_ms": round((time.perf_counter() - t0) * 1000, 1),
                            "max_gap": gaps_since(mark)})
    yield 1.0
    node = doc.createNode("bg strips", "paintlayer")  # strips on a thread, then into the stack
    mark = len(beat["gaps"])
    t0 = time.perf_counter()
    thread, times = strips_in_thread(lambda y, h: node.setPixelData(data[y * strip:(y + h) * strip], 0, y, SIZE, h), 128)
    while thread.is_alive():
        yield 0.005
    r = {"wall_ms": round((time.perf_counter() - t0) * 1000, 1), "strip_max_ms": round(max(times), 1),
         "strip_sum_ms": round(sum(times), 1), "max_gap_fill": gaps_since(mark)}
    yield 0.5
    timed(r, "addChildNode (filled)", lambda: doc.rootNode().addChildNode(node, None))
    r["projection_right_after"] = pixel(doc, 10, 10) == list(OURS)
    report["steps"].append({"step": "detached strips then add", **r})
    yield 1.0
    node.remove()
    yield 1.0
    r = {}  # the previous plugin's order: an empty layer into the stack, then its pixels
    node = doc.createNode("in stack", "paintlayer")
    timed(r, "addChildNode (empty)", lambda: doc.rootNode().addChildNode(node, None))
    timed(r, "setPixelData (in the stack)", lambda: node.setPixelData(data, 0, 0, SIZE, SIZE))
    yield 2.0
    r["projection_after_2s"] = pixel(doc, 10, 10) == list(OURS)
    timed(r, "refreshProjection", doc.refreshProjection)
    r["projection_after_refresh"] = pixel(doc, 10, 10) == list(OURS)
    report["steps"].append({"step": "add then fill (previous order)", **r})
    yield 1.0
    node.remove()
    yield 1.0
    r = {}  # a hidden layer filled, added, then shown
    node = doc.createNode("hidden", "paintlayer")
    node.setVisible(False)
    node.setPixelData(data, 0, 0, SIZE, SIZE)
    timed(r, "addChildNode (hidden, filled)", lambda: doc.rootNode().addChildNode(node, None))
    timed(r, "setVisible(True)", lambda: node.setVisible(True))
    yield 2.0
    r["projection_after_show_2s"] = pixel(doc, 10, 10) == list(OURS)
    report["steps"].append({"step": "hidden then shown", **r})
    node.remove()
    yield 1.0
    r = {}  # Krita's own action adds a layer without waiting
    doc.setActiveNode(painted)
    before = doc.activeNode().uniqueId()
    mark = len(beat["gaps"])
    timed(r, "action add_new_paint_layer", Krita.instance().action("add_new_paint_layer").trigger)
    t0 = time.perf_counter()
    while doc.activeNode() is None or doc.activeNode().uniqueId() == before:
        if time.perf_counter() - t0 > 5:
            break
        yield 0.005
    r["until_active_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    r["max_gap"] = gaps_since(mark)
    report["steps"].append({"step": "action add layer", **r})
    if doc.activeNode().uniqueId() != before:
        doc.activeNode().remove()
    doc.setActiveNode(painted)
    yield 1.0


# -- experiments: generators yield between phases so the event loop runs -------------------
def experiments():
    app = Krita.instance()
    while app.activeWindow() is None:
        yield 0.2
    doc = app.createDocument(SIZE, SIZE, "Probe", "RGBA", "U8", "", 72.0)
    app.activeWindow().addView(doc)
    painted = doc.createNode("Painted", "paintlayer")
    painted.setPixelData(bytes((200, 100, 50, 255)) * (SIZE * SIZE), 0, 0, SIZE, SIZE)
    doc.rootNode().addChildNode(painted, None)
    doc.setActiveNode(painted)
    doc.waitForDone()
    yield 2.0
    yield from transfers(doc, painted)
    colours = iter(range(1, 250, 7))

    def trigger_test(name, fn):
        c = next(colours)
        colour = bytes((c, 255 - c, 40, 255))
        node = doc.createNode(name, "paintlayer")
        doc.rootNode().addChildNode(node, None)
        yield 1.0
        node.setPixelData(colour * (SIZE * SIZE), 0, 0, SIZE, SIZE)
        yield 0.5
        stale = bytes(doc.pixelData(10, 10, 1, 1)) != colour
        r = {}
        mark = len(beat["gaps"])
        timed(r, "ui_ms", lambda: fn(node))
        yield 2.0
        r["max_gap"] = gaps_since(mark)
        r["stale_before"] = stale
        r["shown_after_2s"] = bytes(doc.pixelData(10, 10, 1, 1)) == colour
        report["steps"].append({"step": "trigger " + name, **r})
        node.remove()
        yield 1.0

    def opacity(node):
        node.setOpacity(254)
        node.setOpacity(255)

    def blend(node):
        node.setBlendingMode("multiply")
        node.setBlendingMode("normal")

    def inherit(node):
        node.setInheritAlpha(True)
        node.setInheritAlpha(False)

    def visible(node):
        node.setVisible(False)
        node.setVisible(True)

    def activate(node):
        doc.setActiveNode(painted)
        doc.setActiveNode(node)

    def isolate(node):
        doc.setActiveNode(node)
        app.action("isolate_active_layer").trigger()
        app.action("isolate_active_layer").trigger()

    def toggle_vis_action(node):
        doc.setActiveNode(node)
        app.action("toggle_layer_visibility").trigger()
        app.action("toggle_layer_visibility").trigger()

    for name, fn in [("opacity", opacity), ("blend", blend), ("inherit alpha", inherit), ("visible", visible),
                     ("move", lambda n: n.move(0, 0)), ("activate", activate), ("isolate action", isolate),
                     ("visibility action", toggle_vis_action)]:
        yield from trigger_test(name, fn)

    # a filled node added inside a hidden group: what does addChildNode wait for?
    r = {}
    group = doc.createGroupLayer("hidden group")
    group.setVisible(False)
    timed(r, "add hidden group", lambda: doc.rootNode().addChildNode(group, None))
    yield 1.0
    node = doc.createNode("in hidden group", "paintlayer")
    node.setPixelData(OURS * (SIZE * SIZE), 0, 0, SIZE, SIZE)
    timed(r, "add filled node into hidden group", lambda: group.addChildNode(node, None))
    yield 1.0
    node2 = doc.createNode("visible top", "paintlayer")
    node2.setPixelData(OURS * (SIZE * SIZE), 0, 0, SIZE, SIZE)
    timed(r, "add filled node at top", lambda: doc.rootNode().addChildNode(node2, None))
    report["steps"].append({"step": "hidden group", **r})


def main():
    gen = experiments()

    def advance():
        try:
            delay = next(gen)
            write()
            QTimer.singleShot(int(delay * 1000), advance)
        except StopIteration:
            report["done"] = True
            write()
            QApplication.quit()
        except Exception:
            report["errors"].append(traceback.format_exc())
            report["done"] = True
            write()
            QApplication.quit()

    advance()


def run():
    write()
    ctx["timer"] = timer = QTimer()
    timer.timeout.connect(heartbeat)
    timer.start(5)
    QTimer.singleShot(500, main)
