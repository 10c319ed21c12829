"""Tiled diffusion (MultiDiffusion) and tiled VAE: any size in fixed memory.

diffusers has no tiled img2img for Stable Diffusion (its MultiDiffusion
pipeline is txt2img panoramas only), so the sampling loop is written here:
at every step the latent is cut into overlapping square tiles, the UNet
predicts each tile's noise (several tiles per batch), the predictions are
blended with smooth weights into one full-size prediction, and the
scheduler takes one step on the whole latent. One global image emerges, with
no seams, while peak memory depends on the tile size and batch only.

The VAE runs in tiles too (engine/tiled_vae.py): fixed memory, equal tiles
batched, overlaps sized to what hides seams.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from engine import prompt_schedule, restore
from engine.conditioning import encode_prompts
from engine.denoiser import Denoiser, Guidance, embed_guidance, guided_unet
from engine.errors import JobCancelled
from engine.models import LoadedModel
from engine.params import CancelFlag
from engine.prompts import extract_loras
from engine.regions import RegionControl
from engine.samplers import resolve
from engine.tiled_vae import MIN_VAE_TILE, _with_vae_tiles, decode, encode, spread  # noqa: F401 (engine.tiled's API)

Report = Callable[[int, int, int, int], None]  # step, steps, tile, tiles


@dataclass(frozen=True)
class View:
    y: int
    x: int
    size_h: int
    size_w: int


def views(height: int, width: int, tile: int, overlap: int) -> list[View]:
    """Overlapping tiles covering a latent; edge tiles are aligned to the edge."""
    stride = max(1, tile - overlap)

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        count = math.ceil((length - tile) / stride) + 1
        return sorted({min(i * stride, length - tile) for i in range(count)})

    th, tw = min(tile, height), min(tile, width)
    return [View(y, x, th, tw) for y in starts(height) for x in starts(width)]


def even_views(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> list[View]:
    """Equal tiles of at most `tile` with at least `overlap` between neighbours,
    spread evenly (see `spread`): the UNet's tiles for tiled diffusion."""
    th, ys = spread(height, tile, overlap, multiple)
    tw, xs = spread(width, tile, overlap, multiple)
    return [View(y, x, th, tw) for y in ys for x in xs]


def tile_weights(h: int, w: int, device, dtype):
    """A smooth bump (Gaussian, as in Mixture of Diffusers) so tile edges count less."""
    import torch

    def axis(n: int):
        x = torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype)
        return torch.exp(-(x**2) / (2 * 0.5**2))

    return axis(h)[:, None] * axis(w)[None, :]


# -- tiled diffusion ---------------------------------------------------------------
def tiled_img2img(
    model: LoadedModel,
    sampler: str,
    image: np.ndarray,
    prompt: str,
    negative: str,
    steps: int,
    strength: float,
    cfg_scale: float,
    seed: int,
    tile: int,
    overlap: int,
    tile_batch: int,
    vae_tile: int,
    report: Report | None = None,
    cancel: CancelFlag | None = None,
    clip_skip: int = 1,
    eta: float | None = None,
    schedule_type: str = "Automatic",
    control: Any = None,
    regions: RegionControl | None = None,
    restoring=None,
    options: Any = None,
    vaes: tuple[Any, Any] | None = None,
) -> np.ndarray:
    """img2img of an image of any size (multiple of 8) by MultiDiffusion.
    `control` (engine.control.Control, at the image's size): each tile gets
    its own crop of every control image; with `regions` (masks at the image's
    size) each tile blends its crop of them; `restoring`
    (engine.params.RestoreParams) adds restore guidance toward the upscaled
    input (engine/restore.py) on the whole blended prediction. The prompt may
    be scheduled ([from:to:when], [a|b], AND: engine/prompt_schedule.py), its
    steps counted as the WebUI counts them; `options` are the WebUI's sampler
    parameters (protocol/sampler_options.py). `vaes`: the (encoder, decoder)
    VAEs instead of the model's, e.g. TAESD (engine/taesd.py)."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    from engine.kpipeline import brownian_noise, plan_sigmas, sampler_settings

    pipe = model.pipeline("img2img")
    unet = pipe.unet
    encoder_vae, decoder_vae = vaes or (pipe.vae, pipe.vae)
    device, dtype = pipe._execution_device, unet.dtype
    generator = torch.Generator("cpu").manual_seed(seed)
    # VAE tiles run `tile_batch` at a time on CUDA, where a batch fills the device; on a CPU a batch
    # costs its size in memory and saves nothing (measured: BENCHMARKS.md, tiled upscale).
    vae_batch = tile_batch if torch.device(device).type == "cuda" else 1
    latents = encode(encoder_vae, image, vae_tile, generator, device, dtype, vae_batch)
    text, _ = extract_loras(prompt)
    scheduled = None
    if not prompt_schedule.is_plain(text, negative):  # conditioning per step, each text encoded once
        scheduled = prompt_schedule.build(model, text, negative, steps, clip_skip)
        conditioning = scheduled.first()
    else:
        conditioning = encode_prompts(model, text, negative if cfg_scale > 1 else None, clip_skip)  # CFG 1: no uncond

    _, _, lh, lw = latents.shape
    multiple = 2 ** (len(unet.config.block_out_channels) - 1)  # the UNet halves a tile this often
    grid = even_views(lh, lw, tile, overlap, multiple)
    batches = [grid[i : i + tile_batch] for i in range(0, len(grid), tile_batch)]
    weight = tile_weights(grid[0].size_h, grid[0].size_w, device, torch.float32)
    coverage = torch.zeros((lh, lw), device=device, dtype=torch.float32)
    for v in grid:
        coverage[v.y : v.y + v.size_h, v.x : v.x + v.size_w] += weight
    region_weights = regions.weights(lh, lw, device) if regions is not None else None
    cfg = SimpleNamespace(cfg_scale=cfg_scale)  # a CFG schedule (engine/restore.py) changes it per step
    done = [0]  # steps finished, for the progress report
    run = [1]  # steps this partial denoise runs: the WebUI's t_enc + 1 (set from the sigmas below)
    whole = Guidance(conditioning.cond, conditioning.uncond, cfg_scale, conditioning.pooled, conditioning.uncond_pooled)

    def blended(model_input, t):
        """The guided prediction of every tile, blended into one for the whole latent."""
        if scheduled is not None:  # this model call's conditioning, as KPipeline's predict takes it
            scheduled.apply(whole)
        if regions is not None:  # and the regions' (engine/regions.py)
            regions.advance()
        prediction = torch.zeros(model_input.shape, device=device, dtype=torch.float32)
        for b, batch in enumerate(batches):
            if cancel is not None and cancel.is_set():
                raise JobCancelled()
            tiles = torch.cat([model_input[:, :, v.y : v.y + v.size_h, v.x : v.x + v.size_w] for v in batch])
            guidance = _tile_guidance(whole, batch, cfg.cfg_scale, (lh, lw), model.family)
            crops = [(v.y, v.x, v.size_h, v.size_w) for v in batch]
            embed_guidance(guidance, unet)  # full LCM checkpoints: the scale as the UNet's timestep_cond
            if region_weights is not None:  # each tile's crop of the region weights (engine/regions.py)
                weights = torch.cat([region_weights[:, :, :, v.y : v.y + v.size_h, v.x : v.x + v.size_w] for v in batch], 1)
                out = regions.blend(unet, tiles, t, guidance, None, weights, control, crops)
            else:
                out = guided_unet(unet, tiles, t, guidance, control=control, crops=crops)
            for j, v in enumerate(batch):
                prediction[:, :, v.y : v.y + v.size_h, v.x : v.x + v.size_w] += out[j : j + 1].float() * weight
            if report is not None:
                report(min(done[0] + 1, run[0]), run[0], min((b + 1) * tile_batch, len(grid)), len(grid))
        return prediction / coverage

    def noise():
        return randn_tensor(latents.shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32).to(device)

    spec, schedule = resolve(sampler, schedule_type)
    with torch.inference_mode():  # the blend is the denoiser's prediction
        function = restore.sampler_function(spec) if restoring is not None else spec.function
        denoiser = Denoiser(dict(pipe.scheduler.config), blended, dtype, lcm=spec.lcm, vp_time=spec.unipc)
        sigmas, start = plan_sigmas(spec, schedule, denoiser, steps, strength, model.family == "sdxl", options=options)
        run[0] = max(1, len(sigmas) - 1)
        if regions is not None:
            regions.calls = 0
        if control:
            control.schedule([denoiser.timestep(s) for s in sigmas[:-1] if s > 0])
        r = restoring
        if r is not None:
            gamma = restore.churn_gamma(len(sigmas) - 1, r.s_churn) if function == restore.EDM else 0.0
            restore.install(denoiser, cfg, latents, r.guidance, r.cfg_start, sigmas, gamma)

        def step_done(x, denoised, fraction: float) -> None:
            done[0] = round(fraction * run[0])

        x = latents.float() + noise() * start
        if spec.timesteps:  # noised to one timestep, sampled from the next one down (the WebUI's way)
            x = x * math.sqrt((1 + sigmas[0] ** 2) / (1 + start**2))
        if spec.brownian:
            positive = [s for s in sigmas if s > 0]
            step_noise = brownian_noise(x, min(positive), max(positive), [seed])
        else:
            step_noise = lambda sigma, sigma_next: noise()  # noqa: E731
        settings = {**spec.sampler_options(), **(sampler_settings(spec, options) if options is not None else {})}
        x = restore.sample(function, denoiser, x, sigmas, step_noise, step_done, spec.eta_for(eta),
                           r.s_churn if r else 0.0, r.s_noise if r else 1.0, **settings)
        if spec.timesteps:
            x = x / math.sqrt(1 + sigmas[-1] ** 2)
        latents = x.to(dtype)
    return decode(decoder_vae, latents, vae_tile, vae_batch)


def _tile_guidance(c: Guidance, batch: list[View], cfg_scale: float, latent_size: tuple[int, int],
                   family: str) -> Guidance:
    """The whole image's guidance (this call's, when the prompt is scheduled) for a batch of tiles."""
    import torch

    n = len(batch)
    g = Guidance(c.cond[:1].expand(n, -1, -1), c.uncond[:1].expand(n, -1, -1), cfg_scale)
    if c.parts is not None:  # AND: every part for every tile
        g.parts = [(p[:1].expand(n, -1, -1), w) for p, w in c.parts]
        if c.parts_pooled is not None:
            g.parts_pooled = [p[:1].expand(n, -1) for p in c.parts_pooled]
    if family == "sdxl":
        lh, lw = latent_size
        # SDXL's size conditioning: the full image size, this tile's crop offset, the tile size.
        ids = [[lh * 8, lw * 8, v.y * 8, v.x * 8, v.size_h * 8, v.size_w * 8] for v in batch]
        g.time_ids = torch.tensor(ids, device=c.cond.device, dtype=c.cond.dtype)
        g.pooled, g.uncond_pooled = c.pooled[:1].expand(n, -1), c.uncond_pooled[:1].expand(n, -1)
    return g
