"""The real-Krita scenarios' shared harness (runs inside Krita, imported by the
scenario modules loaded through the plugin's test hook): the report, screenshots,
the step runner on Qt timers, the first step (find the docker, point it at the
test server), documents to paint on, Krita's undo stack as the painter sees it,
and the layout of the painter's screen. A scenario calls run(STEPS) with its own
(step, seconds) list.
"""

import hashlib
import json
import os
import time
import traceback

from krita import Krita
from PyQt5.QtCore import QPoint, QRect, QTimer
from PyQt5.QtWidgets import QAbstractItemView, QApplication

REPORT = os.environ["PAINTBRIDGE_REPORT"]
SERVER = os.environ["PAINTBRIDGE_SERVER"]
SHOT = os.environ.get("PAINTBRIDGE_SCREENSHOT", "")
WORK = os.environ.get("PAINTBRIDGE_WORKDIR", os.path.dirname(REPORT))
SHOTS = os.path.dirname(SHOT) or WORK
report = {"steps": [], "errors": []}
state = {"step": 0, "since": time.monotonic(), "interval_ms": 100}
ctx = {}
STEPS: list = []  # set by run()


def log(name, **data):
    report["steps"].append({"step": name, **data})
    write()


def write():
    with open(REPORT, "w") as f:
        json.dump(report, f, indent=1, default=str)


def docker():
    from paintbridge.docker import DOCKERS

    return DOCKERS[0] if DOCKERS else None


def history_docker():
    from paintbridge.history_docker import history_docker as find

    return find(docker())


def kd():
    from paintbridge import kritadoc

    return kritadoc


def idle(d):
    return not d.jobs and not d.background.busy and not d.queue.active()


def shot(name, whole_screen=False):
    """A screenshot in the artifacts folder: Krita's window, or the whole screen (a popup
    is a window of its own)."""
    path = os.path.join(SHOTS, name)
    if whole_screen:
        QApplication.primaryScreen().grabWindow(0).save(path)
        return path
    window = Krita.instance().activeWindow()
    if window is not None:
        window.qwindow().grab().save(path)
    return path


def names(doc):
    return [n.name() for n in doc.topLevelNodes() if not n.type().endswith("mask")]


def checksum(node, doc):
    return hashlib.sha256(bytes(node.pixelData(0, 0, doc.width(), doc.height()))).hexdigest()


def control_node(doc):
    return next((n for n in doc.topLevelNodes() if n.name().startswith("[Control]")), None)


def stripes(width, height):
    """BGRA stripes, each row shifted: a painting with detail in both directions."""
    row = bytearray()
    for x in range(width):
        row += bytes(((x * 7) % 256, (x * 3) % 256, 128, 255))
    return b"".join(bytes(row[4 * (y % 7):] + row[: 4 * (y % 7)]) for y in range(height))


def new_document(width, height, name, fill=None):
    """A document in the window with one paint layer, "Painted": stripes, or one BGRA colour."""
    app = Krita.instance()
    doc = app.createDocument(width, height, name, "RGBA", "U8", "", 72.0)
    app.activeWindow().addView(doc)
    paint = doc.createNode("Painted", "paintlayer")
    data = stripes(width, height) if fill is None else bytes(fill) * (width * height)
    paint.setPixelData(data, 0, 0, width, height)
    doc.rootNode().addChildNode(paint, None)
    doc.setActiveNode(paint)
    doc.refreshProjection()
    return doc, paint


def set_mode(d, mode):
    """Generate, Upscale or Live, as the painter's click on the mode button does."""
    d.mode_buttons[mode].setChecked(True)
    d._mode_changed()


def configure(d, prompt, steps=2, strength=100, seed=1234, batch=1):
    d.prompt_edit.setPlainText(prompt)
    d.steps_spin.setValue(steps)
    d.strength_slider.setValue(strength)
    d.random_check.setChecked(False)
    d.seed_spin.setValue(seed)
    d.batch_spin.setValue(batch)
    set_mode(d, "generate")


def configure_upscale(d, factor, upscaler="Lanczos", denoise=None):
    """Upscale mode by `factor` with that upscaler (Lanczos: the server's plain resize, offered
    even where the list has not arrived); `denoise` 0: the upscaler only, None: as it is."""
    if upscaler == "Lanczos" and d.upscaler_combo.findText("Lanczos") < 0:
        d.upscaler_combo.addItem("Lanczos")
    set_mode(d, "upscale")
    d.factor_spin.setValue(factor)
    if denoise is not None:
        d.denoise_spin.setValue(denoise)
    d.upscaler_combo.setCurrentIndex(max(0, d.upscaler_combo.findText(upscaler)))


def undo_state():
    """Krita's undo stack as the painter sees it: the Undo History docker's commands (without
    "<empty>"), the row of the current one, all its rows, and the Undo/Redo actions' texts
    (Krita keeps the actions enabled and says "Redo" when there is nothing to redo)."""
    commands, done, rows = None, None, None
    for dock in Krita.instance().dockers():
        if dock.objectName() != "History":
            continue
        for view in dock.findChildren(QAbstractItemView):
            model = view.model()
            if model is None:
                continue
            rows = model.rowCount()
            commands = [str(model.data(model.index(r, 0))) for r in range(1, rows)]
            done = view.currentIndex().row()
            break
    undo, redo = Krita.instance().action("edit_undo"), Krita.instance().action("edit_redo")
    return {"commands": commands, "done": done, "rows": rows, "undo": undo.text().strip(), "redo": redo.text().strip()}


def record_requests(d):
    """From now on ctx["sent"] holds (tag, request) of every job the docker sends, as the
    server receives it (the docker builds requests on the network thread)."""
    sent = ctx["sent"] = []
    submit = d.worker.submit

    def recording(tag, request):
        def build(make=request):
            made = make() if callable(make) else make
            sent.append((tag, made))
            return made

        submit(tag, build)

    d.worker.submit = recording


def last_sent(tag=None):
    """The newest request sent (of that tag)."""
    return next(r for t, r in reversed(ctx["sent"]) if tag is None or t == tag)


def undo():
    doc = Krita.instance().activeDocument()
    doc.waitForDone()
    Krita.instance().action("edit_undo").trigger()
    doc.waitForDone()


# -- the painter's screen ---------------------------------------------------------------------
def geometry(widget, container):
    """Where a widget is: shown (not clipped away), on the screen, inside its container."""
    screen = QApplication.primaryScreen().geometry()
    rect = QRect(widget.mapToGlobal(QPoint(0, 0)), widget.size())
    return {"visible": widget.isVisible() and not widget.visibleRegion().isEmpty(), "on_screen": screen.contains(rect),
            "in_docker": QRect(container.mapToGlobal(QPoint(0, 0)), container.size()).contains(rect),
            "rect": [rect.x(), rect.y(), rect.width(), rect.height()]}


def layout(widgets, container=None, shot_name=""):
    """The painter's screen now: the screen, Krita's main window (its frame must fit the
    screen: nothing of PaintBridge may make it taller), the PaintBridge docker and its
    minimum height, Krita's visible dockers, and each named widget's place (in the
    container, by default the PaintBridge docker). With shot_name, a screenshot too."""
    d = docker()
    container = d if container is None else container
    screen = QApplication.primaryScreen().geometry()
    qwin = Krita.instance().activeWindow().qwindow()
    frame = qwin.frameGeometry()
    out = {"screen": [screen.width(), screen.height()],
           "frame": [frame.x(), frame.y(), frame.width(), frame.height()],
           "window_min": qwin.minimumSizeHint().height(),
           "docker": [d.mapToGlobal(QPoint(0, 0)).y(), d.height()],
           "docker_min": d.widget().minimumSizeHint().height(),
           "dockers": {w.windowTitle(): [w.x(), w.y(), w.width(), w.height(), w.minimumSizeHint().height()]
                       for w in Krita.instance().dockers() if w.isVisible() and not w.isFloating()},
           "widgets": {name: geometry(w, container) for name, w in widgets.items()}}
    if shot_name:
        out["screenshot"] = shot(shot_name)
    return out


def essentials(d):
    """What must always be on the painter's screen, whatever the mode."""
    return {"prompt": d.prompt_edit, "generate": d.generate_button, "cancel": d.cancel_button, "status": d.status}


# -- the runner -----------------------------------------------------------------------------------
def finish():
    try:
        if SHOT:
            shot(os.path.basename(SHOT))
            report["screenshot"] = SHOT
    except Exception:
        report["errors"].append(traceback.format_exc())
    report["done"] = True
    write()
    QApplication.quit()


def step():
    try:
        limit = STEPS[state["step"]][1] if state["step"] < len(STEPS) else 120
        if time.monotonic() - state["since"] > limit:
            report["errors"].append(f"timeout in step {STEPS[state['step']][0].__name__}")
            finish()
            return
        if STEPS[state["step"]][0]():
            state["step"] += 1
            state["since"] = time.monotonic()
        if state["step"] >= len(STEPS):
            finish()
            return
    except Exception:
        report["errors"].append(traceback.format_exc())
        finish()
        return
    QTimer.singleShot(state["interval_ms"], step)


def settled(seconds):
    """True once this step has waited `seconds` (a new document, a mode switch: Krita lays out later)."""
    return time.monotonic() - state["since"] >= seconds


# -- steps ---------------------------------------------------------------------------------
def s_docker():
    d = docker()
    window = Krita.instance().activeWindow()
    if d is None or window is None:
        return False
    # Xvfb has no window manager to maximize it: the painter's full screen, by hand.
    window.qwindow().setGeometry(QApplication.primaryScreen().availableGeometry())
    d.show()
    d.raise_()
    d.server_edit.setText(SERVER)
    d._reconfigure()
    return True


def s_reopen():
    """The document saved at ctx["path"], opened again in the window (ctx["doc"])."""
    app = Krita.instance()
    doc = app.openDocument(ctx["path"])
    app.activeWindow().addView(doc)
    ctx["doc"] = doc
    return True


def run(steps, interval_ms=100):
    """Run the (step, seconds) list: a step returning False is called again after interval_ms."""
    STEPS[:] = steps
    state["interval_ms"] = interval_ms
    write()
    QTimer.singleShot(500, step)
