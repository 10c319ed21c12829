"""Few-step models (engine/fewstep.py) and CFG 1 without the unconditional pass."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from engine import fewstep
from engine.params import HiresParams, JobParams, RegionParams, UpscaleParams


@pytest.mark.parametrize(("name", "kind", "steps", "cfg", "sampler"), [
    ("lcm-lora-sdv1-5", "lcm", 4, 1.0, "LCM"),
    ("LCM_Dreamshaper_v7", "lcm", 4, 1.0, "LCM"),
    ("sd_xl_turbo_1.0_fp16", "turbo", 1, 1.0, "Euler a"),
    ("dreamshaperXL_v21TurboDPMSDE", "turbo", 4, 1.0, "Euler a"),
    ("sdxl_lightning_4step_lora", "lightning", 4, 1.0, "Euler"),
    ("sdxl_lightning_8step_unet", "lightning", 8, 1.0, "Euler"),
    ("juggernautXL_lightning", "lightning", 4, 1.0, "Euler"),
    ("Hyper-SD15-8steps-lora", "hyper", 8, 1.0, "Euler"),
    ("Hyper-SDXL-8steps-CFG-lora", "hyper", 8, 5.0, "Euler"),
    ("Hyper-SD15-1step-lora", "hyper", 1, 1.0, "Euler a"),
    ("sdxl/Hyper-SDXL-12steps-CFG-lora", "hyper", 12, 5.0, "Euler"),
])
def test_file_names_users_have_are_recognised(name, kind, steps, cfg, sampler):
    found = fewstep.detect(name)
    assert found is not None and (found.kind, found.steps, found.cfg_scale, found.sampler) == (kind, steps, cfg, sampler)
    assert found.schedule == ("" if kind == "lcm" else fewstep.SGM_UNIFORM)


@pytest.mark.parametrize("name", ["v1-5-pruned-emaonly", "juggernautXL_v9Rundiffusionphoto2", "calcium_mix",
                                  "add_detail", "sd_xl_base_1.0", "realisticVisionV60B1"])
def test_ordinary_models_are_not(name):
    assert fewstep.detect(name) is None


def test_metadata_and_unet_config_are_read_when_the_name_says_nothing():
    assert fewstep.detect("renamed", {"ss_output_name": "sdxl_lightning_2step"}).steps == 2
    assert fewstep.detect("renamed", {"modelspec.title": "Hyper-SD 8 steps"}).kind == "hyper"
    assert fewstep.detect("renamed", {"ss_output_name": "my style"}) is None
    assert fewstep.detect("renamed", None, {"time_cond_proj_dim": 256}).kind == "lcm"
    assert fewstep.detect("renamed", None, {"time_cond_proj_dim": None}) is None


def test_the_registry_lists_few_step_checkpoints_and_loras(tmp_path, demo_models):
    from safetensors.numpy import save_file

    from bridge_server.convert import few_step_defaults
    from engine.registry import CHECKPOINT, LORA, Registry

    (tmp_path / "Stable-diffusion").mkdir()
    (tmp_path / "Lora").mkdir()
    demo = demo_models / "Stable-diffusion" / "paintbridge-demo.safetensors"
    shutil.copy(demo, tmp_path / "Stable-diffusion" / "dreamshaperXL_lightningDPMSDE.safetensors")
    shutil.copy(demo, tmp_path / "Stable-diffusion" / "plain.safetensors")
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((4, 8), np.float32)}
    save_file(lora, str(tmp_path / "Lora" / "lcm-lora-sdv1-5.safetensors"))
    save_file(lora, str(tmp_path / "Lora" / "renamed.safetensors"), metadata={"ss_output_name": "Hyper-SD15-4steps"})
    save_file(lora, str(tmp_path / "Lora" / "style.safetensors"), metadata={"ss_output_name": "watercolour"})
    registry = Registry(tmp_path).scan()
    assert registry.get("dreamshaperXL_lightningDPMSDE", CHECKPOINT).few_step.kind == "lightning"
    assert registry.get("plain", CHECKPOINT).few_step is None
    assert registry.get("lcm-lora-sdv1-5", LORA).few_step.kind == "lcm"
    assert registry.get("renamed", LORA).few_step.steps == 4
    assert registry.get("style", LORA).few_step is None
    wire = few_step_defaults(registry.get("renamed", LORA).few_step)
    assert (wire.kind, wire.steps, wire.cfg_scale, wire.schedule) == ("hyper", 4, 1.0, fewstep.SGM_UNIFORM)


# -- CFG 1: one model evaluation per step, no unconditional half ---------------------
def _unet_batches(engine, params: JobParams) -> list[int]:
    from engine.registry import CHECKPOINT

    model = engine.models.get(engine.registry.list(CHECKPOINT)[0])
    batches: list[int] = []
    hook = model.base.unet.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    try:
        engine.run(params)
    finally:
        hook.remove()
    return batches


IMAGE = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
MASK = np.zeros((64, 64), np.uint8)
MASK[16:48, 16:48] = 255
LEFT = np.zeros((64, 64), np.uint8)
LEFT[:, :32] = 255
K = {"sampler": "Euler a", "eta": 0.5}  # KPipeline (engine/ksampling.py)
D = {"sampler": "Euler"}  # (was a diffusers scheduler; every k-diffusion name now runs on KPipeline)


@pytest.mark.parametrize(("case", "extra", "calls"), [
    ("txt2img diffusers", {**D}, 4),
    ("txt2img k", {**K}, 4),
    # A partial denoise runs the WebUI's int(strength * steps) + 1 steps; its hires pass runs its steps in full.
    ("img2img diffusers", {**D, "kind": "img2img", "image": IMAGE, "strength": 0.5}, 3),
    ("img2img k", {**K, "kind": "img2img", "image": IMAGE, "strength": 0.5}, 3),
    ("inpaint k", {**K, "kind": "inpaint", "image": IMAGE, "mask": MASK, "strength": 0.5, "steps": 2}, 2),
    ("regions", {**K, "regions": [RegionParams(LEFT, "a dog")]}, 4),
    ("hires", {**K, "hires": HiresParams(scale=1.5, denoise=0.5)}, 4 + 4),
])
@pytest.mark.parametrize("cfg", [1.0, 0.0])
def test_cfg_1_makes_one_model_call_per_step(engine, case, extra, calls, cfg):
    params = JobParams(**{"width": 64, "height": 64, "steps": 4, "seed": 1, "prompt": "a cat",
                          "negative_prompt": "blurry", "cfg_scale": cfg, **extra})
    batches = _unet_batches(engine, params)
    entries = 2 if case == "regions" else 1  # regions: one entry per prompt (base + region), still no unconditional
    assert batches == [entries] * calls, batches
    if case == "txt2img k":  # and at CFG 7 the unconditional half is there
        assert _unet_batches(engine, JobParams(**{**params.__dict__, "cfg_scale": 7.0})) == [2] * calls


def test_cfg_1_in_the_tiled_upscale_sends_only_the_tiles(engine):
    options = UpscaleParams(scale=1.0, upscaler="Lanczos", denoise=0.5, tile=4, overlap=0, tile_batch=4)
    params = JobParams(kind="upscale", image=IMAGE, steps=2, cfg_scale=1.0, seed=1, upscale=options, **K)
    assert _unet_batches(engine, params) == [4] * 2  # 4 tiles of the 8x8 latent, int(0.5 * 2) + 1 steps, no uncond


def test_cfg_1_does_not_encode_the_negative_prompt(engine):
    from engine.registry import CHECKPOINT

    model = engine.models.get(engine.registry.list(CHECKPOINT)[0])
    calls: list[int] = []
    hook = model.base.text_encoder.register_forward_hook(lambda m, args, out: calls.append(1))
    try:
        for cfg in (1.0, 7.0):
            engine.run(JobParams(width=64, height=64, steps=1, seed=1, prompt="a cat", negative_prompt="blurry",
                                 cfg_scale=cfg, **K))
    finally:
        hook.remove()
    assert len(calls) == 1 + 2  # CFG 1: the prompt only; CFG 7: prompt and negative


@pytest.mark.slow
def test_cli_few_step_settings(server, tmp_path):
    from PIL import Image

    from tests.conftest import run_cli

    out = tmp_path / "fast.png"
    done = run_cli("generate", "--server", server.url, "--prompt", "a cat", "--width", "64", "--height", "64",
                   "--few-step", "lightning", "--seed", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    text = Image.open(out).info["parameters"]
    assert "Steps: 4, Sampler: Euler, Schedule type: SGM Uniform, CFG scale: 1," in text
    steps = run_cli("generate", "--server", server.url, "--prompt", "a cat", "--width", "64", "--height", "64",
                    "--few-step", "hyper", "--steps", "2", "--out", str(out))  # a flag given wins
    assert steps.returncode == 0 and "Steps: 2," in Image.open(out).info["parameters"]
    auto = run_cli("generate", "--server", server.url, "--prompt", "a cat", "--few-step", "--out", str(out))
    assert auto.returncode == 1 and "recognises no" in auto.stderr and "[invalid_request]" in auto.stderr


def _tiny_lcm_unet(proj_dim: int | None = 16):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, time_cond_proj_dim=proj_dim).eval()


def test_full_lcm_checkpoints_get_the_guidance_embedding_as_diffusers_lcm_pipeline_gives_it():
    """A UNet with time_cond_proj_dim (LCM-Dreamshaper's kind): the denoiser path passes the
    CFG scale as `timestep_cond`, exactly as LatentConsistencyModelPipeline's own UNet call does,
    with no unconditional pass; the result follows the guidance scale."""
    import torch
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    from engine.denoiser import Guidance, embed_guidance, guided_unet

    unet = _tiny_lcm_unet()
    pipe = LatentConsistencyModelPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=LCMScheduler(),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    hook = unet.register_forward_hook(lambda _m, args, kwargs, out: calls.append((args, kwargs, out[0])), with_kwargs=True)
    cond = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        pipe(prompt_embeds=cond, num_inference_steps=1, guidance_scale=8.0, output_type="latent", height=64, width=64)
    hook.remove()
    (x, t), kwargs, expected = calls[0]
    assert kwargs["timestep_cond"] is not None

    def ours(scale: float):
        g = Guidance(cond, torch.zeros_like(cond), scale)
        embed_guidance(g, unet)
        assert not g.guided  # the guidance is distilled in: one UNet entry per image
        with torch.inference_mode():
            return guided_unet(unet, x, t, g)

    assert torch.allclose(ours(8.0), expected, atol=1e-5)
    assert (ours(2.0) - expected).abs().mean() > 1e-3  # the scale reaches the UNet
    # An ordinary UNet (LCM-LoRA's) takes no embedding: nothing is added.
    plain = Guidance(cond, cond, 8.0)
    embed_guidance(plain, _tiny_lcm_unet(None))
    assert plain.timestep_cond is None and plain.guided
