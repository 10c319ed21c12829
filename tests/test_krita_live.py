"""Live mode's plain rules (krita_plugin/paintbridge/live.py) and the region store, no Krita needed."""

from __future__ import annotations

import random

from krita_plugin.paintbridge import live
from krita_plugin.paintbridge.region_layers import RegionPrompt, RegionStore
from krita_plugin.paintbridge.requests import Settings
from protocol import RawImage
from protocol.fewstep import FewStepDefaults
from protocol.fields import from_wire, to_wire
from protocol.messages import ModelInfo
from protocol.requests import JobRequest


def test_the_fingerprint_sees_one_pixel_the_selection_and_the_settings():
    canvas = bytearray(512 * 512 * 4)
    base = live.fingerprint(bytes(canvas))
    assert live.fingerprint(bytes(canvas)) == base
    canvas[4 * (300 * 512 + 17) + 1] = 1  # one channel of one pixel
    assert live.fingerprint(bytes(canvas)) != base
    assert live.fingerprint(b"x", (0, 0, 8, 8)) != live.fingerprint(b"x", (0, 0, 16, 8))
    assert live.fingerprint(b"x", None, "a cat") != live.fingerprint(b"x", None, "a dog")


def test_debounce_waits_for_quiet_and_fires_during_a_long_stroke():
    d = live.Debounce(delay_s=0.2, max_wait_s=1.0)
    assert not d.due(0.0) and not d.pending  # nothing changed: never
    d.changed(0.0)
    assert not d.due(0.1)
    d.changed(0.15)
    assert not d.due(0.3) and d.due(0.36)  # 0.2 s after the last change
    assert abs(d.due_in(0.3) - 0.05) < 1e-9 and d.due_in(0.5) == 0.0
    d.fired()
    assert not d.pending and not d.due(5.0) and d.due_in(5.0) is None
    for t in range(0, 12):  # a change every 0.1 s: never quiet, still due after max_wait
        d.changed(10 + t * 0.1)
    assert d.due(11.0) and d.due(11.1)


def test_live_state_sends_only_changes_and_keeps_only_the_newest_result():
    state, d = live.LiveState(), live.Debounce(delay_s=0.2)
    assert state.observe(b"a", 0.0, d) and d.pending
    assert not state.observe(b"a", 0.1, d)  # the same canvas
    state.sending("live1", b"a", live.Stroke(changed=0.0))
    d.fired()
    assert state.observe(b"b", 1.0, d) and d.pending
    assert state.observe(b"a", 1.1, d)  # back to what was sent (an undo): still pending from "b"
    state.sending("live2", b"a", live.Stroke(changed=1.0))
    assert state.finished("live1") is None  # stale: a newer one was sent
    stroke = state.finished("live2")
    assert stroke is not None and state.strokes == [stroke] and not state.tags
    d.fired()
    assert not state.observe(b"a", 2.0, d) and not d.pending


def test_polling_slows_down_when_a_poll_is_expensive():
    p = live.Poller(base_s=0.1, share=0.1)
    p.record(0.002)
    assert p.interval_s == 0.1
    for _ in range(5):  # smoothed: a single slow poll does not halve the rate
        p.record(0.05)
    assert 0.4 < p.interval_s <= 0.5  # at most 10% of the UI thread


def test_the_live_seed_is_fixed_for_the_session():
    assert live.live_seed(Settings(seed=77, random_seed=False), 5) == 77
    drawn = live.live_seed(Settings(random_seed=True), None, random.Random(1))
    assert live.live_seed(Settings(random_seed=True), drawn) == drawn


def test_live_size_keeps_small_areas_and_shrinks_big_ones_to_native():
    assert live.live_size(512, 512, 512) == (512, 512)
    assert live.live_size(256, 200, 512) == (256, 200)
    w, h = live.live_size(2048, 1536, 512)
    assert w % 8 == h % 8 == 0 and abs(w / h - 4 / 3) < 0.03 and 0.9 < w * h / 512**2 <= 1.05


def test_a_live_request_is_a_live_refine_with_the_few_step_settings():
    info = ModelInfo("lcm-dreamshaper", "checkpoint", "sd15", 512, FewStepDefaults("lcm", 4, 1.0, "LCM", "SGM Uniform"))
    few = live.few_step_of(info)
    assert live.few_step_of(ModelInfo("plain", "checkpoint")) is None
    settings = live.live_settings(Settings(prompt="a cat", steps=30, cfg_scale=7, sampler="Euler a", seed=3, random_seed=True,
                                           batch=4, resolution="auto"), 0.45, 1234, few)
    image = RawImage(64, 64, 4, bytes(64 * 64 * 4))
    request = live.live_request(settings, image, None, few)
    assert request.kind == "img2img" and request.live and not request.preview
    assert (request.steps, request.cfg_scale, request.sampler, request.schedule_type) == (4, 1.0, "LCM", "SGM Uniform")
    assert (request.seed, request.strength, request.batch_size, request.prompt) == (1234, 0.45, 1, "a cat")
    assert request.resolution == "exact" and request.hires is None
    request.validate()
    assert from_wire(JobRequest, to_wire(request)) == request  # what goes over the socket
    # Not a few-step model: the painter's own sampler and steps; full strength is capped (always a refine).
    plain = live.live_request(live.live_settings(Settings(steps=8), 1.0, 5, None), image)
    assert plain.kind == "img2img" and plain.steps == 8 and plain.strength == 0.99 and plain.schedule_type == "Automatic"
    # A selection: a soft-masked inpaint at the live strength.
    masked = live.live_request(settings, image, RawImage(64, 64, 1, bytes(64 * 64)), few)
    assert masked.kind == "inpaint" and masked.live and masked.strength == 0.45 and masked.inpaint_mode == "original"


def test_region_prompts_are_saved_and_a_damaged_annotation_reads_as_none():
    store = RegionStore()
    store.set("{id-1}", RegionPrompt("a red hat", "blurry", 1.5))
    store.set("{id-2}", RegionPrompt("the sea"))
    again = RegionStore.from_bytes(store.to_bytes())
    assert again.prompts == store.prompts
    assert again.prune({"{id-2}"}) and list(again.prompts) == ["{id-2}"]
    assert not again.prune({"{id-2}"})
    for bad in (b"", b"not json", b"[1, 2]", b'{"regions": {"x": 3}}', b"\xff\xfe"):
        assert RegionStore.from_bytes(bad).prompts == {}
    clamped = RegionStore.from_bytes(b'{"regions": {"x": {"prompt": "p", "weight": 99}}}')
    assert clamped.get("x") == RegionPrompt("p", None, 10.0)


def test_the_big_button_applies_in_live_mode_and_the_live_strength_is_remembered():
    from krita_plugin.paintbridge import prefs

    assert prefs.button_label(0.5, False, "live") == prefs.button_label(1.0, True, "live") == "Apply live picture"
    store = prefs.Store.memory()
    prefs.save(store, Settings(live_strength=0.35), False)
    loaded = Settings()
    prefs.load(store, loaded)
    assert loaded.live_strength == 0.35
