"""Runs inside the real Krita: what PaintBridge leaves on the undo stack (issues 13 and 18).

- An upscale applied onto an image of the old size: Krita records two commands (Image >
  Scale, Add Layer); one Ctrl+Z (Krita's Undo action) gives back the size, the layers and
  the painter's pixels exactly, and one Ctrl+Shift+Z brings the upscale back
  (kritadoc.link_last, undo_link.py).
- Probes of Krita 5.1.5's Python API behind the decisions (BENCHMARKS.md, "What lands
  on the undo stack"): a layer put in with Node.setChildNodes (no undo command), what one
  undo of a following Image > Scale leaves, and what a layer over the painting does to
  the projection that Live mode reads.
"""

import hashlib
import os
import sys
import time

from krita import Krita

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared harness beside this file
from harness import (
    ctx,
    docker,
    idle,
    log,
    names,
    s_docker,
    shot,
    state,
)
from harness import run as start


def undo_state():
    """The undo stack as the painter sees it: the commands (done and undone, oldest first) and
    the Undo/Redo actions' texts (Krita says "Redo" alone when there is nothing to redo)."""
    from paintbridge import kritadoc

    app = Krita.instance()
    return {"texts": kritadoc.undo_texts(), "done": kritadoc.undo_done(),
            "undo": app.action("edit_undo").text().strip().replace("&", ""),
            "redo": app.action("edit_redo").text().strip().replace("&", "")}


def act(name, times=1):
    doc = Krita.instance().activeDocument()
    for _ in range(times):
        doc.waitForDone()
        Krita.instance().action(name).trigger()
        doc.waitForDone()


def sums(doc):
    """Each top-level layer's pixels over the image, by name."""
    w, h = doc.width(), doc.height()
    return {n.name(): hashlib.sha256(bytes(n.pixelData(0, 0, w, h))).hexdigest()[:16]
            for n in doc.topLevelNodes() if not n.type().endswith("mask")}


def picture(doc):
    return {"size": [doc.width(), doc.height()], "layers": names(doc), "sums": sums(doc)}


def new_document(width, height, name):
    app = Krita.instance()
    doc = app.createDocument(width, height, name, "RGBA", "U8", "", 72.0)
    app.activeWindow().addView(doc)
    layers = []
    for index, layer_name in enumerate(("Painted", "Sketch")):
        node = doc.createNode(layer_name, "paintlayer")
        row = bytearray()
        for x in range(width):
            row += bytes(((x * 7 + 50 * index) % 256, (x * 3) % 256, 128, 255 if index == 0 else 120))
        node.setPixelData(bytes(row) * height, 0, 0, width, height)
        doc.rootNode().addChildNode(node, None)
        layers.append(node)
    doc.setActiveNode(layers[-1])
    doc.refreshProjection()
    doc.waitForDone()
    return doc


# -- an upscale applied: its undo steps -------------------------------------------------------------
def s_upscale():
    d = docker()
    if d.capabilities is None:
        return False
    if "doc" not in ctx:
        doc = ctx["doc"] = new_document(64, 48, "Upscale undo")
        ctx["before"] = picture(doc)
    state = undo_state()
    if state["done"] != len(state["texts"]):  # Krita's Undo History catches up with the new layers late
        return False
    ctx["undo_before"] = state
    if d.upscaler_combo.findText("Lanczos") < 0:
        d.upscaler_combo.addItem("Lanczos")
    d.mode_buttons["upscale"].setChecked(True)
    d._mode_changed()
    d.factor_spin.setValue(2.0)
    d.denoise_spin.setValue(0.0)
    d.upscaler_combo.setCurrentIndex(d.upscaler_combo.findText("Lanczos"))
    ctx["tag"] = d.run_mode()
    return True


def s_upscaled():
    d, doc = docker(), ctx["doc"]
    if not idle(d):
        return False
    doc.waitForDone()
    ctx["after"] = picture(doc)
    ctx["undo_after"] = undo_state()
    ctx["shot"] = shot("krita-undo-upscaled.png")
    act("edit_undo")  # one Ctrl+Z, as the painter presses it
    return True


def s_undone():
    """What one Ctrl+Z left (after the event loop turned: the plugin follows Krita's Undo)."""
    if time.monotonic() - state["since"] < 1.0:
        return False
    doc = ctx["doc"]
    doc.waitForDone()
    ctx["undone"] = {**picture(doc), "undo": undo_state()}
    act("edit_redo")  # one Ctrl+Shift+Z
    return True


def s_redone():
    if time.monotonic() - state["since"] < 1.0:
        return False
    d, doc = docker(), ctx["doc"]
    doc.waitForDone()
    redone = {**picture(doc), "undo": undo_state()}
    d.mode_buttons["generate"].setChecked(True)
    d._mode_changed()
    log("upscale undo", before=ctx["before"], undo_before=ctx["undo_before"], after=ctx["after"],
        undo_after=ctx["undo_after"], undone=ctx["undone"], redone=redone, shot=ctx["shot"], message=d.message.text())
    return True


# -- probes of the API -------------------------------------------------------------------------------
def s_probe_set_child_nodes():
    """A layer put in with Node.setChildNodes (no undo command), then Image > Scale, then one undo."""
    doc = new_document(32, 24, "Probe")
    before = {**picture(doc), "undo": undo_state()}
    root = doc.rootNode()
    extra = doc.createNode("Added without undo", "paintlayer")
    extra.setPixelData(bytes((0, 0, 255, 255)) * (32 * 24), 0, 0, 32, 24)
    root.setChildNodes([*root.childNodes(), extra])
    doc.refreshProjection()
    doc.waitForDone()
    added = {**picture(doc), "undo": undo_state()}
    doc.scaleImage(64, 48, 72, 72, "Bicubic")
    doc.waitForDone()
    scaled = {**picture(doc), "undo": undo_state()}
    act("edit_undo")
    one_undo = {**picture(doc), "undo": undo_state()}
    # Taking it out again the same way.
    root.setChildNodes([n for n in root.childNodes() if n.name() != "Added without undo"])
    doc.refreshProjection()
    doc.waitForDone()
    removed = {**picture(doc), "undo": undo_state()}
    log("probe setChildNodes", before=before, added=added, scaled=scaled, one_undo=one_undo, removed=removed)
    ctx["probe"] = doc
    return True


def s_probe_repaint():
    """An overlay's repaint: setPixelData + refreshProjection, its cost, its undo entries, and
    whether the projection (what Live mode reads) then holds the overlay's pixels."""
    doc = new_document(1024, 1024, "Repaint")
    under = list(bytes(doc.pixelData(512, 512, 1, 1)))
    node = doc.createNode("Overlay", "paintlayer")
    doc.rootNode().addChildNode(node, None)
    doc.waitForDone()
    before = undo_state()
    data = bytes((30, 160, 220, 255)) * (1024 * 1024)
    ms = []
    for _ in range(3):
        t0 = time.perf_counter()
        node.setPixelData(data, 0, 0, 1024, 1024)
        doc.refreshProjection()
        doc.waitForDone()
        ms.append((time.perf_counter() - t0) * 1000)
    after = undo_state()
    top = bytes(doc.pixelData(512, 512, 1, 1))
    log("probe repaint", undo_before=before, undo_after=after, ms=[round(m, 1) for m in ms],
        projection_pixel=list(top), painting_pixel=under)
    return True


def s_settle():
    return time.monotonic() - state["since"] > 0.5


STEPS = [(s_docker, 120), (s_upscale, 120), (s_upscaled, 300), (s_undone, 30), (s_redone, 30),
         (s_probe_set_child_nodes, 30),
         (s_probe_repaint, 60), (s_settle, 10)]


def run():
    start(STEPS)
