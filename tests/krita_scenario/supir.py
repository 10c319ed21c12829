"""Runs inside the real Krita (loaded by the plugin's test hook): Upscale's Restore (SUPIR).

Against a server on tiny random-init models (an SD1.5 checkpoint, an SDXL one and a
SUPIR file in SUPIR/): the option shows in Upscale mode only, picks the SDXL
checkpoint, and an upscale with it restores through SUPIR (the infotext says so).
"""

import os
import sys

from krita import Krita

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared harness beside this file
from harness import (
    configure_upscale,
    ctx,
    docker,
    essentials,
    geometry,
    idle,
    last_sent,
    layout,
    log,
    names,
    record_requests,
    report,
    s_docker,
    set_mode,
    settled,
)
from harness import run as start


def s_connected():
    d = docker()
    if d.capabilities is None:
        return False
    record_requests(d)
    app = Krita.instance()
    doc = app.createDocument(48, 40, "SUPIR", "RGBA", "U8", "", 72.0)
    app.activeWindow().addView(doc)
    paint = doc.createNode("Photo", "paintlayer")
    data = bytearray()
    for y in range(40):
        for x in range(48):
            data += bytes(((x * 5) % 256, (y * 6) % 256, 90, 255))
    paint.setPixelData(bytes(data), 0, 0, 48, 40)
    doc.rootNode().addChildNode(paint, None)
    doc.setActiveNode(paint)
    doc.refreshProjection()
    ctx.update(doc=doc, paint=paint)
    ctx["generate_mode_visible"] = d.restore.isVisible()
    set_mode(d, "upscale")
    log("connected", model=d.model_combo.currentText(), supir=[d.restore.model_combo.itemText(i)
        for i in range(d.restore.model_combo.count())], sdxl=d.restore.checkpoint_combo.currentText(),
        upscalers=d.capabilities.upscalers)
    return True


def s_restore():
    """Restore ticked: its second row shows."""
    d = docker()
    if not settled(1):
        return False
    r = d.restore
    ctx.update(visible=r.isVisible(), details_before=r.details.isVisible())
    r.check.setChecked(True)
    r.slider.setValue(25)
    r.steps_spin.setValue(1)  # tiny random-init models: one step shows the path
    configure_upscale(d, 2.0)
    d.prompt_edit.setPlainText("a sharp photo")
    return True


def s_upscale():
    """The painter's screen with both rows (it still fits), then the upscale."""
    d = docker()
    if not settled(1):
        return False
    r = d.restore
    fit = layout({**essentials(d), "progress": d.progress, "restore": r.check, "detail": r.slider},
                 shot_name="krita-supir-panel.png")
    log("panel", visible=ctx["visible"], generate_mode_visible=ctx["generate_mode_visible"],
        details_before=ctx["details_before"], details_after=r.details.isVisible(), label=r.value_label.text(), layout=fit)
    report["panel_screenshot"] = fit["screenshot"]
    ctx["tag"] = d.upscale_document()
    return True


def s_upscaled():
    d, doc = docker(), ctx["doc"]
    if not idle(d):
        return False
    entry = d._history(doc).entries[-1] if d._history(doc).entries else None
    request = last_sent()
    r = request.restore
    log("upscaled", size=[doc.width(), doc.height()], layers=names(doc), infotext=entry.infotext if entry else "",
        request={"model": request.model, "sampler": request.sampler, "steps": request.steps, "cfg": request.cfg_scale,
                 "supir": r.supir, "guidance": r.guidance, "s_churn": r.s_churn, "cfg_start": r.cfg_start,
                 "units": len(request.controls)},
        message=d.message.text(), panel_on_screen=geometry(d.restore, d)["on_screen"])
    return True


STEPS = [(s_docker, 120), (s_connected, 120), (s_restore, 10), (s_upscale, 10), (s_upscaled, 300)]


def run():
    start(STEPS)
