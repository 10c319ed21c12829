"""Pure pieces: tokenizer derivation, mask geometry, samplers, previews."""

from __future__ import annotations

import numpy as np
import pytest

from engine import masks
from engine.errors import EngineError
from engine.samplers import lookup


def test_clip_tokenizer_matches_openai_ids():
    from engine.tokenizers import clip_tokenizer

    tok = clip_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.pad_token == "<|endoftext|>"
    assert clip_tokenizer("!").pad_token_id == 0


def test_feather_stays_inside_the_mask():
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    alpha = masks.feather(mask, 6)
    assert alpha[mask == 0].max() == 0.0
    assert alpha[32, 32] == pytest.approx(1.0, abs=1e-3)
    assert 0.0 < alpha[16, 32] < 1.0  # soft at the inner edge


def test_composite_keeps_mask_zero_pixels_byte_identical():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    generated = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:28, 2:30] = 255
    out = masks.composite(original, generated, masks.feather(mask, 2))
    assert np.array_equal(out[mask == 0], original[mask == 0])
    assert np.array_equal(out[14, 10:20], generated[14, 10:20])


@pytest.mark.parametrize(("w", "h", "native", "expect"), [(100, 100, 512, (512, 512)), (2000, 1000, 512, (728, 360)), (64, 640, 768, (240, 2432))])
def test_working_size(w, h, native, expect):
    ww, wh = masks.working_size(w, h, native)
    assert (ww, wh) == expect and ww % 8 == 0 and wh % 8 == 0


def test_mask_box_and_padding():
    mask = np.zeros((50, 80), np.uint8)
    mask[10:20, 30:35] = 1
    assert masks.mask_box(mask) == (30, 10, 35, 20)
    assert masks.expand_box((30, 10, 35, 20), 16, 80, 50) == (14, 0, 51, 36)
    assert masks.mask_box(np.zeros((4, 4), np.uint8)) is None


BASE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "steps_offset": 1,
}


def test_names_carry_their_schedule_and_the_schedule_type_wins():
    from engine.samplers import resolve

    assert resolve("DPM++ 2M Karras") == (lookup("DPM++ 2M Karras"), "Karras")
    assert resolve("DPM++ 2M")[1] == "Uniform"  # protocol 2's meaning: the WebUI 1.6-1.8's
    assert resolve("DPM++ 2M", "karras")[1] == "Karras"
    assert resolve("DPM++ 2M Karras", "SGM Uniform")[1] == "SGM Uniform"
    assert resolve("Euler Karras") [0].function == "sample_euler"  # any name + schedule, as the WebUI 1.9+
    assert resolve("k_dpmpp_2m_sde_heun_exp")[0].solver_type == "heun"
    assert lookup("k_euler_a").name == "Euler a" and lookup("k_lms_ka").name == "LMS Karras"
    with pytest.raises(EngineError) as caught:
        resolve("Euler", "Karras-ish")
    assert caught.value.field == "schedule_type"


def test_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(EngineError) as caught:
        lookup("Eular a")
    assert caught.value.code == "unknown_sampler" and caught.value.field == "sampler"
    for required in ("Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DDIM"):
        assert required in caught.value.message
    assert lookup("dpm++ 2m karras").name == "DPM++ 2M Karras"


def test_preview_is_small_rgba():
    import torch

    from engine.preview import latent_preview

    out = latent_preview(torch.randn(4, 8, 12), "sd15")
    assert out.shape == (8, 12, 4) and out.dtype == np.uint8 and (out[..., 3] == 255).all()
