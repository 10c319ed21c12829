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

from krita import Krita

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared harness beside this file
from harness import (
    WORK,
    checksum,
    configure,
    configure_upscale,
    control_node,
    ctx,
    docker,
    essentials,
    idle,
    last_sent,
    layout,
    log,
    names,
    record_requests,
    report,
    s_docker,
    s_reopen,
    set_mode,
    settled,
)
from harness import run as start

SIDE, SQUARE = 256, (80, 96, 176, 160)  # canvas side; the drawn square: x0, y0, x1, y1 (exclusive)
NET = "paintbridge-demo-control"




def s_connected():
    d = docker()
    if d.capabilities is None:
        return False
    record_requests(d)
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
    if not settled(1):
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
    return True


def s_row_open():
    """The row as it opened (its ControlNet to choose): the painter's screen still fits."""
    d = docker()
    if not settled(1):
        return False
    row = d.controls.rows[0]
    fit = layout({**essentials(d), "progress": d.progress, "row_model": row.model}, shot_name="krita-control-panel.png")
    log("row open", **fit)
    report["panel_screenshot"] = fit["screenshot"]
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
    request = last_sent()
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
    request = last_sent()
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


def s_reopened():
    d, doc = docker(), ctx["doc"]
    if not settled(1.5) or not d.controls.rows:
        return False
    layers = d.controls.current(doc)
    node = control_node(doc)
    log("reopened", saved=ctx["saved"], list=[[c.kind, c.model, c.strength, c.layer_id] for c in layers],
        control_id=ctx["control_id"], node_id=node.uniqueId().toString() if node else None,
        rows=[r.enabled.text() for r in d.controls.rows])
    ctx["control"] = node
    ctx["control_sum"] = checksum(node, doc)
    configure_upscale(d, 2.0, "paintbridge-demo-x4", denoise=0.3)
    d.steps_spin.setValue(2)
    ctx["upscale_tag"] = d.upscale_document()
    return True


def s_upscaled():
    d, doc = docker(), ctx["doc"]
    if not idle(d):
        return False
    entry = d._history(doc).entries[-1]
    request = last_sent()
    log("upscale", kind=request.kind, units=len(request.controls), denoise=request.upscale.denoise,
        infotext=entry.infotext, size=[doc.width(), doc.height()], layers=names(doc),
        restore_visible=d.restore.isVisible())
    set_mode(d, "generate")
    return True


def s_layout():
    """The painter's screen at the end: 1280x800, the control row under the prompt."""
    d = docker()
    if not settled(1):
        return False
    row = d.controls.rows[0] if d.controls.rows else None
    widgets = {**essentials(d), "control_menu": d.controls.menu_button, "progress": d.progress}
    if row is not None:
        widgets.update(row=row, row_strength=row.strength)
    log("layout", **layout(widgets, shot_name="krita-control-layout.png"),
        menu=[a.text() for a in d.controls.menu_button.menu().actions()])
    return True


STEPS = [
    (s_docker, 120), (s_connected, 120), (s_draw, 10), (s_from_canvas, 10), (s_control_layer, 120), (s_row_open, 10),
    (s_generate, 10), (s_generated, 180), (s_refined, 180), (s_reopen, 30), (s_reopened, 30),
    (s_upscaled, 300), (s_layout, 10),
]


def run():
    start(STEPS)
