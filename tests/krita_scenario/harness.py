"""The real-Krita scenarios' shared harness (runs inside Krita, imported by the
scenario modules loaded through the plugin's test hook): the report, screenshots,
the step runner on Qt timers, and the first step (find the docker, point it at
the test server). A scenario calls run(STEPS) with its own (step, seconds) list.
"""

import hashlib
import json
import os
import time
import traceback

from krita import Krita
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication

REPORT = os.environ["PAINTBRIDGE_REPORT"]
SERVER = os.environ["PAINTBRIDGE_SERVER"]
SHOT = os.environ.get("PAINTBRIDGE_SCREENSHOT", "")
WORK = os.environ.get("PAINTBRIDGE_WORKDIR", os.path.dirname(REPORT))
report = {"steps": [], "errors": []}
state = {"step": 0, "since": time.monotonic()}
ctx = {}
STEPS: list = []  # set by run()


def log(name, **data):
    report["steps"].append({"step": name, **data})
    write()


def write():
    with open(REPORT, "w") as f:
        json.dump(report, f, indent=1)


def docker():
    from paintbridge.docker import DOCKERS

    return DOCKERS[0] if DOCKERS else None


def idle(d):
    return not d.jobs and not d.background.busy and not d.queue.active()


def shot(name):
    path = os.path.join(os.path.dirname(SHOT) or WORK, name)
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
    QTimer.singleShot(100, step)


def configure(d, prompt, steps=2, strength=100, seed=1234):
    d.prompt_edit.setPlainText(prompt)
    d.steps_spin.setValue(steps)
    d.strength_slider.setValue(strength)
    d.random_check.setChecked(False)
    d.seed_spin.setValue(seed)
    d.batch_spin.setValue(1)
    d.mode_buttons["generate"].setChecked(True)
    d._mode_changed()


# -- steps ---------------------------------------------------------------------------------
def s_docker():
    d = docker()
    window = Krita.instance().activeWindow()
    if d is None or window is None:
        return False
    window.qwindow().setGeometry(QApplication.primaryScreen().availableGeometry())  # no WM under Xvfb
    d.show()
    d.raise_()
    d.server_edit.setText(SERVER)
    d._reconfigure()
    return True


def run(steps):
    STEPS[:] = steps
    write()
    QTimer.singleShot(500, step)
