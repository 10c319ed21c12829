"""Upscale mode's "Restore (SUPIR)": plain Python, no Krita.

SUPIR (arXiv 2401.13627) restores an upscaled image with an SDXL checkpoint
and a SUPIR-v0Q / v0F model; its restoration-guided sampling pulls each
step's clean estimate toward the input by k = (sigma / sigma_start) ** tau_r
(engine/restore.py). Small tau_r keeps the input (fidelity), large tau_r lets
the model invent detail. The docker shows one slider for it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from protocol import JobRequest, RawImage, Restore, Upscale

from .requests import Settings, upscale_request

# The authors' "Quality" preset, as the CLI's `upscale --supir` fills it
# (engine/supir_upscale.py holds the engine's copy; a test keeps them equal):
# 50 EDM steps (Euler with churn), CFG rising linearly from 4 to 7.5, latent
# tiles of 128 with a stride of 64, one tile through the model at a time.
STEPS, CFG, CFG_START, S_CHURN, S_NOISE = 50, 7.5, 4.0, 5.0, 1.003
SAMPLER = "Euler"
TILE, OVERLAP, TILE_BATCH = 128, 64, 1

# The slider (0..100) -> tau_r, on a log scale: 0 -> 1 (close to the input),
# 50 -> 4 (the paper's balanced setting, the CLI example's), 100 -> 16 (detail).
TAU_MIN, TAU_MAX = 1.0, 16.0


def tau(slider: int) -> float:
    """Fidelity (0) ... detail (100) -> tau_r."""
    s = min(100, max(0, int(slider)))
    return round(TAU_MIN * (TAU_MAX / TAU_MIN) ** (s / 100), 3)


def slider(tau_r: float) -> int:
    """The inverse of `tau`, for a result's settings loaded back."""
    t = min(TAU_MAX, max(TAU_MIN, float(tau_r)))
    return round(100 * math.log(t / TAU_MIN) / math.log(TAU_MAX / TAU_MIN))


def describe(value: int) -> str:
    s = min(100, max(0, int(value)))
    word = "fidelity" if s < 35 else "detail" if s > 65 else "balanced"
    return f"{word} (τ {tau(s):g})"


def supir_models(models: Sequence) -> list[str]:
    """SUPIR models the server lists (ModelInfo kind "supir"): the option shows only with one."""
    return [m.name for m in models if m.kind == "supir"]


def sdxl_checkpoints(models: Sequence) -> list[str]:
    return [m.name for m in models if m.kind == "checkpoint" and m.family == "sdxl"]


def pick_checkpoint(models: Sequence, current: str, wanted: str = "") -> str:
    """The SDXL checkpoint to restore with: the painter's choice, else the docker's
    model if it is SDXL, else the first SDXL one ("" when the server has none)."""
    names = sdxl_checkpoints(models)
    for name in (wanted, current):
        if name and name in names:
            return name
    return names[0] if names else ""


def supir_request(settings: Settings, image: RawImage, supir: str, checkpoint: str, detail: int,
                  steps: int = STEPS) -> JobRequest:
    """The upscale job restored by SUPIR, with the authors' sampling settings
    (the steps are the painter's: 50 by default, fewer for a few-step SDXL model);
    the prompt and negative prompt are the painter's (the server adds the
    authors' quality prompts). ControlNet units are not sent: SUPIR's own
    adaptor is the control here."""
    if not supir:
        raise ValueError("no SUPIR model chosen")
    if not checkpoint:
        raise ValueError("SUPIR needs an SDXL checkpoint and the server has none")
    base = upscale_request(settings, image)
    upscale = Upscale(scale=settings.upscale_factor, upscaler=settings.upscaler, denoise=base.upscale.denoise
                      if base.upscale is not None else 0.0, tile=TILE, overlap=OVERLAP, tile_batch=TILE_BATCH)
    return dataclasses.replace(
        base, model=checkpoint, sampler=SAMPLER, steps=steps, cfg_scale=CFG, upscale=upscale,
        restore=Restore(guidance=tau(detail), s_churn=S_CHURN, s_noise=S_NOISE, cfg_start=CFG_START, supir=supir))
