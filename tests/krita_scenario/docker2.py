"""Runs inside the real Krita: the two PaintBridge dockers at 1280x800, undo, upscale history, presets.

Steps on Qt timers, as scenario.py: the layout of the main docker and the "PaintBridge
History" docker with Krita's default dockers; Apply and Apply all as one undo step each
(and one Ctrl+Z takes them back without touching anything else); leaving the preview
leaves the undo stack as it was; an upscale result applied again from the history;
style presets with prefix/suffix, export, delete, import. Writes a JSON report and
screenshots, then quits Krita.
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
    ctx,
    docker,
    essentials,
    geometry,
    history_docker,
    idle,
    kd,
    layout,
    log,
    names,
    new_document,
    s_docker,
    set_mode,
    settled,
    shot,
    undo,
    undo_state,
)
from harness import run as start


def canvas_shows(doc, node, x=100, y=100):
    """The image's projection (what the canvas draws) has this node's pixels at (x, y)."""
    doc.waitForDone()
    return node is not None and bytes(doc.pixelData(x, y, 4, 4)) == bytes(node.pixelData(x, y, 4, 4))


def commands():
    """The undo stack's commands and the current one's row."""
    now = undo_state()
    return [now["commands"], now["done"]]


# -- steps ---------------------------------------------------------------------------------
def s_dockers():
    """Both PaintBridge dockers, the History one shown."""
    if history_docker() is None or not s_docker():
        return False
    docker().show_history()
    return True


def s_connected():
    d = docker()
    if d.capabilities is None:
        return False
    ctx["doc"], ctx["paint"] = new_document(256, 256, "Undo")
    ctx["undo_start"] = commands()
    return True


def s_generate_batch():
    d = docker()
    if not settled(2):  # let the window settle
        return False
    configure(d, "three plums in a bowl", steps=2, seed=21, batch=2)
    ctx["before_generate"] = names(ctx["doc"])
    ctx["tag"] = d.generate()
    return True


def s_layout():
    """With results in the list and a job row: what the painter sees at 1280x800."""
    d = docker()
    if not idle(d):
        return False
    h = history_docker()
    main = layout({**essentials(d), "strength": d.strength_slider, "progress": d.progress, "message": d.message},
                  shot_name="krita-docker2-layout.png")
    history = layout({
        "search": d.history_search, "list": d.history_list, "apply": d.history_buttons["apply"],
        "apply_all": d.history_buttons["all"], "discard": d.history_buttons["discard"],
        "reuse": d.history_buttons["reuse"], "copy": d.history_buttons["copy"], "queue": d.queue_list}, h)
    canvas = Krita.instance().activeWindow().qwindow().centralWidget()
    log("layout", **{k: v for k, v in main.items() if k != "widgets"}, main=main["widgets"], history=history["widgets"],
        history_list_height=d.history_list.height(), history_rows=d.history_list.count(),
        queue_rows=d.queue_list.count(), central=[canvas.width(), canvas.height()] if canvas else None)
    return True


def s_apply_one():
    """Preview, click another result, Apply: one undo step; one Ctrl+Z takes it back."""
    d, doc = docker(), ctx["doc"]
    ctx["undo_results"] = commands()  # the preview layer is there now
    ctx["preview_after_results"] = kd().find_preview(doc) is not None
    ctx["canvas_preview"] = canvas_shows(doc, kd().find_preview(doc))
    d.history_list.setCurrentRow(1)  # another result: the same preview layer, repainted
    ctx["undo_clicked"] = commands()
    ctx["canvas_preview_clicked"] = canvas_shows(doc, kd().find_preview(doc))
    ctx["painter_sum"] = checksum(ctx["paint"], doc)
    before = names(doc)
    applied = d.apply_selected()
    after = names(doc)
    ctx.update(before_apply=before, after_apply=after, applied=applied)
    ctx["canvas_applied"] = canvas_shows(doc, doc.topLevelNodes()[-1])
    ctx["undo_applied"] = commands()
    undo()
    ctx["after_undo"] = names(doc)
    return True


def s_apply_one_check():
    doc = ctx["doc"]
    texts, done = commands()
    start = ctx["undo_start"][0]
    log("apply one", start=start, after_results=ctx["undo_results"], after_click=ctx["undo_clicked"],
        after_apply=ctx["undo_applied"], after_undo=[texts, done], preview_after_results=ctx["preview_after_results"],
        before_generate=ctx["before_generate"], before_apply=ctx["before_apply"], layers_after_apply=ctx["after_apply"],
        layers_after_undo=ctx["after_undo"], applied=ctx["applied"], canvas_preview=ctx["canvas_preview"],
        canvas_preview_clicked=ctx["canvas_preview_clicked"], canvas_applied=ctx["canvas_applied"],
        canvas_after_undo=canvas_shows(doc, ctx["paint"]),
        painter_unchanged=checksum(ctx["paint"], doc) == ctx["painter_sum"])
    return True


def s_apply_all():
    """Apply all (a batch of two): one group, one undo step."""
    d, doc = docker(), ctx["doc"]
    d.history_list.setCurrentRow(0)  # preview again
    before, undo_before = names(doc), commands()
    applied = d.apply_batch()
    doc.waitForDone()
    group = next((n for n in doc.topLevelNodes() if n.type() == "grouplayer"), None)
    children = [c.name() for c in group.childNodes()] if group else []
    # the group's layers reach the image: the projection shows the result (not the painter's stripes)
    layer = group.childNodes()[-1] if group else None

    def shows():
        return bool(layer) and bytes(doc.pixelData(100, 100, 8, 8)) == bytes(layer.pixelData(100, 100, 8, 8))

    ctx["apply_all"] = dict(before=before, undo_before=undo_before, applied=applied, layers=names(doc),
                            group=group.name() if group else None, children=children, undo_after=commands(),
                            projection_matches=shows())
    ctx["apply_all_layer"] = layer
    ctx["apply_all_shows"] = shows
    return True


def s_apply_all_later():
    """A moment later (Krita composites asynchronously): the group's layers are in the image."""
    doc = ctx["doc"]
    doc.waitForDone()
    ctx["apply_all"]["projection_later"] = ctx["apply_all_shows"]()
    shot("krita-docker2-apply-all.png")
    undo()
    ctx["apply_all"]["after_undo"] = names(doc)
    return True


def s_apply_all_check():
    log("apply all", **ctx["apply_all"], undo_end=commands())
    return True


def s_leave_preview():
    """Results shown as a preview, then discarded: the undo stack is as it was."""
    d, doc = docker(), ctx["doc"]
    configure(d, "a single lemon", steps=2, seed=5)
    ctx["undo_before_leave"] = commands()
    ctx["layers_before_leave"] = names(doc)
    ctx["tag"] = d.generate()
    return True


def s_leave_preview_done():
    d, doc = docker(), ctx["doc"]
    if not idle(d):
        return False
    leave = ctx["leave"] = {"with_preview": commands(), "preview_seen": kd().find_preview(doc) is not None}
    leave["result"] = kd().leave_preview(doc)  # what Discard, Apply and switching away do first
    leave["after"] = commands()
    leave["layers"] = names(doc)
    # Now with a painter's action between the preview and leaving it: hidden, not undone.
    d._preview_item(d.history_list.item(0))
    leave["second_shown"] = kd().find_preview(doc) is not None
    ctx["paint"].setBlendingMode("multiply")  # an undoable change of the painter's
    leave["undo_mid"] = commands()
    leave["second_leave"] = kd().leave_preview(doc)
    leave["second_after"] = commands()
    preview = kd().find_preview(doc)
    leave["preview_hidden"] = preview is not None and not preview.visible()
    leave["canvas_painter"] = canvas_shows(doc, ctx["paint"])  # the hidden preview is off the canvas
    leave["preview_empty"] = preview is not None and preview.bounds().width() <= 0
    return True


def s_leave_preview_check():
    log("leave preview", before=ctx["undo_before_leave"], layers_before=ctx["layers_before_leave"], **ctx["leave"])
    return True


def s_upscale():
    d = docker()
    doc, paint = new_document(64, 48, "Upscale")
    ctx.update(doc=doc, paint=paint)
    configure_upscale(d, 2.0, denoise=0.0)
    ctx["tag"] = d.run_mode()
    return True


def s_upscale_done():
    d, doc = docker(), ctx["doc"]
    if not idle(d):
        return False
    d._refresh_history()
    history = d._history(doc)
    entry = history.entries[-1] if history.entries else None
    top = doc.topLevelNodes()[-1]
    first = dict(size=[doc.width(), doc.height()], top=top.name(), top_sum=checksum(top, doc),
                 entry=entry and {"mode": entry.mode, "size": entry.size_text, "png_bytes": len(entry.png)},
                 undo=commands())
    undo()  # the layer
    undo()  # the scaling
    first["after_undos"] = [doc.width(), doc.height(), names(doc)]
    d.history_list.setCurrentRow(0)
    applied = d.apply_selected()
    doc.waitForDone()
    top = doc.topLevelNodes()[-1]
    set_mode(d, "generate")
    log("upscale history", first=first, applied=applied, size=[doc.width(), doc.height()], top=top.name(),
        same_pixels=checksum(top, doc) == first["top_sum"], layers=names(doc), message=d.message.text())
    return True


def s_presets():
    d = docker()
    e = d.preset_editor
    d.prompt_edit.setPlainText("a heron")
    e.name.setText("Ink wash")
    e.prefix.setText("ink wash painting")
    e.suffix.setText("paper texture")
    d.steps_spin.setValue(17)
    saved = e.save()
    e.use()
    e.use()  # twice: the prefix is not repeated
    prompt = d.prompt_edit.toPlainText()
    exported = e.export_file(os.path.join(WORK, "shared-style.json"))
    e.delete()
    after_delete = [e.combo.itemText(i) for i in range(e.combo.count())]
    imported = e.import_file(exported)
    log("presets", saved=saved, saved_exists=os.path.isfile(saved), prompt=prompt, exported=exported,
        after_delete=after_delete, imported=imported.name, combo=[e.combo.itemText(i) for i in range(e.combo.count())],
        steps=imported.steps, message=d.message.text())
    return True


def s_options_drawer():
    """The Options tab at 1280x800: too short inline, so it opens as a drawer over the docker."""
    d = docker()
    inline = d.tabs.height()
    d.open_options(next(i for i in range(d.tabs.count()) if d.tabs.tabText(i) == "Options"))
    ctx["drawer"] = dict(inline_height=inline, open=d.drawer.isVisible(), height=d.drawer.height(),
                         steps=geometry(d.steps_spin, d.drawer), negative=geometry(d.negative_edit, d.drawer))
    return True


def s_options_drawer_shot():
    d = docker()
    path = shot("krita-docker2-options.png", whole_screen=True)  # the popup is a window of its own
    d.drawer.hide()
    log("options drawer", **ctx["drawer"], screenshot=path, back_in_docker=d.tabs.parent() is d.tabs_holder,
        closed=not d.drawer.isVisible())
    return True


STEPS = [
    (s_dockers, 120), (s_connected, 120), (s_generate_batch, 30), (s_layout, 300),
    (s_apply_one, 10), (s_apply_one_check, 10), (s_apply_all, 10), (s_apply_all_later, 10), (s_apply_all_check, 10),
    (s_leave_preview, 10), (s_leave_preview_done, 300), (s_leave_preview_check, 10),
    (s_upscale, 30), (s_upscale_done, 300), (s_presets, 30), (s_options_drawer, 10), (s_options_drawer_shot, 10),
]


def run():
    start(STEPS)
