"""Runs inside the real Krita (loaded by the plugin's test hook).

Drives the PaintBridge docker through its own code paths, step by step on
Qt timers: connect, generate, inpaint a selection, upscale the document.
Writes a JSON report and a screenshot, then quits Krita.
"""

import json
import os
import time
import traceback

from krita import Krita, Selection
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication

REPORT = os.environ["PAINTBRIDGE_REPORT"]
SERVER = os.environ["PAINTBRIDGE_SERVER"]
SHOT = os.environ.get("PAINTBRIDGE_SCREENSHOT", "")
report = {"steps": [], "errors": []}
state = {"step": 0, "since": time.monotonic()}


def log(name, **data):
    report["steps"].append({"step": name, **data})
    write()


def write():
    with open(REPORT, "w") as f:
        json.dump(report, f, indent=1)


def docker():
    from paintbridge.docker import DOCKERS

    return DOCKERS[0] if DOCKERS else None


def alpha_stats(node, x, y, w, h):
    data = bytes(node.pixelData(x, y, w, h))
    alpha = data[3::4]
    return {"opaque": sum(1 for a in alpha if a == 255), "clear": sum(1 for a in alpha if a == 0), "n": len(alpha)}


def layer_names(doc):
    return [n.name() for n in doc.topLevelNodes() if not n.type().endswith("mask")]


def wait_idle(d):
    return not d.jobs


def finish():
    try:
        window = Krita.instance().activeWindow()
        if SHOT and window is not None:
            window.qwindow().grab().save(SHOT)
            report["screenshot"] = SHOT
    except Exception:
        report["errors"].append(traceback.format_exc())
    report["done"] = True
    write()
    QApplication.quit()


def step():
    try:
        if time.monotonic() - state["since"] > 120:
            report["errors"].append(f"timeout in step {state['step']}")
            finish()
            return
        if STEPS[state["step"]]():
            state["step"] += 1
            state["since"] = time.monotonic()
        if state["step"] >= len(STEPS):
            finish()
            return
    except Exception:
        report["errors"].append(traceback.format_exc())
        finish()
        return
    QTimer.singleShot(200, step)


ctx = {}


def s_docker():
    d = docker()
    if d is None or Krita.instance().activeWindow() is None:
        return False
    d.show()
    d.raise_()
    d.server_edit.setText(SERVER)
    d._reconfigure()
    log("docker found")
    return True


def s_connected():
    d = docker()
    if d.capabilities is None:
        return False
    log("connected", models=[m.name for m in d.capabilities.models], status=d.status.text())
    app = Krita.instance()
    doc = app.createDocument(256, 256, "PaintBridge test", "RGBA", "U8", "", 72.0)
    app.activeWindow().addView(doc)
    paint = doc.createNode("Painted", "paintlayer")
    pixels = bytearray(256 * 256 * 4)
    for y in range(256):
        for x in range(256):
            i = (y * 256 + x) * 4
            pixels[i : i + 4] = bytes((x, y, 128, 255))  # BGRA
    paint.setPixelData(bytes(pixels), 0, 0, 256, 256)
    doc.rootNode().addChildNode(paint, None)
    doc.setActiveNode(paint)
    doc.refreshProjection()
    ctx.update(doc=doc, paint=paint, original=bytes(paint.pixelData(0, 0, 256, 256)))
    d.prompt_edit.setPlainText("a lighthouse at dusk")
    d.steps_spin.setValue(4)
    d.strength_slider.setValue(100)
    d.random_check.setChecked(False)
    d.seed_spin.setValue(1234)
    return True


def s_generate():
    d = docker()
    ctx["layers_before"] = layer_names(ctx["doc"])
    d.generate()
    return True


def s_generated():
    d, doc = docker(), ctx["doc"]
    if not wait_idle(d):
        return False
    new = [n for n in doc.topLevelNodes() if n.name() not in ctx["layers_before"]]
    log("generate", layers=layer_names(doc), new=[n.name() for n in new],
        stats=alpha_stats(new[0], 0, 0, 256, 256) if new else None, message=d.message.text())
    selection = Selection()
    selection.select(64, 64, 96, 80, 255)
    doc.setSelection(selection)
    doc.setActiveNode(ctx["paint"])
    ctx["layers_before"] = layer_names(doc)
    d.strength_slider.setValue(100)
    d.inpaint()
    return True


def s_inpainted():
    d, doc = docker(), ctx["doc"]
    if not wait_idle(d):
        return False
    new = [n for n in doc.topLevelNodes() if n.name() not in ctx["layers_before"]]
    layer = new[0] if new else None
    log("inpaint", layers=layer_names(doc), new=[n.name() for n in new], message=d.message.text(),
        inside=alpha_stats(layer, 64, 64, 96, 80) if layer else None,
        outside_band=alpha_stats(layer, 0, 0, 256, 60) if layer else None,
        painted_unchanged=bytes(ctx["paint"].pixelData(0, 0, 256, 256)) == ctx["original"])
    Krita.instance().action("deselect").trigger()
    ctx["layers_before"] = layer_names(doc)
    d.factor_spin.setValue(2.0)
    d.denoise_spin.setValue(0.0)
    d.upscale_document()
    return True


def s_upscaled():
    d, doc = docker(), ctx["doc"]
    if not wait_idle(d):
        return False
    nodes = [n for n in doc.topLevelNodes() if not n.type().endswith("mask")]
    top = nodes[-1]
    log("upscale", width=doc.width(), height=doc.height(), layers=layer_names(doc), top=top.name(),
        top_stats=alpha_stats(top, 0, 0, doc.width(), doc.height()), message=d.message.text(),
        originals_kept=all(name in layer_names(doc) for name in ctx["layers_before"]))
    report["log"] = d.log
    return True


STEPS = [s_docker, s_connected, s_generate, s_generated, s_inpainted, s_upscaled]


def run():
    write()
    QTimer.singleShot(500, step)
