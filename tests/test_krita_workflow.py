"""The painter's workflow without Krita: history, queue, settings, presets, geometry."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from krita_plugin.paintbridge import jobqueue, prefs, regions
from krita_plugin.paintbridge.history import Entry, History
from krita_plugin.paintbridge.regions import Rect
from krita_plugin.paintbridge.requests import Settings


def _png(color, size=(8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", size, color).save(out, "PNG")
    return out.getvalue()


def _entry(history: History, prompt: str, seed: int, batch: str = "") -> Entry:
    entry = Entry(history.new_id(), prompt, seed, "generate", "txt2img", 0, 0, 8, 8, first_pass=(512, 384),
                  settings={"steps": 4, "prompt": prompt}, infotext=f"{prompt}\nSteps: 4, Seed: {seed}", batch=batch,
                  png=_png((seed % 256, 0, 0, 255)), thumbnail=_png((seed % 256, 0, 0, 255), (4, 4)))
    history.add(entry)
    return entry


def test_history_round_trip_is_lossless_and_bounded():
    history = History(limit=3)
    entries = [_entry(history, f"a red hat {i}", i) for i in range(5)]
    assert [e.seed for e in history.entries] == [2, 3, 4]  # the last 3 kept
    restored = History.from_bytes(history.to_bytes(), limit=3)
    assert [(e.id, e.prompt, e.seed, e.first_pass, e.settings) for e in restored.entries] == \
        [(e.id, e.prompt, e.seed, e.first_pass, e.settings) for e in entries[2:]]
    assert restored.entries[-1].png == entries[-1].png and restored.entries[-1].thumbnail == entries[-1].thumbnail
    assert Image.open(io.BytesIO(restored.entries[0].png)).getpixel((0, 0)) == (2, 0, 0, 255)
    assert restored.entries[0].size_text == "512x384 → 8x8"
    # a new id never reuses one that came back from the file
    assert restored.new_id() not in {e.id for e in restored.entries}


def test_history_discard_batch_search_and_names():
    history = History()
    a = _entry(history, "A lighthouse at dusk, (oil painting:1.2)", 11, batch="b1")
    b = _entry(history, "a lighthouse at dawn", 12, batch="b1")
    c = _entry(history, "a cat", 13)
    assert [e.id for e in history.batch_of(a.id)] == [a.id, b.id]
    assert history.batch_of(c.id) == [c]
    assert [e.id for e in history.search("LIGHTHOUSE dusk")] == [a.id]
    assert [e.id for e in history.search("")] == [c.id, b.id, a.id]  # newest first
    assert history.discard(b.id) and not history.discard(b.id)
    assert a.title() == "A lighthouse at dusk, (oil painting:1.2) (seed 11)"  # the full prompt
    assert History.from_bytes(b"not a zip").entries == []


def test_queue_rows_have_their_own_state_and_the_status_tells_the_truth():
    q = jobqueue.JobQueue()
    q.add("t1", "generate", "first")
    q.add("t2", "refine", "second")
    assert q.status_line("connected") == "2 job(s) queued"
    q.accepted("t1", "j1", 0)
    q.accepted("t2", "j2", 1)
    assert q.get("t2").text().endswith("queued (1 ahead)")
    q.progress("t1", 3, 4, "sampling", preview="p1")
    assert q.get("t1").state == jobqueue.RUNNING and q.get("t1").preview == "p1"
    assert q.get("t2").state == jobqueue.QUEUED and q.get("t2").preview is None  # its own, none yet
    assert q.status_line("connected") == "Running: step 3/4, 1 queued"
    q.request_cancel("t2")
    q.finish("t2", jobqueue.CANCELLED)
    q.finish("t1", jobqueue.FINISHED)
    assert [r.state for r in q.rows] == ["finished", "cancelled"]
    assert q.status_line("connected") == "Connected — ready"
    q.add("t3", "generate", "third")
    q.accepted("t3", "j3", 0)
    text = q.status_line("disconnected", "No PaintBridge server at ws://x")
    assert text.startswith("Disconnected: No PaintBridge server") and "1 job(s)" in text
    q.finish("t3", jobqueue.LOST, "the server restarted")
    assert q.get("t3").text().endswith("lost: the server restarted")
    q.add("t4", "generate", "x")
    q.finish("t4", jobqueue.FAILED_JOB, "model not found")
    assert "failed: model not found" in q.get("t4").text()


def test_queued_position_moves_up_as_jobs_in_front_end():
    q = jobqueue.JobQueue()
    for tag in ("a", "b", "c"):
        q.add(tag, "generate", tag)
    q.accepted("a", "ja", 0)
    q.accepted("b", "jb", 1)
    q.accepted("c", "jc", 2)
    q.progress("a", 1, 4)
    q.finish("a", jobqueue.FINISHED)
    assert (q.get("b").position, q.get("c").position) == (0, 1)


def test_settings_stay_and_the_token_only_when_remembered():
    store = prefs.Store.memory()
    s = Settings(server="ws://127.0.0.1:9999", token="secret", steps=7, cfg_scale=4.5, random_seed=False)
    prefs.save(store, s, remember_token=False)
    back = Settings()
    prefs.load(store, back)
    assert (back.server, back.steps, back.cfg_scale, back.random_seed, back.token) == ("ws://127.0.0.1:9999", 7, 4.5, False, "")
    prefs.save(store, s, remember_token=True)
    back = Settings()
    prefs.load(store, back)
    assert back.token == "secret"
    prefs.remember_family(store, "sdxl", Settings(model="xl.safetensors", sampler="DPM++ 2M", steps=30, cfg_scale=5.0))
    assert prefs.family_defaults(store, "sdxl") == {"model": "xl.safetensors", "sampler": "DPM++ 2M", "steps": 30, "cfg_scale": 5.0}
    assert prefs.family_defaults(store, "sd15") == {}


def test_a_choice_survives_a_session_that_never_connected():
    """The server's lists fill the combo boxes at connection: a Krita closed before that saves
    the remembered model, sampler, upscaler and preset, not the empty box's ""."""
    assert prefs.listed_choice("", 0, "dreamshaper") == "dreamshaper"
    assert prefs.listed_choice("Euler", 12, "DPM++ 2M") == "Euler"
    store = prefs.Store.memory()
    prefs.save(store, Settings(preset="Ink wash", live_strength=0.4, mode="upscale"), remember_token=False)
    back = Settings()
    prefs.load(store, back)
    assert (back.preset, back.live_strength, back.mode) == ("Ink wash", 0.4, "upscale")


def test_lora_picker_and_presets(tmp_path):
    assert prefs.insert_lora("", "detail") == "<lora:detail:0.8>"
    assert prefs.insert_lora("a cat ", "detail") == "a cat, <lora:detail:0.8>"
    assert prefs.insert_lora("a cat, <lora:detail:0.5>", "detail") == "a cat, <lora:detail:0.5>"
    folder = prefs.presets_dir(str(tmp_path))
    preset = prefs.Preset("Ink & wash", model="m.safetensors", sampler="Euler a", steps=25, cfg_scale=6.0,
                          prompt_prefix="ink wash painting", prompt_suffix="masterpiece", negative_prompt="photo")
    path = prefs.save_preset(folder, preset)
    (tmp_path / "paintbridge" / "presets" / "broken.json").write_text("{")
    assert path.endswith("Ink_wash.json")
    assert prefs.load_presets(folder) == [preset]
    assert preset.apply_prompt("a heron") == "ink wash painting, a heron, masterpiece"
    prefs.delete_preset(folder, "Ink & wash")
    assert prefs.load_presets(folder) == []


def test_strength_wording():
    assert prefs.strength_label(1.0, False) == "Generate"
    assert prefs.strength_label(0.5, False) == "Refine 50%"
    assert prefs.strength_label(1.0, True) == "Fill selection"
    assert prefs.strength_label(0.35, True) == "Refine selection 35%"


def test_expand_canvas_geometry():
    e = regions.expand(Rect(0, 0, 256, 256), "right", 64)
    assert e.canvas == Rect(0, 0, 320, 256) and e.strip == Rect(256, 0, 64, 256)
    assert e.resize_args == (0, 0, 320, 256) and e.area.right == 320 and e.area.x <= 256 - 64
    left = regions.expand(Rect(0, 0, 256, 200), "left", 40)
    assert left.resize_args == (-40, 0, 296, 200) and left.strip == Rect(0, 0, 40, 200)
    top = regions.expand(Rect(0, 0, 100, 100), "top", 16, context=16)
    assert top.strip == Rect(0, 0, 100, 16) and top.area.y == 0
    mask = regions.strip_mask(e.area, e.strip, feather=8)
    row = mask[: e.area.width]
    inside = e.strip.x - e.area.x
    assert set(row[inside:]) == {255} and row[0] == 0 and 0 < row[inside - 4] < 255
    assert len(mask) == e.area.width * e.area.height and mask[-1] == 255
    vertical = regions.strip_mask(top.area, top.strip, feather=0)
    assert vertical[: top.area.width] == b"\xff" * top.area.width and vertical[-1] == 0


def test_png_writer_is_lossless():
    from krita_plugin.paintbridge import pngio

    width, height = 7, 5
    rgba = bytes((i * 37) % 256 for i in range(width * height * 4))
    image = Image.open(io.BytesIO(pngio.encode_rgba(width, height, rgba)))
    assert image.mode == "RGBA" and image.size == (width, height) and image.tobytes() == rgba


def test_worker_builds_requests_on_its_own_thread(server):
    """The docker hands over a builder: pixel conversion never runs on Krita's UI thread."""
    import threading

    from krita_plugin.paintbridge.requests import generate_request
    from krita_plugin.paintbridge.worker import Worker
    from tests.test_krita_plugin import _until

    worker = Worker(server.url)
    worker.start()
    try:
        _until(worker, "welcome")
        threads = []

        def build():
            threads.append(threading.current_thread().name)
            return generate_request(Settings(steps=1, resolution="exact", random_seed=False, seed=3), 128, 128, None)

        def broken():
            raise ValueError("unreadable pixels")

        worker.submit("good", build)
        worker.submit("bad", broken)
        events = _until(worker, "result", lambda e: e.tag == "good")
        events += _until(worker, "failed", lambda e: e.tag == "bad") if not any(e.kind == "failed" for e in events) else []
        failed = next(e for e in events if e.kind == "failed")
        assert failed.tag == "bad" and failed.data[0] == "invalid_request" and "unreadable pixels" in failed.data[1]
        assert threads == ["paintbridge-network"]
        result = next(e for e in events if e.kind == "result").data
        assert result.seeds == [3] and (result.images[0].width, result.images[0].height) == (128, 128)
    finally:
        worker.stop()


def test_soft_mask_request_fields():
    from krita_plugin.paintbridge.requests import generate_request, plan_sizes
    from protocol import RawImage

    image, mask = RawImage(64, 64, 4, bytes(64 * 64 * 4)), RawImage(64, 64, 1, bytes(64 * 64))
    refine = generate_request(Settings(strength=0.5), 64, 64, image, mask)
    assert refine.kind == "inpaint" and refine.strength == 0.5 and refine.mask_blur == 0
    assert refine.inpaint_mode == "original" and refine.result_alpha == "mask"
    fill = generate_request(Settings(strength=1.0, inpaint_mode="remove"), 64, 64, image, mask)
    assert fill.inpaint_mode == "remove"
    expand = generate_request(Settings(), 64, 64, image, mask, inpaint_mode="expand")
    assert expand.inpaint_mode == "expand"
    for request in (refine, fill, expand):
        request.validate()
    auto = generate_request(Settings(), 2048, 1536, None)
    assert (auto.kind, auto.width, auto.height, auto.resolution) == ("txt2img", 2048, 1536, "auto")
    auto.validate()
    assert plan_sizes(2048, 1536, 512).text() == "592x440 → 2048x1536"
    assert plan_sizes(2048, 1536, 512, "exact").text() == "2048x1536"


def test_family_memory_restores_settings_when_switching_and_in_the_next_session():
    data: dict = {}
    store = prefs.Store(lambda g, k, d: data.get((g, k), d), lambda g, k, v: data.__setitem__((g, k), v))
    memory = prefs.FamilyMemory(store)
    memory.start("sd15")  # Krita started with an SD1.5 model
    sd15 = {"model": "v1.safetensors", "sampler": "Euler a", "steps": 20, "cfg_scale": 7.0}
    assert memory.switch("sd15", sd15) == {}  # another SD1.5 model: keep what is set
    assert memory.switch("sdxl", sd15) == {}  # SDXL never used: keep the current values
    sdxl = {"model": "xl.safetensors", "sampler": "DPM++ 2M Karras", "steps": 30, "cfg_scale": 5.0}
    assert memory.switch("sd15", sdxl) == {"sampler": "Euler a", "steps": 20, "cfg_scale": 7.0}
    assert memory.switch("sdxl", {**sd15, "steps": 25}) == {"sampler": "DPM++ 2M Karras", "steps": 30, "cfg_scale": 5.0}
    # The next Krita session (same kritarc): both families still known, SD1.5 with its last change.
    later = prefs.FamilyMemory(prefs.Store(lambda g, k, d: data.get((g, k), d), lambda g, k, v: None))
    later.start("sdxl")
    assert later.switch("sd15", sdxl) == {"sampler": "Euler a", "steps": 25, "cfg_scale": 7.0}
    assert later.switch("", sdxl) == {} and later.family == "sd15"  # a model of unknown family changes nothing


def test_style_presets_prefix_suffix_delete_and_sharing(tmp_path):
    folder = prefs.presets_dir(str(tmp_path / "krita"))
    ink = prefs.Preset("Ink & wash", model="m.safetensors", sampler="Euler a", steps=25, cfg_scale=6.0,
                       prompt_prefix="ink wash painting", prompt_suffix="paper texture", negative_prompt="photo")
    prefs.save_preset(folder, ink)
    # "Use" twice does not repeat the prefix; switching presets swaps them around the painter's words
    once = ink.apply_prompt("a heron")
    assert once == "ink wash painting, a heron, paper texture" and ink.apply_prompt(once) == once
    oil = prefs.Preset("Oil", prompt_prefix="oil painting", steps=0)
    values = oil.values(once, previous=ink)
    assert values == {"prompt": "oil painting, a heron"}  # unset fields keep the docker's values
    assert ink.values("a cat") == {"prompt": "ink wash painting, a cat, paper texture", "model": "m.safetensors",
                                   "sampler": "Euler a", "steps": 25, "cfg_scale": 6.0, "negative_prompt": "photo"}
    # Export, delete, import: the same preset comes back
    shared = tmp_path / "shared.json"
    prefs.export_preset(folder, "Ink & wash", str(shared))
    assert prefs.delete_preset(folder, "Ink & wash") and not prefs.delete_preset(folder, "Ink & wash")
    assert prefs.load_presets(folder) == []
    assert prefs.import_preset(folder, str(shared)) == ink and prefs.load_presets(folder) == [ink]
    # Files from others are checked field by field, with a message that says what is wrong
    bad = tmp_path / "bad.json"
    for content, words in (('{"name": "x"}', "not a PaintBridge style preset"),
                           ('{"paintbridge_preset": 1, "name": ""}', "no name"),
                           ('{"paintbridge_preset": 1, "name": "x", "steps": "many"}', "'steps' must be a number"),
                           ('{"paintbridge_preset": 1, "name": "x", "cfg_scale": 1e9}', "out of range"),
                           ('{"paintbridge_preset": 1, "name": "x", "model": 3}', "'model' must be text"),
                           ("{", "not valid JSON")):
        bad.write_text(content)
        with pytest.raises(prefs.PresetError, match=words):
            prefs.import_preset(folder, str(bad))
    bad.write_text('{"paintbridge_preset": 1, "name": "x", "negative_prompt": "' + "a" * prefs.PRESET_MAX_BYTES + '"}')
    with pytest.raises(prefs.PresetError, match="too large"):
        prefs.import_preset(folder, str(bad))
    assert prefs.load_presets(folder) == [ink]  # nothing half-imported


def test_upscale_results_keep_their_pixels_in_the_history():
    history = History()
    upscale = Entry(history.new_id(), "", 7, "upscale", "upscale", 0, 0, 16, 16, first_pass=(8, 8),
                    settings={"upscale_factor": 2.0}, png=_png((10, 20, 30, 255), (16, 16)), thumbnail=_png((1, 2, 3, 255)))
    history.add(upscale)
    back = History.from_bytes(history.to_bytes()).entries[0]
    assert back.png == upscale.png and back.size_text == "8x8 → 16x16"
    assert Image.open(io.BytesIO(back.png)).size == (16, 16)
