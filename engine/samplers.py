"""WebUI sampler names -> diffusers schedulers.

The WebUI's samplers are k-diffusion functions; diffusers ships most of the
same algorithms as schedulers. k-diffusion spaces its sigmas evenly over the
whole training schedule ("linspace"), while the WebUI's DDIM/PLMS use the
original "leading" spacing, so each entry pins the spacing as well as the
algorithm. The rest (DPM++ 2S a, DPM fast, DPM adaptive, and the ancestral
samplers at an eta other than 1) are functions in engine/ksampling.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import EngineError


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    scheduler: str = ""  # a diffusers scheduler class name; "" = only written here
    options: Mapping[str, Any] = field(default_factory=dict)
    function: str = ""  # the k-diffusion-style function in engine/ksampling.py, if there is one
    karras: bool = False  # with `function`: Karras sigmas
    eta: float | None = None  # the default eta of a sampler that takes one

    def eta_for(self, eta: float | None) -> float:
        """A request's eta, or this sampler's default where it gave none."""
        return eta if eta is not None else (self.eta or 0.0)

    def uses_function(self, eta: float | None) -> bool:
        """Run by engine/ksampling.py: no diffusers scheduler, or an eta it cannot take."""
        if not self.scheduler:
            return True
        return bool(self.function) and eta is not None and eta != self.eta


def _k(name: str, scheduler: str, karras: bool = False, **options: Any) -> SamplerSpec:
    """A k-diffusion sampler: its sigmas spaced as k-diffusion spaces them."""
    options = {"timestep_spacing": "linspace", **options}
    if karras:
        name, options = f"{name} Karras", {**options, "use_karras_sigmas": True}
    return SamplerSpec(name, scheduler, options)


def _ancestral(name: str, scheduler: str, function: str, karras: bool = False) -> SamplerSpec:
    """An ancestral sampler (eta 1 by default): diffusers' scheduler at eta 1,
    engine/ksampling.py at any other eta (and where diffusers has none)."""
    spec = _k(name, scheduler, karras) if scheduler else SamplerSpec(name + " Karras" * karras)
    return SamplerSpec(spec.name, scheduler, spec.options, function, karras, 1.0)


_DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

# In the WebUI's order (its menu lists the Karras variants after the plain ones).
SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in [
        _ancestral("Euler a", "EulerAncestralDiscreteScheduler", "sample_euler_ancestral"),
        _k("Euler", "EulerDiscreteScheduler"),
        _k("LMS", "LMSDiscreteScheduler"),
        _k("Heun", "HeunDiscreteScheduler"),
        _k("DPM2", "KDPM2DiscreteScheduler"),
        _ancestral("DPM2 a", "KDPM2AncestralDiscreteScheduler", "sample_dpm_2_ancestral"),
        _ancestral("DPM++ 2S a", "", "sample_dpmpp_2s_ancestral"),
        _k("DPM++ 2M", "DPMSolverMultistepScheduler", **_DPMPP),
        _k("DPM++ SDE", "DPMSolverSDEScheduler"),
        _k("DPM++ 2M SDE", "DPMSolverMultistepScheduler", **_SDE),
        _ancestral("DPM fast", "", "sample_dpm_fast"),
        _ancestral("DPM adaptive", "", "sample_dpm_adaptive"),
        _k("LMS", "LMSDiscreteScheduler", karras=True),
        _k("DPM2", "KDPM2DiscreteScheduler", karras=True),
        _ancestral("DPM2 a", "KDPM2AncestralDiscreteScheduler", "sample_dpm_2_ancestral", karras=True),
        _ancestral("DPM++ 2S a", "", "sample_dpmpp_2s_ancestral", karras=True),
        _k("DPM++ 2M", "DPMSolverMultistepScheduler", karras=True, **_DPMPP),
        _k("DPM++ SDE", "DPMSolverSDEScheduler", karras=True),
        _k("DPM++ 2M SDE", "DPMSolverMultistepScheduler", karras=True, **_SDE),
        SamplerSpec("DDIM", "DDIMScheduler", {"timestep_spacing": "leading", "set_alpha_to_one": False}, eta=0.0),
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
    assert spec.scheduler, f"{spec.name} has no diffusers scheduler"
    cls = getattr(diffusers, spec.scheduler)
    config = {k: v for k, v in base_config.items() if k not in _RESET}
    options = dict(spec.options)
    if spec.scheduler == "DPMSolverSDEScheduler":
        options["noise_sampler_seed"] = seed  # its Brownian noise would otherwise be unseeded
    return cls.from_config(config, **options)
