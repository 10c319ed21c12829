"""The Krita plugin: its plain logic without Krita, its package, its worker."""

from __future__ import annotations

import json
import subprocess
import time
import zipfile

import pytest

from bridge_server import plugin_package
from krita_plugin.paintbridge import colors, connection, regions, requests
from krita_plugin.paintbridge.regions import Rect
from protocol import RawImage


def test_rgba8_round_trip_from_bgra():
    bgra = bytes([10, 20, 30, 40, 1, 2, 3, 4])
    rgba = colors.to_rgba8(bgra, "RGBA", "U8")
    assert rgba == bytes([30, 20, 10, 40, 3, 2, 1, 4])
    assert colors.from_rgba8(rgba, "RGBA", "U8") == bgra


def test_16bit_and_gray_convert_exactly():
    rgba = bytes([0, 128, 255, 255])
    u16 = colors.from_rgba8(rgba, "RGBA", "U16")
    assert len(u16) == 8 and colors.to_rgba8(u16, "RGBA", "U16") == rgba
    gray = colors.from_rgba8(bytes([255, 255, 255, 200, 0, 0, 0, 255]), "GRAYA", "U8")
    assert gray == bytes([255, 200, 0, 255])
    assert colors.to_rgba8(gray, "GRAYA", "U8") == bytes([255, 255, 255, 200, 0, 0, 0, 255])
    assert colors.to_rgba8(colors.from_rgba8(gray_rgba := bytes([9, 9, 9, 7]), "GRAYA", "U16"), "GRAYA", "U16") == gray_rgba


@pytest.mark.parametrize(("model", "depth"), [("CMYKA", "U8"), ("RGBA", "F32"), ("LABA", "U16")])
def test_other_colour_spaces_are_refused_clearly(model, depth):
    with pytest.raises(colors.UnsupportedColorSpace) as caught:
        colors.to_rgba8(b"\0" * 16, model, depth)
    assert model in str(caught.value) and "Convert" in str(caught.value)


def test_argb32_to_rgba8():
    assert colors.argb32_to_rgba8(bytes([1, 2, 3, 4])) == bytes([3, 2, 1, 4])  # little-endian BGRA in memory


def test_regions():
    doc = Rect(0, 0, 300, 200)
    assert regions.work_area(doc, None, 32) == doc
    area = regions.work_area(doc, Rect(10, 20, 50, 30), 16)
    assert area.width % 8 == 0 and area.height % 8 == 0
    assert area.x <= 10 and area.y <= 20 and area.right >= 60 and area.bottom >= 50
    assert regions.work_area(doc, Rect(280, 190, 20, 10), 32).right <= 300


def test_requests_follow_the_strength_slider():
    s = requests.Settings(prompt="p", steps=5, strength=1.0, random_seed=False, seed=9)
    txt = requests.generate_request(s, 250, 130, None)
    assert txt.kind == "txt2img" and (txt.width, txt.height) == (248, 128) and txt.seed == 9
    image = RawImage(8, 8, 4, bytes(256))
    s.strength, s.random_seed = 0.4, True
    ref = requests.generate_request(s, 8, 8, image)
    assert ref.kind == "img2img" and ref.strength == 0.4 and ref.seed == -1
    ref.validate()
    inp = requests.inpaint_request(s, image, RawImage(8, 8, 1, bytes(64)))
    inp.validate()
    up = requests.upscale_request(requests.Settings(upscale_factor=2, upscale_denoise=0.3), image)
    assert up.kind == "upscale" and up.upscale.scale == 2 and up.upscale.denoise == 0.3
    up.validate()


def test_connection_backoff_and_fatal_errors():
    now = [0.0]
    state = connection.ConnectionState(clock=lambda: now[0])
    assert state.should_connect()
    delays = []
    for _ in range(6):
        state.connecting()
        state.lost("unreachable", "", "ws://x")
        delays.append(state.next_attempt - now[0])
        assert not state.should_connect()
        now[0] = state.next_attempt
        assert state.should_connect()
    assert delays == [1, 2, 4, 8, 15, 15]
    assert "paintbridge serve" in state.message
    state.connected()
    state.lost("unauthorized", "bad", "ws://x")
    assert state.state == connection.FAILED and "token" in state.message and not state.should_connect()
    state.reconfigure()
    assert state.should_connect()


def test_plugin_zip_is_self_contained(tmp_path, server):
    """From a Python with only the standard library, the zip's code runs a real job."""
    archive = plugin_package.build_zip(tmp_path / "plugin.zip")
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        z.extractall(tmp_path / "x")
    assert "paintbridge.desktop" in names and "paintbridge/vendor/websockets/__init__.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc"))]
    script = f"""
import sys
sys.path[:] = [p for p in sys.path if "site-packages" not in p and "dist-packages" not in p]
sys.path.insert(0, {str(tmp_path / "x")!r})
import paintbridge, time
from paintbridge.worker import Worker
from paintbridge.requests import Settings, generate_request
import websockets, msgpack
assert "vendor" in websockets.__file__ and "vendor" in msgpack.__file__, (websockets.__file__, msgpack.__file__)
worker = Worker({server.url!r})
worker.start()
request = generate_request(Settings(prompt="x", steps=2, random_seed=False, seed=5), 64, 64, None)
kinds = []
deadline = time.time() + 60
while time.time() < deadline:
    event = worker.events.get(timeout=60)
    kinds.append(event.kind)
    if event.kind == "welcome":
        worker.submit("t1", request)
    if event.kind in ("result", "failed"):
        break
print(kinds, event.data.seeds if event.kind == "result" else event.data)
assert event.kind == "result" and event.data.images[0].width == 64
"""
    done = subprocess.run(["python3", "-I", "-S", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[5]" in done.stdout


def test_worker_reconnects_and_reports_lost_jobs(demo_models):
    from krita_plugin.paintbridge.worker import Worker
    from tests.conftest import ServerProcess

    first = ServerProcess("--demo", "--no-preload")
    worker = Worker(first.url)
    worker.connection.backoff.initial = 0.2
    worker.start()
    try:
        events = _until(worker, "welcome")
        assert ("state", ("connected", "")) in [(e.kind, e.data) for e in events]
        request = requests.generate_request(requests.Settings(steps=150), 512, 512, None)
        worker.submit("long", request)
        _until(worker, "progress")
        port = first.port
        first.proc.kill()  # the server dies mid-job (SIGKILL)
        first.stop()
        lost = _until(worker, "state", lambda e: e.data[0] == "disconnected")
        assert "lost" in lost[-1].data[1]
        _until(worker, "state", lambda e: "No PaintBridge server" in e.data[1] and "paintbridge serve" in e.data[1])
        second = ServerProcess("--demo", "--no-preload", "--port", str(port))
        try:
            events = _until(worker, "failed", timeout=60)
            assert events[-1].tag == "long" and events[-1].data[0] == "job_lost"
            assert "restarted" in events[-1].data[1]
        finally:
            second.stop()
    finally:
        worker.stop()


def _until(worker, kind, match=lambda e: True, timeout=60.0):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = worker.events.get(timeout=1)
        except Exception:
            continue
        seen.append(event)
        if event.kind == kind and match(event):
            return seen
    raise AssertionError(f"no {kind} event; saw {[(e.kind, e.data) for e in seen]}")


def test_install_plugin_and_kritarc(tmp_path):
    from tests.conftest import run_cli

    kritarc = tmp_path / "config" / "kritarc"
    kritarc.parent.mkdir()
    kritarc.write_text("[General]\nfoo=Bar Baz\n\n[python]\nenable_other=true\nenable_paintbridge=false\n")
    done = run_cli("install-plugin", "--krita-dir", str(tmp_path / "krita"), "--kritarc", str(kritarc))
    assert done.returncode == 0, done.stderr
    text = kritarc.read_text()
    assert "foo=Bar Baz" in text and "enable_other=true" in text and "enable_paintbridge=true" in text
    assert "enable_paintbridge=false" not in text
    assert (tmp_path / "krita" / "pykrita" / "paintbridge.desktop").is_file()
    assert (tmp_path / "krita" / "pykrita" / "paintbridge" / "docker.py").is_file()
    assert (tmp_path / "krita" / "pykrita" / "paintbridge" / "vendor" / "msgpack" / "fallback.py").is_file()
    fresh = tmp_path / "fresh-kritarc"
    plugin_package.enable_in_kritarc(fresh)
    assert fresh.read_text() == "[python]\nenable_paintbridge=true\n"
    done = run_cli("build-plugin", "--out", str(tmp_path / "p.zip"))
    assert done.returncode == 0 and zipfile.is_zipfile(tmp_path / "p.zip")
    json.dumps(done.stdout)
