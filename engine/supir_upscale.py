"""The SUPIR upscale job: an SDXL checkpoint + a SUPIR file restore an upscaled image.

As the authors' pipeline (SUPIRModel.batchify_sample with their tiled
sampler) runs it, in bounded memory:

1. The input is upscaled to the target (an upscaler model or Lanczos).
2. The degradation-robust encoder gives the LQ latent that the adaptor reads
   (through diffusers' tiled VAE, so any size encodes in tiles).
3. Optional pre-denoise (the authors' "stage 1"): that latent decoded and
   encoded again by the ordinary VAE is the latent restore guidance pulls
   toward; without it, the LQ latent itself.
4. EDM sampling from noise (engine/restore.py: churn, restore guidance,
   linear CFG) over overlapping latent tiles (128 latent pixels, stride 64)
   blended with the authors' Gaussian weights; each tile runs the adaptor and
   the modulated UNet for the unconditional and conditional halves at once.
5. Tiled VAE decode (engine/tiled.py), then the authors' colour fix
   (engine/colorfix.py; wavelet by default): the restored detail over the
   colours of the pre-denoised input (their x_stage1), or of the upscaled
   input itself without pre-denoise.
6. The exact target size.

Memory is set by the tile sizes: the whole-image tensors are latents (1/64
of the pixels, 4 channels) and the uint8 images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine import colorfix, restore, tiled
from engine.conditioning import encode_prompts
from engine.denoiser import Denoiser, Guidance
from engine.errors import JobCancelled
from engine.preview import latent_preview
from engine.prompts import extract_loras

# The authors' defaults (test.py / options/SUPIR_v0.yaml, the "Quality" preset).
STEPS = 50
CFG = 7.5  # at the end (their s_cfg, the LinearCFG scale_min)
CFG_START = 4.0  # at the start (their spt_linear_CFG)
S_CHURN = 5.0
S_NOISE = 1.003
TILE, STRIDE = 128, 64  # latent pixels (their TiledRestoreEDMSampler)
QUALITY_PROMPT = ("Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed "
                  "photo - realistic maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, "
                  "skin pore detailing, hyper sharpness, perfect without deformations.")
NEGATIVE_PROMPT = ("painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, "
                   "3D render, unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, "
                   "signature, jpeg artifacts, deformed, lowres, over-smooth")
SIZE_IDS = (1024, 1024, 0, 0, 1024, 1024)  # the authors condition every tile on a 1024x1024 image
PREVIEW_INTERVAL_S = 0.25

Report = Callable[[int, int, str, Any, int, int], None]  # step, steps, stage, preview, tile, tiles

@dataclass
class SupirJob:
    prompt: str
    negative: str
    steps: int
    cfg_scale: float
    cfg_start: float | None
    guidance: float  # tau_r; 0 = off
    s_churn: float
    s_noise: float
    seed: int
    pre_denoise: bool = True
    tile: int = TILE
    stride: int = STRIDE
    tile_batch: int = 1
    vae_tile: int = 512
    control_scale: float = 1.0  # the authors' s_stage2
    color_fix: str = "wavelet"  # engine/colorfix.py: wavelet | adain | none


def load(root, name: str, model: Any):
    """The named SUPIR file built for `model` (a LoadedModel), kept with it.

    The SUPIR model (~2.6 GB in fp16: the adaptor and connectors) lives in the
    checkpoint's `attached` models, so the model manager drops it when that
    checkpoint is unloaded or another takes its place (engine/models.py), and
    one SUPIR file at a time is held: asking for another replaces it."""
    from engine.supir import build_supir, find_supir, read_supir_file

    path = find_supir(root, name)
    stat = path.stat()
    pipe = model.base
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    held = model.attached.get("supir")
    if held is None or held[0] != key:
        model.attached.pop("supir", None)
        del held
        state = read_supir_file(path)
        built, _ = build_supir(path.stem, state, dict(pipe.unet.config), dict(pipe.vae.config))
        del state
        model.attached["supir"] = (key, built.to(pipe._execution_device, pipe.unet.dtype))
    return model.attached["supir"][1]


def gaussian_weights(h: int, w: int, device):
    """The authors' tile weights: a Gaussian of variance 0.01 in tile-relative
    coordinates, so a tile's centre counts ~1e5 times its corners."""
    import torch

    def axis(n: int):
        u = (torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2) / n
        return torch.exp(-(u**2) / (2 * 0.01)) / math.sqrt(2 * math.pi * 0.01)

    return axis(h)[:, None] * axis(w)[None, :]


def supir_sigmas(denoiser: Denoiser, steps: int) -> list[float]:
    """sgm's LegacyDDPMDiscretization: timesteps int(linspace(999, 0, n, endpoint=False)),
    from sigma_max down to the timestep about 1000/n, then 0."""
    count = len(denoiser.log_sigmas)
    ts = np.linspace(count - 1, 0, steps, endpoint=False).astype(int)
    return [float(np.exp(denoiser.log_sigmas[t])) for t in ts] + [0.0]


def _encode_lq(vae, encoder, pixels, tile: int):
    """The degradation-robust encoder's latent (the posterior's mode, as the authors)."""
    from engine.vae_precision import full_precision

    own = vae.encoder
    vae.encoder = encoder
    try:
        with full_precision(vae):  # SDXL's VAE overflows in float16; the denoise encoder is cast with it
            latent = tiled._with_vae_tiles(vae, tile, lambda: vae.encode(pixels.to(vae.dtype)).latent_dist).mode()
    finally:
        vae.encoder = own
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latent - shift) * vae.config.scaling_factor


def run(model: Any, supir: Any, image: np.ndarray, job: SupirJob, report: Report | None = None,
        cancel: Any = None) -> np.ndarray:
    """HxWx3 uint8 (the upscaled input; sides multiples of 32) -> the restored HxWx3 uint8."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    from engine.supir import unet_forward

    pipe = model.base
    unet, vae = pipe.unet, pipe.vae
    device, dtype = pipe._execution_device, unet.dtype
    generator = torch.Generator("cpu").manual_seed(job.seed)

    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise JobCancelled()

    def stage(name: str, step: int = 0) -> None:
        check()
        if report is not None:
            report(step, job.steps, name, None, 0, 0)

    stage("encoding")
    vae_dtype = next(vae.parameters()).dtype
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].to(device, vae_dtype) / 127.5 - 1
    with torch.inference_mode():
        lq = _encode_lq(vae, supir.denoise_encoder, pixels, job.vae_tile).to(dtype)
        del pixels
        reference = image  # whose colours the colour fix keeps
        if job.pre_denoise:
            stage("pre-denoise")
            clean = tiled.decode(vae, lq, job.vae_tile)
            center = tiled.encode(vae, clean, job.vae_tile, generator, device, dtype)
            reference = clean  # the authors' x_stage1
            del clean
        else:
            center = lq

    text, _ = extract_loras(job.prompt)
    cond = encode_prompts(model, text, job.negative)
    g = Guidance(cond.cond, cond.uncond, job.cfg_scale, cond.pooled, cond.uncond_pooled)
    _, _, lh, lw = lq.shape
    factor = 2 ** (len(unet.config.block_out_channels) - 1)  # the UNet halves a tile this often
    tile = max(factor, job.tile // factor * factor)
    grid = tiled.views(lh, lw, tile, max(0, tile - job.stride))
    batches = [grid[i : i + job.tile_batch] for i in range(0, len(grid), job.tile_batch)]
    weight = gaussian_weights(min(tile, lh), min(tile, lw), device)
    coverage = torch.zeros((lh, lw), device=device)
    for v in grid:
        coverage[v.y : v.y + v.size_h, v.x : v.x + v.size_w] += weight
    done = [0]

    def tile_inputs(x, n: int):
        """The batch's conditioning, doubled for CFG as the authors' guider does (uncond first)."""
        ids = torch.tensor([SIZE_IDS], device=device, dtype=dtype)
        if g.guided:
            context = torch.cat([g.uncond.expand(n, -1, -1), g.cond.expand(n, -1, -1)])
            pooled = torch.cat([g.uncond_pooled.expand(n, -1), g.pooled.expand(n, -1)])
            return torch.cat([x, x]), context, {"text_embeds": pooled, "time_ids": ids.repeat(2 * n, 1)}
        return x, g.cond.expand(n, -1, -1), {"text_embeds": g.pooled.expand(n, -1), "time_ids": ids.repeat(n, 1)}

    def predict(x_in, t):
        """Each tile's guided noise prediction by adaptor + modulated UNet, blended."""
        prediction = torch.zeros(x_in.shape, device=device, dtype=torch.float32)
        for b, batch in enumerate(batches):
            check()
            xs = torch.cat([x_in[:, :, v.y : v.y + v.size_h, v.x : v.x + v.size_w] for v in batch])
            lqs = torch.cat([lq[:, :, v.y : v.y + v.size_h, v.x : v.x + v.size_w] for v in batch])
            x2, context, added = tile_inputs(xs, len(batch))
            lq2 = torch.cat([lqs, lqs]) if g.guided else lqs
            control = supir.adaptor(lq2, x2, t, context, added)
            out = unet_forward(unet, supir.connectors, control, x2, t, context, added, job.control_scale).float()
            if g.guided:
                uncond, cond_out = out.chunk(2)
                out = uncond + g.cfg_scale * (cond_out - uncond)
            for j, v in enumerate(batch):
                prediction[:, :, v.y : v.y + v.size_h, v.x : v.x + v.size_w] += out[j : j + 1] * weight
            if report is not None:
                report(min(done[0] + 1, job.steps), job.steps, "SUPIR", None, min(b + 1, len(batches)), len(batches))
        return prediction / coverage

    denoiser = Denoiser(dict(pipe.scheduler.config), predict, dtype, check)
    sigmas = supir_sigmas(denoiser, job.steps)
    gamma = restore.churn_gamma(job.steps, job.s_churn)
    restore.install(denoiser, g, center, job.guidance, job.cfg_start, sigmas, gamma)
    last_preview = [0.0]

    def step_done(x, denoised, fraction: float) -> None:
        done[0] = round(fraction * job.steps)
        if report is not None and done[0] < job.steps and time.monotonic() - last_preview[0] >= PREVIEW_INTERVAL_S:
            last_preview[0] = time.monotonic()
            report(done[0], job.steps, "SUPIR", latent_preview(denoised[0], "sdxl"), 0, 0)

    def noise():
        return randn_tensor(lq.shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32).to(device)

    with torch.inference_mode():
        # sgm starts from unit noise scaled by sqrt(1 + sigma_max^2) (the VP latent's spread).
        x = noise() * math.sqrt(1.0 + sigmas[0] ** 2)
        x = restore.sample_edm(denoiser, x, sigmas, noise, step_done, job.s_churn, job.s_noise)
        stage("decoding", job.steps)
        out = tiled.decode(vae, x.to(dtype), job.vae_tile)
    if job.color_fix != "none":
        stage("colour fix", job.steps)
    return colorfix.apply(job.color_fix, out, reference, device)


def parameters(name: str, job: SupirJob) -> dict[str, Any]:
    return {"supir": name, "restore_guidance": job.guidance, "s_churn": job.s_churn, "s_noise": job.s_noise,
            "cfg_start": job.cfg_start, "pre_denoise": job.pre_denoise, "supir_tile": job.tile,
            "supir_stride": job.stride, "color_fix": job.color_fix}


# -- the job's glue (engine/jobs.py calls these) ------------------------------------------
def supir_entry(engine: Any, params: Any, entry: Any) -> Any:
    """check_job for a SUPIR request, before any model work: an upscale job,
    Euler (the EDM sampler), an SDXL checkpoint, the SUPIR file and the upscaler present."""
    from engine.errors import EngineError
    from engine.params import UpscaleParams
    from engine.samplers import lookup
    from engine.supir import find_supir

    if params.kind != "upscale":
        raise EngineError("invalid_request", "SUPIR models restore in upscale jobs", field="restore.supir")
    if lookup(params.sampler).name != "Euler":
        raise EngineError("invalid_request", "SUPIR samples with Euler (the authors' EDM sampler with churn)",
                          field="sampler")
    if entry is None:  # no checkpoint named: the first SDXL one, not the default (which may be SD1.5)
        from engine.registry import CHECKPOINT

        entry = next((e for e in engine.registry.list(CHECKPOINT)
                      if e.family is not None and e.family.name == "sdxl" and not e.inpainting), None)
    if entry is None:
        raise EngineError("unknown_model", f"SUPIR needs an SDXL checkpoint and the models folder "
                          f"{engine.registry.root} has none: put one in Stable-diffusion/ or checkpoints/",
                          field="model")
    if entry.family is None or entry.family.name != "sdxl":
        family = entry.family.name if entry.family else "unknown"
        raise EngineError("invalid_request", f"SUPIR needs an SDXL checkpoint; {entry.name} is {family}",
                          field="model")
    find_supir(engine.registry.root, params.restore.supir)
    engine.upscalers.resolve((params.upscale or UpscaleParams()).upscaler, "upscale.upscaler")
    return entry


def supir_restore(engine: Any, model: Any, params: Any, upscaled: np.ndarray, seed: int, progress: Any,
                  cancel: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The upscaled image restored by SUPIR at its own size, and the record of it."""
    from PIL import Image

    from engine.params import UpscaleParams

    r, options = params.restore, params.upscale or UpscaleParams()
    h, w = upscaled.shape[:2]
    # SDXL's UNet halves the latent twice: sides multiple of 32 pixels.
    work = (max(64, math.ceil(w / 32) * 32), max(64, math.ceil(h / 32) * 32))
    source = upscaled if work == (w, h) else np.asarray(Image.fromarray(upscaled).resize(work, Image.LANCZOS))
    prompt = params.prompt
    if r.quality_prompt:
        prompt = f"{prompt}, {QUALITY_PROMPT}" if prompt.strip() else QUALITY_PROMPT
    job = SupirJob(prompt, params.negative_prompt or NEGATIVE_PROMPT, params.steps, params.cfg_scale, r.cfg_start,
                   r.guidance, r.s_churn, r.s_noise, seed, r.pre_denoise, options.tile,
                   options.tile - options.overlap, options.tile_batch, options.vae_tile,
                   color_fix=colorfix.resolve(options.color_fix, supir=True))
    supir = load(engine.registry.root, r.supir, model)
    out = run(model, supir, np.ascontiguousarray(source), job, progress, cancel)
    if work != (w, h):
        out = np.asarray(Image.fromarray(out).resize((w, h), Image.LANCZOS))
    record = {**parameters(supir.name, job), "prompt": prompt, "negative_prompt": job.negative,
              "sampler": "Euler", "denoising_strength": 1.0}
    return out, record
