"""Regions (engine/regions.py): a prompt per masked area, blended at every step."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.errors import EngineError
from engine.params import JobParams, RegionParams, UpscaleParams

SIZE = 128
# Euler a at eta 0.5 runs through KPipeline with or without regions, so the plain results compare like for like
# (regions force KPipeline; at its default eta 1 Euler a otherwise runs on diffusers' scheduler and inpaint pipeline).
BASE = {"width": SIZE, "height": SIZE, "seed": 3, "steps": 4, "prompt": "a cat", "negative_prompt": "blurry",
        "sampler": "Euler a", "eta": 0.5}
FULL = np.full((SIZE, SIZE), 255, np.uint8)
EMPTY = np.zeros((SIZE, SIZE), np.uint8)
LEFT = EMPTY.copy()
LEFT[:, : SIZE // 2] = 255
OTHER = "a red dog on the beach, oil painting"


def _run(engine, **kw) -> np.ndarray:
    return engine.run(JobParams(**{**BASE, **kw})).images[0].astype(np.int16)


@pytest.fixture(scope="module")
def plain(engine) -> np.ndarray:
    return _run(engine)


@pytest.fixture(scope="module")
def full(engine) -> np.ndarray:
    return _run(engine, regions=[RegionParams(FULL, OTHER)])


@pytest.fixture(scope="module")
def soft(engine) -> np.ndarray:
    return _run(engine, regions=[RegionParams(np.full((SIZE, SIZE), 128, np.uint8), OTHER)])


def _change(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a[..., :3] - b[..., :3]).mean(axis=2)


def _inside_outside(change: np.ndarray, margin: int = 8) -> tuple[float, float]:
    """Mean change well inside the left-half mask and well outside it (the UNet
    and the VAE see across the edge, so a band around it is left out)."""
    half = change.shape[1] // 2
    return float(change[:, : half - margin].mean()), float(change[:, half + margin :].mean())


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2S a"])
def test_a_whole_image_region_with_the_base_prompt_is_the_plain_result(engine, sampler):
    plain = _run(engine, sampler=sampler)
    same = _run(engine, sampler=sampler, regions=[RegionParams(FULL, "a cat")])
    # The same UNet inputs, batched in another order: equal up to float rounding.
    assert np.abs(plain - same).max() <= 2


def test_an_empty_region_changes_nothing(engine, plain):
    assert np.array_equal(plain, _run(engine, regions=[RegionParams(EMPTY, OTHER)]))


def test_a_region_prompt_changes_the_image_mostly_inside_its_mask(engine, plain):
    out = engine.run(JobParams(**BASE, regions=[RegionParams(LEFT, OTHER, weight=1.0)]))
    inside, outside = _inside_outside(_change(out.images[0].astype(np.int16), plain))
    assert inside > 3.0 and inside > 4 * outside, (inside, outside)
    assert f"Region 1 prompt: {OTHER}" in out.infotext.replace('"', "")


def test_soft_masks_blend_the_prompts(plain, full, soft):
    apart = _change(plain, full).mean()
    # Half of each prediction at every step: nearer to each end than the ends are to each other.
    assert _change(soft, plain).mean() < 0.8 * apart and _change(soft, full).mean() < 0.8 * apart


def test_region_negative_prompt_and_weight_count(engine, full, soft):
    half = np.full((SIZE, SIZE), 128, np.uint8)
    heavy = _run(engine, regions=[RegionParams(half, OTHER, weight=3.0)])
    # Weight 3 on a half mask: 3/4 of the region's prediction, so nearer the full region.
    assert _change(heavy, full).mean() < _change(soft, full).mean()
    own_negative = _run(engine, regions=[RegionParams(FULL, OTHER, negative_prompt="ugly, dark")])
    assert _change(own_negative, full).mean() > 1.0


def test_prompts_are_batched_through_the_unet(engine):
    """Base + two regions, one shared negative: one UNet call per model
    evaluation, of 4 entries (3 prompts + 1 unconditional) rather than three CFG pairs."""
    from engine.registry import CHECKPOINT

    model = engine.models.get(engine.registry.list(CHECKPOINT)[0])
    batches = []
    hook = model.base.unet.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    try:
        right = EMPTY.copy()
        right[: SIZE // 2, SIZE // 2 :] = 255  # a quarter: the base prompt still paints a quarter
        _run(engine, sampler="DPM++ 2S a", steps=2, regions=[RegionParams(LEFT, OTHER), RegionParams(right, "snow")])
    finally:
        hook.remove()
    assert batches and set(batches) == {4}
    assert len(batches) == 2 * 2 - 1  # DPM++ 2S a: two model calls per step, one on the last


def test_regions_in_img2img(engine):
    image = np.asarray(Image.fromarray(np.uint8(np.random.default_rng(1).integers(0, 256, (16, 16, 3))))
                       .resize((SIZE, SIZE), Image.BICUBIC))
    job = {"kind": "img2img", "image": image, "strength": 0.8, "width": 0, "height": 0}
    plain = _run(engine, **job)
    out = _run(engine, **job, regions=[RegionParams(LEFT, OTHER)])
    inside, outside = _inside_outside(_change(out, plain))
    assert inside > 2.0 and inside > 3 * outside, (inside, outside)


@pytest.mark.slow
def test_regions_in_inpaint(engine):
    image = np.full((SIZE, SIZE, 3), 120, np.uint8)
    mask = EMPTY.copy()
    mask[16:112, 16:112] = 255
    # The crop is worked at the model's native 512 px: few steps.
    job = {"kind": "inpaint", "image": image, "mask": mask, "strength": 1.0, "mask_blur": 0, "width": 0, "height": 0,
           "steps": 2}
    plain = _run(engine, **job)
    out = _run(engine, **job, regions=[RegionParams(LEFT, OTHER)])
    assert np.array_equal(out[mask == 0], plain[mask == 0])  # outside the inpaint mask: the input
    change = _change(out, plain)
    inside, outside = float(change[24:104, 24:56].mean()), float(change[24:104, 72:104].mean())
    assert inside > 2.0 and inside > 3 * outside, (inside, outside)


@pytest.mark.slow
def test_regions_in_hires_fix(engine):
    from engine.params import HiresParams

    job = {"width": 64, "height": 64, "hires": HiresParams(scale=2.0, denoise=0.5)}
    plain = _run(engine, **job)
    out = _run(engine, **job, regions=[RegionParams(LEFT, OTHER)])  # a 128 mask stretched onto 64, then 128
    inside, outside = _inside_outside(_change(out, plain))
    assert out.shape == (128, 128, 4) and inside > 3 * outside, (inside, outside)


def test_regions_in_the_tiled_upscale_each_tile_takes_its_crop(engine):
    image = np.asarray(Image.fromarray(np.uint8(np.random.default_rng(2).integers(0, 256, (16, 16, 3))))
                       .resize((SIZE, SIZE), Image.BICUBIC))
    options = UpscaleParams(scale=1.0, upscaler="Lanczos", denoise=0.8, tile=8, overlap=2, tile_batch=4)
    job = {"kind": "upscale", "image": image, "upscale": options, "width": 0, "height": 0}
    plain = _run(engine, **job)
    out = engine.run(JobParams(**{**BASE, **job}, regions=[RegionParams(LEFT, OTHER)]))
    inside, outside = _inside_outside(_change(out.images[0].astype(np.int16), plain))
    assert inside > 2.0 and inside > 3 * outside, (inside, outside)
    assert "Region 1 prompt" in out.infotext


def test_regions_refuse_and_and_per_region_loras(engine):
    for prompt, region, field in (("a AND b", OTHER, "prompt"), (BASE["prompt"], "a dog AND a cat", "regions[0].prompt"),
                                  (BASE["prompt"], "a dog :0.5", "regions[0].prompt")):
        with pytest.raises(EngineError) as err:
            engine.check(JobParams(**{**BASE, "prompt": prompt}, regions=[RegionParams(LEFT, region)]))
        assert err.value.code == "invalid_request" and err.value.field == field and "AND" in err.value.message
    with pytest.raises(EngineError) as err:
        engine.check(JobParams(**BASE, regions=[RegionParams(LEFT, "a <lora:x:0.5> dog")]))
    assert err.value.field == "regions[0].prompt" and "base prompt" in str(err.value)
    engine.check(JobParams(**{**BASE, "sampler": "DPM++ 2M"}))  # without regions the sampler is fine


# -- protocol and CLI --------------------------------------------------------------
def _wire(**extra):
    from protocol.fields import from_wire
    from protocol.requests import JobRequest

    request = from_wire(JobRequest, {"prompt": "a cat", **extra})
    request.validate()
    return request


def _mask_wire(w: int, h: int, channels: int = 1) -> dict:
    return {"width": w, "height": h, "channels": channels, "data": bytes(w * h * channels)}


def test_protocol_regions_are_validated():
    from protocol import ProtocolError
    from protocol.regions import MAX_REGIONS

    ok = _wire(regions=[{"mask": _mask_wire(64, 32), "prompt": "a dog", "weight": 2.0}])
    assert ok.regions[0].weight == 2.0 and ok.regions[0].negative_prompt is None
    assert _wire().regions == []
    bad = [
        ({"regions": [{"mask": _mask_wire(64, 32, 3), "prompt": "x"}]}, "regions[0].mask.channels"),
        ({"regions": [{"mask": _mask_wire(64, 32)}, {"mask": _mask_wire(32, 32)}]}, "regions[1].mask"),
        ({"regions": [{"mask": _mask_wire(8, 8), "weight": 11.0}]}, "regions[0].weight"),
        ({"regions": [{"mask": _mask_wire(8, 8)}] * (MAX_REGIONS + 1)}, "regions"),
        ({"regions": [{"mask": _mask_wire(8, 8), "colour": 1}]}, "regions[0].colour"),
        ({"kind": "img2img", "image": _mask_wire(64, 64, 4), "regions": [{"mask": _mask_wire(32, 64)}]},
         "regions[0].mask"),
    ]
    for extra, field in bad:
        with pytest.raises(ProtocolError) as err:
            _wire(**extra)
        assert err.value.field == field, (field, err.value.message)


def test_cli_region_specs(tmp_path):
    from bridge_server.cli import CliError, region_wires

    gray = tmp_path / "gray.png"
    Image.fromarray(LEFT).save(gray)
    layer = tmp_path / "layer@x.png"  # an '@' that is not a weight
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., 3] = 255 - LEFT
    Image.fromarray(rgba, "RGBA").save(layer)
    regions = region_wires([f"{gray}@1.5=a red hat||blurry", f"{layer}=snow, trees"], [])
    assert regions[0]["weight"] == 1.5 and regions[0]["prompt"] == "a red hat"
    assert regions[0]["negative_prompt"] == "blurry" and regions[0]["mask"]["data"] == LEFT.tobytes()
    assert regions[1]["prompt"] == "snow, trees" and "weight" not in regions[1]
    assert regions[1]["mask"]["data"] == (255 - LEFT).tobytes()  # the layer's alpha is the mask
    from_png = region_wires([str(gray)], [{"prompt": "from the png", "weight": 2.0}])
    assert from_png[0]["prompt"] == "from the png" and from_png[0]["weight"] == 2.0
    with pytest.raises(CliError):
        region_wires([str(gray)], [])


@pytest.mark.slow
def test_cli_generate_with_regions_and_from_png(server, tmp_path):
    from tests.conftest import run_cli

    mask = tmp_path / "left.png"
    Image.fromarray(LEFT).save(mask)
    first = tmp_path / "first.png"
    args = ["--server", server.url, "--prompt", "a cat", "--steps", "3", "--seed", "4", "--width", "128",
            "--height", "128", "--sampler", "DPM++ 2S a"]
    done = run_cli("generate", *args, "--region", f"{mask}@1.5=a red dog, beach||dark", "--out", str(first))
    assert done.returncode == 0, done.stderr
    text = Image.open(first).info["parameters"]
    assert 'Region 1 prompt: "a red dog, beach"' in text and "Region 1 negative prompt: dark" in text
    assert "Region 1 weight: 1.5" in text
    again = tmp_path / "again.png"
    done = run_cli("generate", "--server", server.url, "--from-png", str(first), "--region", str(mask),
                   "--out", str(again))
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    without = run_cli("generate", "--server", server.url, "--from-png", str(first), "--out", str(tmp_path / "w.png"))
    assert without.returncode == 0 and "cannot hold their masks" in without.stderr
    bad = run_cli("generate", *args, "--region", f"{mask}=x AND y", "--out", str(tmp_path / "b.png"))
    assert bad.returncode == 1 and "[invalid_request]" in bad.stderr


def test_the_prompt_batch_halves_on_out_of_memory_with_the_same_result():
    """A fake UNet (output = input x the conditioning's mean) that runs out of
    memory above two conditionings: the blend is the same, run in smaller batches."""
    from types import SimpleNamespace

    import torch

    from engine.denoiser import Guidance
    from engine.regions import RegionControl, _Prompt

    class UNet:
        def __init__(self, limit: int) -> None:
            self.limit, self.batches = limit, []

        def __call__(self, x, t, encoder_hidden_states, added_cond_kwargs=None):
            if x.shape[0] > self.limit:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            self.batches.append(x.shape[0])
            return SimpleNamespace(sample=x * encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None])

    prompts = [_Prompt(torch.full((1, 77, 8), float(v))) for v in (1, 2, 3, 4)]
    masks = [np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)]
    masks[0][:, :8] = 255
    masks[1][:8, :] = 128
    control = RegionControl(prompts, [(0, 3), (1, 3), (2, 3)], masks, [1.0, 2.0], 7.0)
    weights = control.weights(2, 2, "cpu")
    x = torch.randn(1, 4, 2, 2)
    guidance = Guidance(None, None, 7.0)
    big, small = UNet(8), UNet(2)
    expected = control.blend(big, x, 500, guidance, None, weights)
    assert big.batches == [4]  # three prompts and the shared unconditional in one call
    again = RegionControl(prompts, [(0, 3), (1, 3), (2, 3)], masks, [1.0, 2.0], 7.0)
    assert torch.allclose(again.blend(small, x, 500, guidance, None, weights), expected)
    assert again.batch == 2 and small.batches == [2, 2]
    assert torch.allclose(weights.sum(0), torch.ones(1, 1, 1, 2, 2))  # the weights are a partition of unity


def test_prompt_editing_in_regions_switches_at_its_step(engine):
    """[from:to:when] in the base and in a region's prompt: each entry's
    conditioning for the step the WebUI would be at; an edit after the last
    step is the unedited prompt exactly."""
    def run(prompt: str, region: str) -> np.ndarray:
        return engine.run(JobParams(**{**BASE, "prompt": prompt}, regions=[RegionParams(LEFT, region)])).images[0]

    plain = run("a cat", OTHER)
    assert np.array_equal(run("[a cat:a fish:9]", f"[{OTHER}:a boat:9]"), plain)
    edited = run("a cat", f"[{OTHER}:a boat:2]")
    assert not np.array_equal(edited, plain) and not np.array_equal(edited, run("a cat", "a boat"))
    inside, outside = _inside_outside(_change(edited.astype(np.int16), plain))
    assert inside > outside  # the region's edit changes its half most
    assert not np.array_equal(run("[a cat|a fish]", OTHER), plain)
