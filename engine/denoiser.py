"""The UNet as a denoiser D(x, sigma) -> x0, as k-diffusion wraps it.

The samplers in engine/ksampling.py work in sigma space (x = x0 + sigma * eps)
on the clean-image estimate. This wraps a Stable Diffusion UNet to give that:
the input scaled by 1/sqrt(sigma^2 + 1), sigma turned into the UNet's
(fractional) timestep through the training schedule, classifier-free guidance,
and epsilon or v predictions turned into x0. Tiled diffusion swaps in its own
guided prediction (the tiles' blend); inpainting adds the known image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine import schedules

Predict = Callable[[Any, float], Any]  # (scaled x, timestep) -> guided model output


@dataclass
class Guidance:
    """Text conditioning for a batch, with the unconditional half for CFG."""

    cond: Any  # N x L x C
    uncond: Any
    cfg_scale: float
    pooled: Any = None  # SDXL: N x 1280
    uncond_pooled: Any = None
    time_ids: Any = None  # SDXL: N x 6 (original size, crop top-left, target size)
    parts: Any = None  # composable prompt (AND): [(cond, weight)...] (engine/prompt_schedule.py)
    parts_pooled: Any = None
    always_uncond: bool = False  # DDIM CFG++: the unconditional pass even at a CFG scale <= 1
    last_uncond: Any = None  # with always_uncond: the last call's unconditional model output
    # Guidance-embedding UNets (full LCM checkpoints): the CFG scale as the UNet's `timestep_cond`
    # (embed_guidance); the guidance is distilled in, so there is no unconditional pass.
    timestep_cond: Any = None

    @property
    def guided(self) -> bool:
        if self.timestep_cond is not None:
            return False
        return self.cfg_scale > 1.0 or self.always_uncond  # as diffusers: no unconditional pass at CFG <= 1

    def unet_kwargs(self, n: int) -> dict[str, Any]:
        """Extra UNet arguments for a batch of n: the guidance embedding, when the UNet takes one."""
        if self.timestep_cond is None:
            return {}
        return {"timestep_cond": self.timestep_cond[:1].expand(n, -1)}


def embed_guidance(g: Guidance, unet) -> None:
    """Full LCM checkpoints (a UNet config with `time_cond_proj_dim`, as LCM-Dreamshaper
    ships): the guidance scale w enters as an embedding added to the timestep's
    (Luo et al. 2023, Algorithm 1's w-conditioned consistency function), computed as
    diffusers' LatentConsistencyModelPipeline does, from w = scale - 1. LCM-LoRAs on
    ordinary UNets have no such input: they run at CFG 1 instead."""
    dim = getattr(unet.config, "time_cond_proj_dim", None)
    if not dim:
        return
    import torch
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([g.cfg_scale - 1.0])
    # The pipeline's method never touches `self`: called unbound, it is diffusers' exact formula.
    embedding = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
    g.timestep_cond = embedding.to(device=g.cond.device, dtype=unet.dtype)


def guided_unet(unet, x_in, t, g: Guidance, extra: Any = None, control: Any = None, crops: Any = None):
    """One UNet call for the conditional and unconditional halves, combined by the
    CFG scale. `extra` (inpainting models: mask + masked image latents) is
    concatenated to the input channels. `control` (engine.control.Control) adds
    its ControlNets' residuals; `crops` are tiled diffusion's tiles."""
    import torch

    if not torch.is_tensor(t):  # a tensor, so a compiled UNet does not specialise on each value
        t = torch.tensor(float(t), device=x_in.device)
    latent = x_in  # ControlNets see the latent alone, without an inpainting model's extra channels
    if extra is not None:
        x_in = torch.cat([x_in, extra.to(x_in.dtype)], dim=1)
    if g.parts is not None:  # AND: one UNet pass per part (engine/prompt_schedule.py)
        from engine.prompt_schedule import composable_unet

        return composable_unet(unet, x_in, t, g)
    hidden, text, ids = g.cond, g.pooled, g.time_ids
    if g.guided:
        x_in, latent = torch.cat([x_in, x_in]), torch.cat([latent, latent])
        hidden = torch.cat([g.uncond, hidden])
        if text is not None:
            text, ids = torch.cat([g.uncond_pooled, text]), torch.cat([ids, ids])
    added = {"text_embeds": text, "time_ids": ids} if text is not None else None
    residuals = control.residuals(latent, t, hidden, added, g.guided, crops) if control else {}
    out = unet(x_in, t, encoder_hidden_states=hidden, added_cond_kwargs=added, **residuals,
               **g.unet_kwargs(x_in.shape[0])).sample
    if g.guided:
        uncond, cond = out.chunk(2)
        out = uncond + g.cfg_scale * (cond - uncond)
        if g.always_uncond:
            g.last_uncond = uncond
    return out


class Denoiser:
    """D(x, sigma) over a model's training noise schedule."""

    def __init__(self, scheduler_config: dict[str, Any], predict: Predict, dtype, check: Callable[[], None] | None = None,
                 lcm: bool = False, vp_time: bool = False):
        from diffusers import EulerDiscreteScheduler

        # The training schedule (betas -> cumulative alphas) as diffusers computes it.
        schedule = EulerDiscreteScheduler.from_config(scheduler_config)
        alphas = schedule.alphas_cumprod.double().numpy()
        self.discrete = schedules.Discrete(np.log(np.sqrt((1 - alphas) / alphas)))  # sigma <-> timestep
        self.log_sigmas = self.discrete.log_sigmas
        self.prediction = scheduler_config.get("prediction_type", "epsilon")
        self.predict = predict
        self.dtype = dtype  # the UNet's
        self.check = check  # called before every model call (cancel)
        self.known: tuple[Any, Any] | None = None  # inpainting: (x0 of the image, 1 where it is kept)
        self.calls = 0
        self.lcm = lcm  # the WebUI's LCM: 50 of the training timesteps, the consistency boundary scaling
        self.vp_time = vp_time  # the WebUI's UniPC: timesteps by its log-alpha interpolation (schedules.Discrete)
        # Per-step features (engine/restore.py): called with the sigma before each
        # model call (e.g. a CFG schedule), and (x0, sigma) -> x0 after it.
        self.before: list[Callable[[float], None]] = []
        self.after: list[Callable[[Any, float], Any]] = []

    @property
    def sigma_min(self) -> float:
        return self.discrete.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.discrete.sigma_max

    def timestep(self, sigma: float) -> float:
        """sigma -> the fractional training timestep, interpolating log sigma."""
        if self.lcm:
            return float(self._lcm_timestep(sigma))
        if self.vp_time:
            return self.discrete.vp_sigma_to_t(sigma)
        return self.discrete.sigma_to_t(sigma)

    # -- LCM (Luo et al. 2023), as the WebUI's LCM sampler wraps the model -----------------
    LCM_ORIGINAL_STEPS = 50  # the 50 timesteps 19, 39, ... 999 LCM was distilled on

    def _lcm_table(self) -> np.ndarray:
        stride = len(self.log_sigmas) // self.LCM_ORIGINAL_STEPS
        return self.log_sigmas[stride - 1 :: stride]

    def _lcm_timestep(self, sigma: float) -> int:
        """The nearest of LCM's timesteps (quantised, as LCM was trained)."""
        stride = len(self.log_sigmas) // self.LCM_ORIGINAL_STEPS
        return int(np.abs(math.log(sigma) - self._lcm_table()).argmin()) * stride + stride - 1

    def lcm_sigmas(self, steps: int) -> list[float]:
        """Timesteps evenly from 999 to 19, interpolated in LCM's table; then 0."""
        stride = len(self.log_sigmas) // self.LCM_ORIGINAL_STEPS
        table = self._lcm_table()
        ts = np.linspace(self._lcm_timestep(self.sigma_max), self._lcm_timestep(self.sigma_min), steps)
        index = np.clip((ts - (stride - 1)) / stride, 0, len(table) - 1)
        return [float(s) for s in np.exp(np.interp(index, np.arange(len(table)), table))] + [0.0]

    def _lcm_boundary(self, x0, x, sigma: float):
        """The consistency model's skip connection: c_skip x + c_out x0 at 10 x the timestep."""
        scaled = self._lcm_timestep(sigma) * 10.0
        c_skip = 0.25 / (scaled**2 + 0.25)
        c_out = scaled / math.sqrt(scaled**2 + 0.25)
        return c_out * x0 + c_skip * x

    def sigmas(self, steps: int, karras: bool = False) -> list[float]:
        """k-diffusion's schedules (engine/schedules.py): timesteps evenly spaced
        from the last to 0 (the WebUI's default), or Karras et al.'s; both end with 0."""
        return (schedules.karras if karras else schedules.uniform)(steps, self.discrete)

    def __call__(self, x, sigma: float):
        if self.check is not None:
            self.check()
        self.calls += 1
        for hook in self.before:
            hook(sigma)
        c_in = 1.0 / math.sqrt(sigma**2 + 1.0)
        x0 = self.to_x0(x, sigma, self.predict((x * c_in).to(self.dtype), self.timestep(sigma)).float())
        if self.lcm:
            x0 = self._lcm_boundary(x0, x, sigma)
        for after in self.after:
            x0 = after(x0, sigma)
        if self.known is not None:
            image, keep = self.known
            x0 = image * keep + x0 * (1.0 - keep)
        return x0

    def to_x0(self, x, sigma: float, out):
        """The model's output (eps, v or x0, by its prediction type) as the clean estimate."""
        if self.prediction == "v_prediction":
            x0 = x / (sigma**2 + 1.0) - out * (sigma / math.sqrt(sigma**2 + 1.0))
        elif self.prediction == "sample":
            x0 = out
        else:
            x0 = x - out * sigma
        return x0
