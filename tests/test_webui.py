"""WebUI vocabulary: prompt emphasis, long prompts, BREAK, LoRA, CLIP skip, samplers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from engine.conditioning import encode_prompts
from engine.errors import EngineError
from engine.params import JobParams
from engine.prompts import chunk_tokens, extract_loras, parse_attention
from engine.registry import CHECKPOINT

# The WebUI's documented examples (modules/prompt_parser.py, parse_prompt_attention).
WEBUI_EXAMPLES = {
    "normal text": [("normal text", 1.0)],
    "an (important) word": [("an ", 1.0), ("important", 1.1), (" word", 1.0)],
    "(unbalanced": [("unbalanced", 1.1)],
    "\\(literal\\]": [("(literal]", 1.0)],
    "(unnecessary)(parens)": [("unnecessaryparens", 1.1)],
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).": [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1),
    ],
}


@pytest.mark.parametrize(("text", "expected"), list(WEBUI_EXAMPLES.items()))
def test_emphasis_matches_the_webui(text, expected):
    assert parse_attention(text) == expected


def test_nested_square_brackets_break_and_literal_colon():
    assert parse_attention("[[x]]") == [("x", 1 / 1.1 / 1.1)]
    assert parse_attention("((word))") == [("word", 1.1 * 1.1)]
    assert parse_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert parse_attention("time: 5pm") == [("time: 5pm", 1.0)]


def test_lora_tags_are_removed_from_the_text():
    text, loras = extract_loras("a cat <lora:styles/ink:0.7>, <LORA:b> <lora:c:-0.5>")
    assert "<" not in text and loras == [("styles/ink", 0.7), ("b", 1.0), ("c", -0.5)]


def test_chunks_of_75_with_comma_backtrack_and_break():
    words = [(f"w{i}", 1.0) for i in range(1)]
    ids = list(range(100))
    chunks = chunk_tokens(words, lambda text: ids, comma_id=None)
    assert [len(c.tokens) for c in chunks] == [75, 25]
    with_comma = [*range(70), 999, *range(10)]  # a comma at 70
    chunks = chunk_tokens(words, lambda text: with_comma, comma_id=999)
    assert [len(c.tokens) for c in chunks] == [71, 10]  # the phrase after the comma moved on
    chunks = chunk_tokens([("a", 1.0), ("BREAK", -1.0), ("b", 2.0)], lambda text: [1], comma_id=None)
    assert [(c.tokens, c.weights) for c in chunks] == [([1], [1.0]), ([1], [2.0])]


@pytest.fixture(scope="module")
def model(engine):
    return engine.models.get(engine.registry.list(CHECKPOINT)[0])


def test_long_prompts_are_not_truncated(model):
    long = ", ".join(["a red cat on a mat"] * 20)  # well over 75 tokens
    from engine.conditioning import _chunks

    chunks = len(_chunks(model.base.tokenizer, long))
    assert chunks >= 3
    cond = encode_prompts(model, long, "")
    assert cond.cond.shape[1] == 77 * chunks and cond.uncond.shape == cond.cond.shape
    short = encode_prompts(model, "a cat", "")
    assert short.cond.shape[1] == 77


def test_emphasis_changes_the_conditioning(model):
    plain = encode_prompts(model, "a cat", "").cond
    assert torch.equal(encode_prompts(model, "a (cat:1.0)", "").cond, plain)
    assert not torch.allclose(encode_prompts(model, "a (cat:1.5)", "").cond, plain)
    assert not torch.allclose(encode_prompts(model, "a [cat]", "").cond, plain)


def test_clip_skip_changes_the_image(engine):
    base = JobParams(prompt="a cat", width=64, height=64, steps=3, seed=4)
    one = engine.run(base).images[0]
    two = engine.run(JobParams(**{**vars(base), "clip_skip": 2})).images[0]
    assert not np.array_equal(one, two)


def write_kohya_lora(path, unet, rank: int = 4, seed: int = 0) -> None:
    """A LoRA in kohya's key layout for every attention projection of a UNet."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if name.split(".")[-1] in ("to_q", "to_k", "to_v") or name.endswith("to_out.0"):
            key = "lora_unet_" + name.replace(".", "_")
            out_f, in_f = module.weight.shape
            state[f"{key}.lora_down.weight"] = torch.randn(rank, in_f, generator=gen) * 0.5
            state[f"{key}.lora_up.weight"] = torch.randn(out_f, rank, generator=gen) * 0.5
            state[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(state, str(path))


def test_lora_from_the_prompt_without_leaking(demo_models, tmp_path, model):
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    source = demo_models / "Stable-diffusion"
    (tmp_path / "Stable-diffusion").mkdir()
    shutil.copy(source / "paintbridge-demo.safetensors", tmp_path / "Stable-diffusion" / "m.safetensors")
    shutil.copytree(source / "paintbridge-demo.config", tmp_path / "Stable-diffusion" / "m.config")
    (tmp_path / "Lora").mkdir()
    write_kohya_lora(tmp_path / "Lora" / "ink.safetensors", model.base.unet)
    engine = Engine(Registry(tmp_path).scan(), ModelManager(device="cpu"))
    params = {"width": 64, "height": 64, "steps": 3, "seed": 2}
    baseline = engine.run(JobParams(prompt="a cat", **params)).images[0]
    styled = engine.run(JobParams(prompt="a cat <lora:ink:1>", **params)).images[0]
    half = engine.run(JobParams(prompt="a cat <lora:ink:0.5>", **params)).images[0]
    after = engine.run(JobParams(prompt="a cat", **params)).images[0]
    assert not np.array_equal(styled, baseline) and not np.array_equal(half, styled)
    assert np.abs(after.astype(int) - baseline.astype(int)).max() <= 1  # nothing leaked
    with pytest.raises(EngineError) as caught:
        engine.run(JobParams(prompt="a cat <lora:nope:1>", **params))
    assert caught.value.code == "unknown_model" and caught.value.field == "prompt" and "ink" in caught.value.message


def test_vae_swap_per_request(demo_models, tmp_path):
    import json

    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from engine.demo.ldm_layout import vae_to_ldm
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    source = demo_models / "Stable-diffusion"
    (tmp_path / "Stable-diffusion").mkdir()
    shutil.copy(source / "paintbridge-demo.safetensors", tmp_path / "Stable-diffusion" / "m.safetensors")
    shutil.copytree(source / "paintbridge-demo.config", tmp_path / "Stable-diffusion" / "m.config")
    torch.manual_seed(123)  # a different VAE, saved as WebUI VAE files are (LDM keys, no prefix)
    vae = AutoencoderKL.from_config(json.loads((source / "paintbridge-demo.config" / "vae" / "config.json").read_text()))
    state = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()}
    (tmp_path / "VAE").mkdir()
    save_file(state, str(tmp_path / "VAE" / "other-vae.safetensors"))
    engine = Engine(Registry(tmp_path).scan(), ModelManager(device="cpu"))
    params = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 3}
    own = engine.run(JobParams(**params)).images[0]
    swapped = engine.run(JobParams(vae="other-vae", **params))
    back = engine.run(JobParams(**params)).images[0]
    assert not np.array_equal(own, swapped.images[0]) and "VAE: other-vae" in swapped.infotext
    assert np.array_equal(own, back)
    image = np.full((64, 64, 3), 100, np.uint8)
    refined = engine.run(JobParams(kind="img2img", image=image, strength=0.5, vae="other-vae", **params)).images[0]
    assert refined.shape == (64, 64, 4)

    # As the model default: the WebUI's `<checkpoint>.vae.safetensors` beside the checkpoint...
    shutil.copy(tmp_path / "VAE" / "other-vae.safetensors", tmp_path / "Stable-diffusion" / "m.vae.safetensors")
    engine = Engine(Registry(tmp_path).scan(), ModelManager(device="cpu"))
    assert engine.registry.vae_for(engine.registry.get("m")).name == "m.vae"
    auto = engine.run(JobParams(**params))
    assert np.array_equal(auto.images[0], swapped.images[0]) and "VAE: m.vae" in auto.infotext
    # ...or the server's default (`serve --vae`); a request's own choice wins over both.
    (tmp_path / "Stable-diffusion" / "m.vae.safetensors").unlink()
    engine = Engine(Registry(tmp_path).scan(), ModelManager(device="cpu"), default_vae="other-vae")
    assert np.array_equal(engine.run(JobParams(**params)).images[0], swapped.images[0])
    with pytest.raises(EngineError) as caught:
        engine.run(JobParams(vae="../x", **params))
    assert caught.value.field == "vae"


def test_variation_seed_blends_noise(engine):
    base = {"prompt": "x", "width": 64, "height": 64, "steps": 3, "seed": 10, "sampler": "Euler"}  # no step noise
    plain = engine.run(JobParams(**base)).images[0]
    zero = engine.run(JobParams(subseed=77, subseed_strength=0.0, **base)).images[0]
    small = engine.run(JobParams(subseed=77, subseed_strength=0.1, **base))
    full = engine.run(JobParams(subseed=77, subseed_strength=1.0, **base)).images[0]
    other_seed = engine.run(JobParams(**{**base, "seed": 77})).images[0]
    assert np.array_equal(plain, zero)
    assert not np.array_equal(small.images[0], plain)
    near = np.abs(small.images[0].astype(int) - plain.astype(int)).mean()
    far = np.abs(other_seed.astype(int) - plain.astype(int)).mean()
    assert near < far  # a small variation stays close to the original
    assert np.abs(full.astype(int) - other_seed.astype(int)).max() <= 2  # strength 1 = the variation seed's image
    assert "Variation seed: 77" in small.infotext


def test_batch_count_continues_the_seeds(engine):
    out = engine.run(JobParams(prompt="x", width=64, height=64, steps=2, seed=5, batch_size=2, batch_count=2))
    assert out.seeds == [5, 6, 7, 8] and len(out.images) == 4
    single = engine.run(JobParams(prompt="x", width=64, height=64, steps=2, seed=7)).images[0]
    assert np.abs(out.images[2].astype(int) - single.astype(int)).max() <= 2


@pytest.mark.parametrize("mode", ["just resize", "crop and resize", "resize and fill", "latent upscale"])
def test_img2img_resize_modes(engine, mode):
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :40] = 255
    out = engine.run(JobParams(kind="img2img", image=image, width=64, height=64, strength=0.3, steps=4, seed=1,
                               resize_mode=mode))
    assert out.images[0].shape == (64, 64, 4)


def test_textual_inversion_embedding_by_name(demo_models, tmp_path):
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import EMBEDDING, Registry

    source = demo_models / "Stable-diffusion"
    (tmp_path / "Stable-diffusion").mkdir()
    shutil.copy(source / "paintbridge-demo.safetensors", tmp_path / "Stable-diffusion" / "m.safetensors")
    shutil.copytree(source / "paintbridge-demo.config", tmp_path / "Stable-diffusion" / "m.config")
    (tmp_path / "embeddings").mkdir()
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))  # a two-vector embedding
    torch.save({"string_to_param": {"*": vectors}, "name": "inkstyle"}, tmp_path / "embeddings" / "inkstyle.pt")
    engine = Engine(Registry(tmp_path).scan(), ModelManager(device="cpu"))
    assert [e.name for e in engine.registry.list(EMBEDDING)] == ["inkstyle"]
    params = {"width": 64, "height": 64, "steps": 2, "seed": 1, "sampler": "Euler"}
    before = engine.run(JobParams(prompt="a cat", **params)).images[0]
    styled = engine.run(JobParams(prompt="a cat, (inkstyle:1.2)", **params)).images[0]
    after = engine.run(JobParams(prompt="a cat", **params)).images[0]
    assert not np.array_equal(before, styled) and np.array_equal(before, after)
    model = engine.models.loaded
    tokens = model.base.tokenizer("inkstyle", add_special_tokens=False)["input_ids"]
    assert len(tokens) == 1 and tokens[0] >= 514  # the embedding's own token, not letters


def test_ddim_eta(engine):
    base = {"prompt": "x", "width": 64, "height": 64, "steps": 4, "seed": 2, "sampler": "DDIM"}
    zero = engine.run(JobParams(**base)).images[0]
    one = engine.run(JobParams(eta=1.0, **base))
    assert not np.array_equal(zero, one.images[0]) and "Eta DDIM: 1" in one.infotext
    assert np.array_equal(one.images[0], engine.run(JobParams(eta=1.0, **base)).images[0])
