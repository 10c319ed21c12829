"""The tiled upscale counts steps and schedules prompts as the WebUI's img2img does."""

from __future__ import annotations

import numpy as np
import pytest

from engine import prompt_schedule
from engine.denoiser import Denoiser
from engine.params import JobParams, RegionParams, UpscaleParams

IMAGE = np.dstack([np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))] * 3)
FAST = {"seed": 3, "cfg_scale": 7.0, "negative_prompt": "blurry"}


def _upscale(steps: int, denoise: float, sampler: str = "Euler", prompt: str = "a cat", **extra) -> JobParams:
    options = UpscaleParams(scale=1.0, upscaler="Lanczos", denoise=denoise, tile=4, overlap=0, tile_batch=4)
    return JobParams(kind="upscale", image=IMAGE, steps=steps, sampler=sampler, prompt=prompt, upscale=options,
                     **FAST, **extra)


def _calls(engine, params: JobParams, monkeypatch) -> int:
    count = [0]
    original = Denoiser.__call__

    def counted(self, x, sigma):
        count[0] += 1
        return original(self, x, sigma)

    with monkeypatch.context() as patch:
        patch.setattr(Denoiser, "__call__", counted)
        engine.run(params)
    return count[0]


@pytest.mark.parametrize(("steps", "denoise"), [(10, 0.35), (4, 0.1), (6, 1.0)])
def test_a_tiled_upscale_runs_the_webuis_t_enc_plus_one_steps(engine, monkeypatch, steps, denoise):
    assert _calls(engine, _upscale(steps, denoise), monkeypatch) == int(min(denoise, 0.999) * steps) + 1


def test_a_tiled_upscale_with_unipc_runs_t_enc_steps_as_the_webuis_unipc(engine, monkeypatch):
    # The WebUI's UniPC img2img solves over timesteps[:t_enc], one model call per point but the last.
    assert _calls(engine, _upscale(10, 0.45, "UniPC"), monkeypatch) == int(0.45 * 10)


def test_a_scheduled_prompt_switches_at_its_step_in_a_tiled_upscale(engine, monkeypatch):
    built: list[prompt_schedule.ScheduledGuidance] = []
    original = prompt_schedule.build

    def keep(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(prompt_schedule, "build", keep)
    images = {p: engine.run(_upscale(4, 1.0, prompt=p)).images[0]
              for p in ("a cat", "a dog", "[a cat:a dog:2]", "[a cat:a dog:9]")}
    # Four steps (t_enc 3 + 1); the WebUI compares its call counter (from 0) with the edit's step 2.
    assert built[0].used == [0, 0, 0, 1] and built[1].used == [0, 0, 0, 0]
    assert not np.array_equal(images["[a cat:a dog:2]"], images["a cat"])
    assert not np.array_equal(images["[a cat:a dog:2]"], images["a dog"])
    assert np.array_equal(images["[a cat:a dog:9]"], images["a cat"])  # an edit after the last step never switches


def test_alternation_and_and_in_a_tiled_upscale(engine):
    plain = engine.run(_upscale(3, 1.0, prompt="a cat")).images[0]
    for prompt in ("[a cat|a dog]", "a cat AND a dog :0.5"):
        out = engine.run(_upscale(3, 1.0, prompt=prompt))
        assert not np.array_equal(out.images[0], plain) and f"{prompt}\n" in out.infotext


def test_regions_take_a_scheduled_prompt_in_an_upscale(engine):
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255

    def run(prompt: str) -> np.ndarray:
        return engine.run(_upscale(3, 1.0, prompt=prompt, regions=[RegionParams(mask, "a hat")])).images[0]

    assert np.array_equal(run("[a cat:a dog:9]"), run("a cat"))
    assert not np.array_equal(run("[a cat:a dog:1]"), run("a cat"))
