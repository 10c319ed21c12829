"""Runs inside the real Krita (loaded by the plugin's test hook): control layers.

A painter draws a dark square on a light canvas, makes a Canny control "from the
canvas" (the server's preprocessor writes a NEW layer), picks the demo ControlNet
for it, generates with it, refines with it (the edge layer must not leak into the
image being refined), saves and reopens the document (the control list comes back),
and upscales with it. The control layer is checked unchanged after every job.
Writes a JSON report and screenshots, then quits Krita.
"""

import os
import sys
import time

from krita import Krita
from PyQt5.QtCore import QPoint, QRect
from PyQt5.QtWidgets import QApplication

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared harness beside this file
from harness import (
    WORK,
    checksum,
    configure,
    control_node,
    ctx,
    docker,
    idle,
    log,
    names,
    report,
    s_docker,
    shot,
    state,
)
from harness import run as start

SIDE, SQUARE = 256, (80, 96, 176, 160)  # canvas side; the drawn square: x0, y0, x1, y1 (exclusive)
NET = "paintbridge-demo-control"




def s_connected():
    d = docker()
    if d.capabilities is None:
        return False
    sent = ctx["sent"] = []
    submit = d.worker.submit

    def recording(tag, request):  # what the server receives, as built on the network thread
        def build(make=request):
            made = make() if callable(make) else make
            sent.append(made)
            return made

        submit(tag, build)

    d.worker.submit = recording
    log("connected", controlnets=d.controls.controlnets(), model=d.model_combo.currentText(),
        restore_visible=d.restore.isVisible())
    return True


def s_draw():
    """A light canvas with a dark square: the painter's drawing."""
    app = Krita.instance()
    doc = app.createDocument(SIDE, SIDE, "Control layers", "RGBA", "U8", "", 72.0)
    app.activeWindow().addView(doc)
    paint = doc.createNode("Drawing", "paintlayer")
    x0, y0, x1, y1 = SQUARE
    data = bytearray(b"\xf0\xf0\xf0\xff" * (SIDE * SIDE))
    for y in range(y0, y1):
        data[4 * (y * SIDE + x0):4 * (y * SIDE + x1)] = b"\x20\x20\x20\xff" * (x1 - x0)
    paint.setPixelData(bytes(data), 0, 0, SIDE, SIDE)
    doc.rootNode().addChildNode(paint, None)
    doc.setActiveNode(paint)
    doc.refreshProjection()
    ctx.update(doc=doc, paint=paint, paint_sum=checksum(paint, doc), drawing=bytes(data))
    return True


def s_from_canvas():
    d = docker()
    if time.monotonic() - state["since"] < 1:
        return False
    d.controls.canvas_actions["canny"].trigger()  # Control > Canny from the canvas, as the painter does
    return True


def s_control_layer():
    d, doc = docker(), ctx["doc"]
    node = control_node(doc)
    if not idle(d) or node is None or not d.controls.rows:
        return False
    pixels = bytes(node.pixelData(0, 0, SIDE, SIDE))
    x0, y0, x1, y1 = SQUARE
    white = [(i // 4 % SIDE, i // 4 // SIDE) for i in range(0, len(pixels), 4) if pixels[i] > 128]

    def near_edge(x, y):
        on_x = x0 - 2 <= x <= x1 + 1 and y0 - 2 <= y <= y1 + 1
        inside = x0 + 2 <= x <= x1 - 3 and y0 + 2 <= y <= y1 - 3
        return on_x and not inside

    row = d.controls.rows[0]
    layers = d.controls.current(doc)
    ctx.update(control=node, control_sum=checksum(node, doc))
    # Without a ControlNet named canny on the demo server, Generate says what to do.
    d.prompt_edit.setPlainText("a grey box")
    d.generate_button.click()
    log("control layer", layers=names(doc), layer_name=node.name(), visible=node.visible(), white=len(white),
        white_near_edge=sum(1 for p in white if near_edge(*p)), opaque=sum(1 for a in pixels[3::4] if a == 255),
        perimeter=2 * ((x1 - x0) + (y1 - y0)), list=[[c.kind, c.is_control_image, c.layer_id] for c in layers],
        node_id=node.uniqueId().toString(), row_name=row.enabled.text(), row_model=row.model.currentText(),
        row_details_open=row.details.isVisible(), no_net_message=d.message.text(), queued=len(d.queue.active()),
        painter_unchanged=checksum(ctx["paint"], doc) == ctx["paint_sum"])
    report["panel_screenshot"] = shot("krita-control-panel.png")
    row.model.setCurrentIndex(row.model.findData(NET))  # the painter picks the demo ControlNet
    return True


def s_generate():
    d = docker()
    if not d.controls.rows or d.controls.rows[0].model.currentData() != NET:
        return False  # the row is rebuilt after the choice
    d.controls.rows[0].strength.setValue(0.8)
    configure(d, "a grey box on a table", steps=2, seed=7)
    ctx["generated_tag"] = d.generate()
    return True


def s_generated():
    d, doc = docker(), ctx["doc"]
    if not idle(d):
        return False
    entry = d._history(doc).entries[-1]
    request = ctx["sent"][-1]
    unit = request.controls[0] if request.controls else None
    applied = d.apply_selected()
    for node in [n for n in doc.topLevelNodes() if n.name() in applied]:
        node.remove()  # the painter discards it: the refine below reads the drawing again
    log("generate", kind=request.kind, units=len(request.controls),
        unit=unit and {"model": unit.model, "strength": unit.strength, "preprocess": unit.preprocess,
                       "size": [unit.image.width, unit.image.height], "start": unit.start, "end": unit.end},
        infotext=entry.infotext, applied=applied, control_unchanged=checksum(ctx["control"], doc) == ctx["control_sum"],
        control_visible=ctx["control"].visible())
    configure(d, "a grey box, watercolor", steps=3, strength=50, seed=8)
    doc.setActiveNode(ctx["paint"])
    ctx["refine_tag"] = d.generate()
    # While the image was read the control layer was hidden; it is visible again at once.
    ctx["visible_after_read"] = ctx["control"].visible()
    return True


def s_refined():
    d, doc = docker(), ctx["doc"]
    if not idle(d):
        return False
    entry = d._history(doc).entries[-1]
    request = ctx["sent"][-1]
    image = request.image
    # The image refined is the drawing, never the edge map drawn over it (grey: BGRA == RGBA).
    log("refine", kind=request.kind, strength=request.strength, units=len(request.controls),
        infotext=entry.infotext, image_is_the_drawing=image.data == ctx["drawing"],
        image_size=[image.width, image.height],
        visible_after_read=ctx["visible_after_read"],
        control_unchanged=checksum(ctx["control"], doc) == ctx["control_sum"])
    path = os.path.join(WORK, "controls.kra")
    d.flush_history()
    doc.setBatchmode(True)
    ctx.update(path=path, saved=doc.saveAs(path), control_id=ctx["control"].uniqueId().toString())
    doc.close()
    d.controls.layers.clear()  # the panel forgets: what comes back is read from the file
    return True


def s_reopen():
    app = Krita.instance()
    doc = app.openDocument(ctx["path"])
    app.activeWindow().addView(doc)
    ctx.update(doc=doc, reopened_at=time.monotonic())
    return True


def s_reopened():
    d, doc = docker(), ctx["doc"]
    if time.monotonic() - ctx["reopened_at"] < 1.5 or not d.controls.rows:
        return False
    layers = d.controls.current(doc)
    node = control_node(doc)
    log("reopened", saved=ctx["saved"], list=[[c.kind, c.model, c.strength, c.layer_id] for c in layers],
        control_id=ctx["control_id"], node_id=node.uniqueId().toString() if node else None,
        rows=[r.enabled.text() for r in d.controls.rows])
    ctx["control"] = node
    ctx["control_sum"] = checksum(node, doc)
    d.mode_buttons["upscale"].setChecked(True)
    d._mode_changed()
    d.factor_spin.setValue(2.0)
    d.denoise_spin.setValue(0.3)
    d.steps_spin.setValue(2)
    d.upscaler_combo.setCurrentIndex(max(0, d.upscaler_combo.findText("paintbridge-demo-x4")))
    ctx["upscale_tag"] = d.upscale_document()
    return True


def s_upscaled():
    d, doc = docker(), ctx["doc"]
    if not idle(d):
        return False
    entry = d._history(doc).entries[-1]
    request = ctx["sent"][-1]
    log("upscale", kind=request.kind, units=len(request.controls), denoise=request.upscale.denoise,
        infotext=entry.infotext, size=[doc.width(), doc.height()], layers=names(doc),
        restore_visible=d.restore.isVisible())
    d.mode_buttons["generate"].setChecked(True)
    d._mode_changed()
    return True


def s_layout():
    """The painter's screen at the end: 1280x800, the control row under the prompt."""
    d = docker()
    if time.monotonic() - state["since"] < 1:
        return False
    screen = QApplication.primaryScreen().geometry()
    dock = QRect(d.mapToGlobal(QPoint(0, 0)), d.size())

    def place(w):
        rect = QRect(w.mapToGlobal(QPoint(0, 0)), w.size())
        return {"visible": w.isVisible() and not w.visibleRegion().isEmpty(), "on_screen": screen.contains(rect),
                "in_docker": dock.contains(rect), "rect": [rect.x(), rect.y(), rect.width(), rect.height()]}

    row = d.controls.rows[0] if d.controls.rows else None
    widgets = {"control_menu": d.controls.menu_button, "generate": d.generate_button, "prompt": d.prompt_edit,
               "progress": d.progress, "status": d.status}
    if row is not None:
        widgets.update(row=row, row_strength=row.strength)
    window = Krita.instance().activeWindow().qwindow()
    log("layout", screen=[screen.width(), screen.height()], widgets={k: place(w) for k, w in widgets.items()},
        docker=[dock.x(), dock.y(), dock.width(), dock.height()], docker_min_height=d.widget().minimumSizeHint().height(),
        window=[window.width(), window.height()], menu=[a.text() for a in d.controls.menu_button.menu().actions()])
    return True


STEPS = [
    (s_docker, 120), (s_connected, 120), (s_draw, 10), (s_from_canvas, 10), (s_control_layer, 120),
    (s_generate, 10), (s_generated, 180), (s_refined, 180), (s_reopen, 30), (s_reopened, 30),
    (s_upscaled, 300), (s_layout, 10),
]


def run():
    start(STEPS)
