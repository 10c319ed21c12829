"""WebUI sampler names -> diffusers schedulers.

The WebUI's samplers are k-diffusion functions; diffusers ships the same
algorithms as schedulers. k-diffusion spaces its sigmas evenly over the whole
training schedule ("linspace"), while the WebUI's DDIM/PLMS use the original
"leading" spacing, so each entry pins the spacing as well as the algorithm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import EngineError


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    scheduler: str  # a diffusers scheduler class name
    options: Mapping[str, Any] = field(default_factory=dict)


def _k(name: str, scheduler: str, **options: Any) -> list[SamplerSpec]:
    """A k-diffusion sampler and, as the WebUI lists them, its Karras variant."""
    plain = SamplerSpec(name, scheduler, {"timestep_spacing": "linspace", **options})
    karras = SamplerSpec(f"{name} Karras", scheduler, {**plain.options, "use_karras_sigmas": True})
    return [plain, karras]


_DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2}

SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in [
        SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", {"timestep_spacing": "linspace"}),
        SamplerSpec("Euler", "EulerDiscreteScheduler", {"timestep_spacing": "linspace"}),
        *_k("LMS", "LMSDiscreteScheduler"),
        SamplerSpec("Heun", "HeunDiscreteScheduler", {"timestep_spacing": "linspace"}),
        *_k("DPM2", "KDPM2DiscreteScheduler"),
        *_k("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
        *_k("DPM++ 2M", "DPMSolverMultistepScheduler", **_DPMPP),
        *_k("DPM++ 2M SDE", "DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++", solver_order=2),
        *_k("DPM++ SDE", "DPMSolverSDEScheduler"),
        SamplerSpec("DDIM", "DDIMScheduler", {"timestep_spacing": "leading", "set_alpha_to_one": False}),
        SamplerSpec("PLMS", "PNDMScheduler", {"timestep_spacing": "leading", "skip_prk_steps": True}),
        SamplerSpec("UniPC", "UniPCMultistepScheduler", {"timestep_spacing": "linspace"}),
    ]
}
SAMPLER_NAMES = list(SAMPLERS)

# Keys a sampler's options must not inherit from a checkpoint's scheduler config.
_RESET = ("use_karras_sigmas", "timestep_spacing", "algorithm_type", "solver_order", "skip_prk_steps")


def lookup(name: str) -> SamplerSpec:
    spec = SAMPLERS.get(name)
    if spec is None:
        # Be forgiving about case and spacing, as the WebUI's API is.
        folded = {n.lower().replace(" ", ""): s for n, s in SAMPLERS.items()}
        spec = folded.get(name.lower().replace(" ", ""))
    if spec is None:
        raise EngineError("unknown_sampler", f"unknown sampler {name!r}; valid: {', '.join(SAMPLER_NAMES)}", field="sampler")
    return spec


def make_scheduler(name: str, base_config: Mapping[str, Any], seed: int = 0):
    """A fresh scheduler for `name`, keeping the model's training schedule
    (betas, prediction type) from `base_config`."""
    import diffusers

    spec = lookup(name)
    cls = getattr(diffusers, spec.scheduler)
    config = {k: v for k, v in base_config.items() if k not in _RESET}
    options = dict(spec.options)
    if spec.scheduler == "DPMSolverSDEScheduler":
        options["noise_sampler_seed"] = seed  # its Brownian noise would otherwise be unseeded
    return cls.from_config(config, **options)
