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
