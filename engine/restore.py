"""Restoration-guided sampling (SUPIR, Yu et al. 2024, arXiv 2401.13627, Sec. 3.3).

A generative prior left alone invents detail that the low-quality (LQ) input
does not have. SUPIR pulls every step's clean-latent estimate toward the
input's latent z_LQ, strongly while the noise is high (where the layout is
decided) and hardly at all at the end (where the texture is):

    D(x_t, sigma_t)  ->  (1 - k_t) D(x_t, sigma_t) + k_t z_LQ,
    k_t = (sigma_t / sigma_start)^tau_r          (paper, Sec. 3.3, Algorithm 1)

tau_r trades fidelity (small: the result stays near the input) against
generated detail (large: plain sampling). The paper normalises by
sigma_max; we normalise by the sigma the job starts from, so a partial
img2img (where sigma_t / sigma_max is small from the first step) is guided
too. It is a hook on engine/denoiser.py's Denoiser, so it works with any
sampler, any model and the tiled upscale alike.

The authors' sampler is Karras et al.'s EDM sampler (2022, Algorithm 2) with
Euler steps and "churn" (noise added before each step, raising sigma to
sigma_hat = (1 + gamma) sigma), and a CFG scale that falls linearly with
sigma (their LinearCFG guider). Both are here too. As in their code
(sgm's RestoreEDMSampler), k_t and the CFG scale are read at the sigma the
model sees (sigma_hat), normalised by the first step's sigma_hat, which equals
their sigma_t / sigma_max; and the pull stops once a step lands below 0.05
(their restore_cfg_s_tmin), so the last steps are the model's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import EngineError
from engine.ksampling import Callback, Model, Noise, _legacy, _none

S_TMIN = 0.05  # the authors' restore_cfg_s_tmin: no pull on steps that end below it
EDM = "sample_edm"  # the sampler function name KPipeline/tiled pass around


def churn_gamma(steps: int, s_churn: float) -> float:
    """EDM's gamma_i (Karras et al. 2022, Algorithm 2, line 4) for s_tmin = 0,
    s_tmax = inf, as SUPIR runs it: the same for every step."""
    return min(s_churn / steps, math.sqrt(2.0) - 1.0) if s_churn > 0 else 0.0


@dataclass
class RestoreGuidance:
    """The D -> (1 - k) D + k z_LQ replacement for one job (paper Algorithm 1)."""

    z_lq: Any  # the LQ latent, shaped like x (scaled latent space)
    tau: float  # tau_r; > 0
    sigma_ref: float  # k = 1 at this sigma: the first model call's sigma
    sigma_stop: float = 0.0  # no pull at or below this model sigma

    @classmethod
    def for_schedule(cls, z_lq, tau: float, sigmas: Sequence[float], gamma: float = 0.0) -> RestoreGuidance:
        """Normalised by the schedule's first sigma (raised by churn's gamma, as
        the model sees it); steps whose next sigma is below S_TMIN run unguided."""
        stop = 0.0
        for i in range(len(sigmas) - 1):
            if sigmas[i + 1] <= S_TMIN:
                stop = sigmas[i] * (1.0 + gamma)
                break
        return cls(z_lq, tau, sigmas[0] * (1.0 + gamma), stop)

    def k(self, sigma: float) -> float:
        if sigma <= self.sigma_stop * (1 + 1e-9):
            return 0.0
        return min(1.0, sigma / self.sigma_ref) ** self.tau

    def __call__(self, denoised, sigma: float):
        k = self.k(sigma)
        if k == 0.0:
            return denoised
        return denoised + (self.z_lq.to(denoised.dtype) - denoised) * k  # = (1 - k) D + k z_LQ


@dataclass
class LinearCFG:
    """CFG scale linear in sigma, `start` at sigma_ref and `end` at sigma 0
    (SUPIR's LinearCFG guider: scale_min + (scale - scale_min) * sigma / sigma_max,
    read at the model's sigma, so churn's sigma_hat runs a little past `start`)."""

    start: float
    end: float
    sigma_ref: float

    def __call__(self, sigma: float) -> float:
        return self.end + (self.start - self.end) * sigma / self.sigma_ref


def install(denoiser: Any, guidance: Any, z_lq, tau: float, cfg_start: float | None, sigmas: Sequence[float],
            gamma: float) -> None:
    """Hook restore guidance (tau > 0) and the linear CFG schedule (cfg_start set)
    into a Denoiser whose predict reads `guidance.cfg_scale` per call. Both are
    normalised by the job's first sigma, as the authors normalise by sigma_max."""
    if tau > 0:
        denoiser.after.append(RestoreGuidance.for_schedule(z_lq.float(), tau, sigmas, gamma))
    if cfg_start is not None:
        schedule = LinearCFG(cfg_start, guidance.cfg_scale, sigmas[0])
        denoiser.before.append(lambda sigma: setattr(guidance, "cfg_scale", schedule(sigma)))


# -- the sampler ------------------------------------------------------------------------
def sample_edm(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
               s_churn: float = 0.0, s_noise: float = 1.0):
    """Karras et al. (2022) Algorithm 2 with Euler steps (no Heun correction),
    as SUPIR's RestoreEDMSampler and k-diffusion's sample_euler run it: raise
    sigma by gamma with fresh noise scaled by s_noise, predict at sigma_hat,
    take an Euler step to the next sigma. s_churn 0 is plain Euler."""
    steps = len(sigmas) - 1
    gamma = churn_gamma(steps, s_churn)
    noise = _legacy(noise)  # (sigma, sigma_next) -> noise, or a zero-argument function
    for i in range(steps):
        sigma = sigmas[i]
        sigma_hat = sigma * (1.0 + gamma)
        if gamma > 0:
            x = x + noise(sigma, sigmas[i + 1]) * s_noise * math.sqrt(sigma_hat**2 - sigma**2)
        denoised = model(x, sigma_hat)
        x = x + (x - denoised) / sigma_hat * (sigmas[i + 1] - sigma_hat)
        callback(x, denoised, (i + 1) / steps)
    return x


def sampler_function(spec: Any) -> str:
    """The function restore-guided jobs sample with: "Euler" is the authors' EDM
    sampler (Euler with churn); every other sampler its own (restore guidance
    is a Denoiser hook)."""
    return EDM if spec.name == "Euler" else spec.function


def sample(function: str, model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback, eta: float,
           edm_churn: float = 0.0, edm_noise: float = 1.0, **options: Any):
    """engine/ksampling.sample (with `options`: the sampler's own settings), plus
    the EDM sampler with restore guidance's churn and its noise scale."""
    from engine import ksampling

    if function == EDM:
        return sample_edm(model, x, sigmas, noise, callback, edm_churn, edm_noise)
    return ksampling.sample(function, model, x, sigmas, noise, callback, eta, **options)


# -- requests and records ------------------------------------------------------------------
def check(kind: str, spec: Any, upscale_denoise: float) -> None:
    """Restore guidance needs an input image and a diffusion pass to guide."""
    if kind not in ("img2img", "upscale"):
        raise EngineError("invalid_request", f"restore guidance applies to img2img and upscale, not {kind}",
                          field="restore")
    if kind == "upscale" and upscale_denoise <= 0:
        raise EngineError("invalid_request", "restore guidance guides the diffusion pass: set upscale.denoise above 0",
                          field="restore")
    sampler_function(spec)


def parameters(r: Any) -> dict[str, Any]:
    """A job's restore settings for its parameters record (empty when off)."""
    if r is None:
        return {}
    out: dict[str, Any] = {"restore_guidance": r.guidance, "s_churn": r.s_churn, "s_noise": r.s_noise}
    if r.cfg_start is not None:
        out["cfg_start"] = r.cfg_start
    return out


def infotext_fields(p: dict[str, Any]) -> list[str]:
    """The infotext fields of the restore settings, as SUPIR's own names read."""
    if "restore_guidance" not in p:
        return []
    fields = [f"SUPIR: {p['supir']}"] if p.get("supir") else []
    fields.append(f"Restore guidance: {p['restore_guidance']:g}")
    if p["s_churn"]:
        fields += [f"S churn: {p['s_churn']:g}", f"S noise: {p['s_noise']:g}"]
    if p.get("cfg_start") is not None:
        fields.append(f"CFG start: {p['cfg_start']:g}")
    if p.get("supir"):
        fields += [f"SUPIR tile: {p['supir_tile']}/{p['supir_stride']}", f"Pre-denoise: {p['pre_denoise']}"]
    return fields
