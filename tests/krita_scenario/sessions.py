"""Runs inside the real Krita: settings that stay from one Krita session to the next (issue 13).

Two runs of Krita over the same profile (the same kritarc), chosen by PAINTBRIDGE_ONLY:

- "first": the painter types the server address and the token (ticks "Remember the
  token"), sets the docker's settings through its own widgets, saves and picks a style
  preset, and quits Krita the way a painter does (File > Quit), not by ending the process.
- "second": a new Krita. The docker shows it all again before anything is typed, and it
  connects to the token-guarded server with the remembered token. Then the painter
  unticks "Remember the token" and quits: the token must leave kritarc.
"""

import os
import sys
import time

from krita import Krita
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared harness beside this file
from harness import (
    ctx,
    docker,
    log,
    report,
    shot,
    state,
    write,
)
from harness import run as start

PHASE = os.environ.get("PAINTBRIDGE_ONLY", "first")
SERVER = os.environ["PAINTBRIDGE_SERVER"]
TOKEN = os.environ.get("PAINTBRIDGE_TEST_TOKEN", "")
PRESET = "Ink wash (sessions)"


def values(d):
    """What the docker shows now, widget by widget (the painter's view of the settings)."""
    return {
        "server": d.server_edit.text(), "token": d.token_edit.text(), "remember": d.remember_check.isChecked(),
        "prompt": d.prompt_edit.toPlainText(), "negative": d.negative_edit.toPlainText(),
        "strength": d.strength_slider.value(), "sampler": d.sampler_combo.currentText(),
        "steps": d.steps_spin.value(), "cfg": d.cfg_spin.value(), "batch": d.batch_spin.value(),
        "seed": d.seed_spin.value(), "random": d.random_check.isChecked(),
        "resolution": d.resolution_combo.currentData(), "hires": round(d.hires_spin.value(), 2),
        "source": d.source_combo.currentData(), "grow": d.grow_spin.value(), "feather": d.feather_spin.value(),
        "inpaint": d.inpaint_combo.currentData(), "expand_side": d.expand_side.currentText(),
        "expand_px": d.expand_spin.value(), "factor": d.factor_spin.value(),
        "upscale_detail": round(d.denoise_spin.value(), 2), "upscaler": d.upscaler_combo.currentText(),
        "live_strength": d.live.strength_slider.value(), "mode": d._mode(), "preset": d.preset_combo.currentText(),
        "model": d.model_combo.currentText(),
    }


def connected(d):
    return d.capabilities is not None and d.connection[0] == "connected"


def quit_krita():
    """File > Quit, as the painter quits (the docker saves on the way out); the report first."""
    report["done"] = True
    write()
    Krita.instance().action("file_quit").trigger()


def s_window():
    d = docker()
    window = Krita.instance().activeWindow()
    if d is None or window is None:
        return False
    window.qwindow().setGeometry(QApplication.primaryScreen().availableGeometry())  # no WM under Xvfb
    d.show()
    d.raise_()
    return True


# -- the first session ------------------------------------------------------------------------
def s_type_server():
    d = docker()
    log("first start", shown=values(d))
    d.server_edit.setText(SERVER)
    d.server_edit.editingFinished.emit()  # as leaving the field does
    d.token_edit.setText(TOKEN)
    d.remember_check.click()  # tick
    d.token_edit.editingFinished.emit()
    return True


def s_set_everything():
    d = docker()
    if not connected(d):
        return False
    sampler = next((s for s in ("DPM++ 2M Karras", "DPM++ 2M", "Euler") if d.sampler_combo.findText(s) >= 0),
                   d.sampler_combo.itemText(1))
    d.sampler_combo.setCurrentIndex(d.sampler_combo.findText(sampler))
    d.prompt_edit.setPlainText("a heron in the reeds")
    d.negative_edit.setPlainText("blurry, text")
    d.strength_slider.setValue(37)
    d.steps_spin.setValue(13)
    d.cfg_spin.setValue(5.5)
    d.batch_spin.setValue(3)
    d.random_check.setChecked(False)
    d.seed_spin.setValue(777)
    d.resolution_combo.setCurrentIndex(d.resolution_combo.findData("exact"))
    d.hires_spin.setValue(0.3)
    d.source_combo.setCurrentIndex(1)
    d.grow_spin.setValue(12)
    d.feather_spin.setValue(24)
    d.inpaint_combo.setCurrentIndex(d.inpaint_combo.findData("remove"))
    d.expand_side.setCurrentIndex(d.expand_side.findText("top"))
    d.expand_spin.setValue(96)
    d.factor_spin.setValue(3.0)
    d.denoise_spin.setValue(0.35)
    d.upscaler_combo.setCurrentIndex(d.upscaler_combo.count() - 1)
    d.live.strength_slider.setValue(40)
    # A style preset saved from the docker and left picked in the Style list.
    e = d.preset_editor
    e.name.setText(PRESET)
    e.prefix.setText("ink wash painting")
    e.buttons["save"].click()
    e.combo.setCurrentIndex(e.combo.findText(PRESET))
    d.mode_buttons["upscale"].click()  # a real click: the button group's signal
    log("first set", shown=values(d), status=d.status.text())
    report["shot_first"] = shot("krita-sessions-first.png")
    return True


def s_quit():
    """Never done: Krita quits under it (the harness's own finish() would end Qt's loop instead
    of quitting Krita; if File > Quit hangs, the step's time limit reports it)."""
    if time.monotonic() - state["since"] < 0.5 or ctx.get("quitting"):  # let the clicks' signals settle
        return False
    ctx["quitting"] = True
    QTimer.singleShot(0, quit_krita)
    return False


def screen_shot(name):
    """The whole screen: the Server tab may be open in the docker's drawer, a popup window."""
    path = os.path.join(os.path.dirname(shot(name)), name)
    QApplication.primaryScreen().grabWindow(0).save(path)
    return path


# -- the second session -----------------------------------------------------------------------
def s_shown_at_start():
    d = docker()
    log("second start", shown=values(d), status=d.status.text())
    return True


def s_reconnected():
    d = docker()
    if not connected(d):
        report["last_status"] = d.status.text()
        return False
    server_tab = next(i for i in range(d.tabs.count()) if d.tabs.tabText(i) == "Server")
    d.open_options(server_tab)  # as the painter clicks the tab
    log("second connected", shown=values(d), status=d.status.text())
    return True


def s_forget():
    d = docker()
    if time.monotonic() - state["since"] < 0.5:  # the drawer painted
        return False
    report["shot_second"] = screen_shot("krita-sessions-second.png")
    d.drawer.hide()
    d.remember_check.click()  # untick: forget the token, it must leave kritarc
    log("forgotten", shown=values(d))
    return True


FIRST = [(s_window, 120), (s_type_server, 10), (s_set_everything, 120), (s_quit, 30)]
SECOND = [(s_window, 120), (s_shown_at_start, 10), (s_reconnected, 120), (s_forget, 10), (s_quit, 30)]
STEPS = FIRST if PHASE == "first" else SECOND


def run():
    start(STEPS)
