"""Issue 13 below the docker: automatic resolution, soft masks, inpaint modes,
layer-ready results — through the engine with the tiny demo models."""

from __future__ import annotations

import numpy as np
import pytest

from engine import inpainting, masks
from engine.params import JobParams
from protocol.infotext import parse_infotext

FAST = {"steps": 2, "prompt": "a cat", "seed": 3, "preview": False}


# -- automatic resolution -----------------------------------------------------------
@pytest.mark.slow
def test_auto_txt2img_large_area_is_first_pass_plus_hires_resize(engine):
    stages = []
    out = engine.run(JobParams(width=768, height=640, resolution="auto", **FAST),
                     lambda step, total, stage, preview, *_: stages.append(stage))
    assert out.images[0].shape == (640, 768, 4)
    p = out.parameters
    assert p["first_pass"] == [560, 464] and p["final_size"] == [768, 640]
    assert (p["width"], p["height"], p["hires_width"], p["hires_height"]) == (560, 464, 768, 640)
    assert "hires" in stages and stages[0] == "sampling"
    text = parse_infotext(out.infotext)
    assert text["Size"] == "560x464" and text["Hires resize"] == "768x640" and text["Denoising strength"] == "0.45"


def test_auto_txt2img_small_area_draws_at_native_and_scales_down(engine):
    out = engine.run(JobParams(width=256, height=192, resolution="auto", **FAST))
    assert out.images[0].shape == (192, 256, 4)
    assert out.parameters["first_pass"] == [592, 440]
    text = parse_infotext(out.infotext)
    assert text["Size"] == "256x192" and text["First pass size"] == "592x440"


def test_exact_is_the_protocol_2_default(engine):
    out = engine.run(JobParams(width=256, height=192, **FAST))
    assert out.images[0].shape == (192, 256, 4)
    assert "first_pass" not in out.parameters and "First pass size" not in out.infotext


def test_auto_refine_small_layer_works_at_native_and_returns_its_size(engine):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (150, 201, 4), dtype=np.uint8)
    out = engine.run(JobParams(kind="img2img", image=image, strength=0.5, resolution="auto", **FAST))
    assert out.images[0].shape == (150, 201, 4)
    assert out.parameters["first_pass"] == [592, 440] and out.parameters["final_size"] == [201, 150]


@pytest.mark.slow
def test_auto_refine_large_layer_refines_twice(engine):
    image = np.full((640, 768, 3), 120, np.uint8)
    stages = []
    out = engine.run(JobParams(kind="img2img", image=image, strength=0.3, resolution="auto", **FAST),
                     lambda step, total, stage, preview, *_: stages.append(stage))
    assert out.images[0].shape == (640, 768, 4)
    p = out.parameters
    assert p["first_pass"] == [560, 464] and p["hires_denoise"] == 0.3  # never more than the painter's strength
    assert "hires" in stages
    assert parse_infotext(out.infotext)["Hires resize"] == "768x640"


@pytest.mark.slow
def test_auto_inpaint_of_a_large_selection_refines_at_its_size(engine):
    image = np.full((640, 768, 3), 100, np.uint8)
    mask = np.zeros((640, 768), np.uint8)
    mask[40:600, 40:728] = 255
    stages = []
    out = engine.run(JobParams(kind="inpaint", image=image, mask=mask, strength=1.0, resolution="auto",
                               inpaint_padding=32, result_alpha="mask", mask_blur=0, **FAST),
                     lambda step, total, stage, preview, *_: stages.append(stage))
    assert out.images[0].shape == (640, 768, 4)
    p = out.parameters
    assert p["first_pass"] == [560, 464] and p["final_size"] == [768, 640]
    assert (p["hires_width"], p["hires_height"], p["hires_denoise"]) == (752, 624, 0.45)  # the crop: mask + 32 px
    assert "hires" in stages and parse_infotext(out.infotext)["Hires resize"] == "752x624"
    assert np.array_equal(out.images[0][..., 3], mask)  # the layer's alpha is the selection


# -- soft masks -------------------------------------------------------------------------
def test_soft_mask_grows_then_feathers_outside_the_selection():
    mask = np.zeros((100, 100), np.uint8)
    mask[40:60, 40:60] = 255
    alpha = masks.soft_mask(mask, grow=4, feather=10)
    assert (alpha[40:60, 40:60] == 1).all()  # the selection is always fully repainted
    assert alpha[50, 60 + 3] == 1  # inside the grown band
    assert 0 < alpha[50, 60 + 9] < 1  # on the ramp
    assert alpha[50, 60 + 15] == 0 and alpha[0, 0] == 0  # beyond grow + feather
    row = alpha[50, 60:80]
    assert (np.diff(row) <= 0).all()  # monotone: no ring, no seam


def test_soft_mask_keeps_a_soft_selection_and_auto_sizes():
    yy, xx = np.mgrid[:128, :128]
    r = np.hypot((xx - 64) / 40, (yy - 64) / 28)
    selection = np.clip((1.2 - r) / 0.4 * 255, 0, 255).astype(np.uint8)  # a feathered ellipse
    assert np.array_equal(masks.to_mask(masks.soft_mask(selection, 0, 0)), selection)
    grow, feather = masks.resolve_grow_feather(selection, -1, -1, 1.0)
    assert grow == 4 and feather == 32  # 10% of the diagonal is below the 32 px minimum
    assert masks.resolve_grow_feather(selection, -1, -1, 0.5)[1] == 16  # scaled by the strength
    assert (masks.soft_mask(selection, grow, feather) >= selection / 255.0).all()


def test_feathered_selection_comes_back_as_a_layer_with_its_alpha(engine):
    """Refine at 50% inside an elliptical feathered selection, result_alpha=mask:
    the layer's alpha is the selection (+-1 level), zero outside it."""
    yy, xx = np.mgrid[:96, :128]
    r = np.hypot((xx - 64) / 40, (yy - 48) / 28)
    selection = np.clip((1.2 - r) / 0.4 * 255, 0, 255).astype(np.uint8)
    image = np.random.default_rng(2).integers(0, 256, (96, 128, 4), dtype=np.uint8)
    image[..., 3] = 255
    out = engine.run(JobParams(kind="inpaint", image=image, mask=selection, strength=0.5, mask_blur=0,
                               result_alpha="mask", **FAST))
    layer = out.images[0]
    assert layer.shape == (96, 128, 4)
    assert np.abs(layer[..., 3].astype(int) - selection).max() <= 1
    assert (layer[selection == 0] == 0).all()  # transparent (and black) outside


def test_grow_and_feather_on_the_server(engine):
    image = np.full((96, 96, 3), 200, np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    mask[32:64, 32:64] = 255
    out = engine.run(JobParams(kind="inpaint", image=image, mask=mask, strength=1.0, mask_grow=4, mask_feather=12,
                               result_alpha="mask", **FAST))
    alpha = out.images[0][..., 3]
    assert np.array_equal(alpha, masks.to_mask(masks.soft_mask(mask, 4, 12)))
    assert out.parameters["mask_grow"] == 4 and out.parameters["mask_feather"] == 12
    opaque = engine.run(JobParams(kind="inpaint", image=image, mask=mask, strength=1.0, mask_grow=4,
                                  mask_feather=12, **FAST)).images[0]
    far = masks.soft_mask(mask, 4, 12) == 0
    assert np.array_equal(opaque[far][:, :3], image[far])  # untouched beyond the feather


# -- inpaint modes and expand -----------------------------------------------------------
def test_prefill_modes():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, :32] = (200, 30, 30)
    rgb[:, 32:] = (30, 30, 200)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    for mode in inpainting.MODES:
        out = inpainting.prefill(rgb, mask, mode)
        assert np.array_equal(out[mask == 0], rgb[mask == 0]), mode  # outside the mask: untouched
    assert np.array_equal(inpainting.prefill(rgb, mask, "original"), rgb)
    assert (np.abs(inpainting.prefill(rgb, mask, "add")[32, 32].astype(int) - 127) <= 1).all()
    filled = inpainting.prefill(rgb, mask, "fill")
    assert 60 < filled[32, 31, 0] < 200  # the colours blurred together: the detail is gone
    assert np.array_equal(inpainting.prefill(rgb, mask, "fill", strength=0.5), rgb)  # a refine keeps its pixels


def test_expand_prefills_the_unknown_strip_from_its_edge():
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[:, :64] = (40, 160, 90)  # the canvas; columns 64.. are the new strip (no colour)
    mask = np.zeros((64, 96), np.uint8)
    mask[:, 64:] = 255
    unknown = np.zeros((64, 96), bool)
    unknown[:, 64:] = True
    out = inpainting.prefill(rgb, mask, "expand", unknown, strength=0.6)
    assert np.abs(out[:, 64:].astype(int) - (40, 160, 90)).max() <= 1  # continued from the edge
    assert np.array_equal(out[:, :64], rgb[:, :64])


def test_outpaint_a_canvas_expanded_to_the_right(engine):
    """256x256 expanded by 64 px on the right, the strip transparent and masked:
    the painter's pixels are unchanged and the strip is filled (no white)."""
    canvas = np.zeros((128, 160, 4), np.uint8)
    canvas[:, :128] = (60, 120, 180, 255)
    mask = np.zeros((128, 160), np.uint8)
    mask[:, 128:] = 255
    out = engine.run(JobParams(kind="inpaint", image=canvas, mask=mask, strength=1.0, inpaint_mode="expand",
                               mask_blur=0, **FAST)).images[0]
    assert out.shape == (128, 160, 4)
    assert np.array_equal(out[:, :128], canvas[:, :128])
    assert (out[:, 128:, 3] == 255).all()
    assert out[:, 128:, :3].std() > 0 and not (out[:, 128:, :3] >= 250).all()


def test_remove_with_no_prompt_asks_for_background(engine):
    image = np.full((64, 64, 3), 90, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 255
    out = engine.run(JobParams(kind="inpaint", image=image, mask=mask, strength=1.0, inpaint_mode="remove",
                               steps=2, seed=1, preview=False))
    assert out.parameters["prompt"] == "background scenery" and out.parameters["inpaint_mode"] == "remove"


@pytest.mark.slow
def test_an_inpainting_checkpoint_is_preferred_for_inpaint(tmp_path):
    from engine.demo.builder import build_checkpoint
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    build_checkpoint(tmp_path / "Stable-diffusion" / "tiny.safetensors")
    build_checkpoint(tmp_path / "Stable-diffusion" / "tiny-inpainting.safetensors", inpainting=True)
    engine = Engine(Registry(tmp_path).scan(), ModelManager(device="cpu"))
    image = np.full((64, 64, 3), 90, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    out = engine.run(JobParams(kind="inpaint", image=image, mask=mask, strength=1.0, **FAST))
    assert out.parameters["model"] == "tiny-inpainting"
    assert engine.run(JobParams(width=64, height=64, **FAST)).parameters["model"] == "tiny"
    named = engine.run(JobParams(kind="inpaint", image=image, mask=mask, model="tiny", **FAST))
    assert named.parameters["model"] == "tiny"  # a model the request names is used as named
