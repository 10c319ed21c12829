"""The WebUI's sampler names, each with the function that runs it and how.

Every name the WebUI 1.6-1.10 offers runs a function of engine/ksampling.py
through engine/kpipeline.py, called as the WebUI calls k-diffusion: sigmas
from the model's own discretisation spaced by the schedule type, one more step
scheduled and the next-to-last sigma dropped for DPM2 and DPM++ 3M SDE, start
noise times the first sigma, the SDE samplers' noise from a Brownian tree
seeded with the image seeds, and the other stochastic samplers' noise drawn
on, from each image's seeded generator. DDIM, PLMS and UniPC are the WebUI's
own timestep samplers, also written in engine/ksampling.py.

A name may carry its schedule ("DPM++ 2M Karras", as the WebUI before 1.9
named them); a request's separate schedule type (1.9+) wins over it unless
it is "Automatic". Automatic means the name's own spacing as the WebUI 1.6-1.8
ran it, so a request of protocol 2 keeps its meaning; the WebUI 1.9+ changed
some defaults (DPM++ 2M became Karras), and `webui19_schedule` records them for
reading its infotexts, which say "Schedule type: Automatic".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from engine import schedules
from engine.errors import EngineError


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    function: str  # in engine/ksampling.py
    schedule: str = "Uniform"  # the spacing "Automatic" means for this name
    eta: float | None = None  # the default eta of a sampler that takes one
    discard_penultimate: bool = False  # one more step scheduled, the next-to-last sigma dropped
    brownian: bool = False  # SDE samplers: noise from a seeded Brownian tree
    solver_type: str = ""  # DPM++ 2M SDE: "heun" for its Heun variant
    timesteps: bool = False  # the WebUI's DDIM/PLMS/UniPC: its timesteps, unit start noise
    unipc: bool = False  # UniPC: continuous time points (engine/schedules.unipc_sigmas)
    lcm: bool = False  # LCM: the consistency model's discretisation and output scaling
    uses_ensd: bool = False  # "Eta noise seed delta" reseeds its step noise
    cfgpp: bool = False  # DDIM CFG++: CFG / 12.5, and the unconditional estimate for the direction
    aliases: tuple[str, ...] = ()  # the WebUI's API names (k_euler_a...)
    webui19_schedule: str = ""  # what "Automatic" meant in the WebUI 1.9+, where it differs
    churn: bool = False  # takes the WebUI's s_churn / s_tmin / s_tmax (Euler, Heun, DPM2)
    s_noise: bool = False  # the WebUI passes its "sigma noise" setting (its sampler_extra_params)

    @property
    def karras(self) -> bool:
        return self.schedule == "Karras"

    def eta_for(self, eta: float | None) -> float:
        """A request's eta, or this sampler's default where it gave none."""
        return eta if eta is not None else (self.eta or 0.0)

    def sampler_options(self) -> dict[str, Any]:
        return {"solver_type": self.solver_type} if self.solver_type else {}


def _named(base: SamplerSpec, schedule: str, aliases: tuple[str, ...]) -> SamplerSpec:
    """The "<name> Karras" / "<name> Exponential" variant of a sampler."""
    return replace(base, name=f"{base.name} {schedule}", schedule=schedule, aliases=aliases, webui19_schedule="")


_A = {"eta": 1.0, "uses_ensd": True}  # ancestral: eta 1 by default, noise reseeded by ENSD
_SDE = {"eta": 1.0, "brownian": True, "s_noise": True}
_CHURN = {"churn": True, "s_noise": True}  # the WebUI's sampler_extra_params for Euler, Heun, DPM2

EULER_A = SamplerSpec("Euler a", "sample_euler_ancestral", aliases=("k_euler_a", "k_euler_ancestral"), **_A)
EULER = SamplerSpec("Euler", "sample_euler", aliases=("k_euler",), **_CHURN)
LMS = SamplerSpec("LMS", "sample_lms", aliases=("k_lms",))
HEUN = SamplerSpec("Heun", "sample_heun", aliases=("k_heun",), **_CHURN)
DPM2 = SamplerSpec("DPM2", "sample_dpm_2", discard_penultimate=True, aliases=("k_dpm_2",), webui19_schedule="Karras",
                   **_CHURN)
DPM2_A = SamplerSpec("DPM2 a", "sample_dpm_2_ancestral", discard_penultimate=True, aliases=("k_dpm_2_a",),
                     webui19_schedule="Karras", s_noise=True, **_A)
DPMPP_2S_A = SamplerSpec("DPM++ 2S a", "sample_dpmpp_2s_ancestral", aliases=("k_dpmpp_2s_a",),
                         webui19_schedule="Karras", s_noise=True, **_A)
DPMPP_2M = SamplerSpec("DPM++ 2M", "sample_dpmpp_2m", aliases=("k_dpmpp_2m",), webui19_schedule="Karras")
DPMPP_SDE = SamplerSpec("DPM++ SDE", "sample_dpmpp_sde", aliases=("k_dpmpp_sde",), webui19_schedule="Karras", **_SDE)
DPMPP_2M_SDE = SamplerSpec("DPM++ 2M SDE", "sample_dpmpp_2m_sde", aliases=("k_dpmpp_2m_sde",),
                           webui19_schedule="Exponential", **_SDE)
DPMPP_2M_SDE_HEUN = SamplerSpec("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", solver_type="heun",
                                aliases=("k_dpmpp_2m_sde_heun",), webui19_schedule="Exponential", **_SDE)
DPMPP_3M_SDE = SamplerSpec("DPM++ 3M SDE", "sample_dpmpp_3m_sde", discard_penultimate=True,
                           aliases=("k_dpmpp_3m_sde",), webui19_schedule="Exponential", **_SDE)
DPM_FAST = SamplerSpec("DPM fast", "sample_dpm_fast", aliases=("k_dpm_fast",), s_noise=True, **_A)
DPM_ADAPTIVE = SamplerSpec("DPM adaptive", "sample_dpm_adaptive", aliases=("k_dpm_ad",), **_A)

# In the WebUI 1.6-1.8's order (its menu lists the Karras variants after the plain ones).
SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in [
        EULER_A, EULER, LMS, HEUN, DPM2, DPM2_A, DPMPP_2S_A, DPMPP_2M, DPMPP_SDE, DPMPP_2M_SDE,
        DPMPP_2M_SDE_HEUN,
        _named(DPMPP_2M_SDE_HEUN, "Karras", ("k_dpmpp_2m_sde_heun_ka",)),
        _named(DPMPP_2M_SDE_HEUN, "Exponential", ("k_dpmpp_2m_sde_heun_exp",)),
        DPMPP_3M_SDE,
        _named(DPMPP_3M_SDE, "Karras", ("k_dpmpp_3m_sde_ka",)),
        _named(DPMPP_3M_SDE, "Exponential", ("k_dpmpp_3m_sde_exp",)),
        DPM_FAST, DPM_ADAPTIVE,
        _named(LMS, "Karras", ("k_lms_ka",)),
        _named(DPM2, "Karras", ("k_dpm_2_ka",)),
        _named(DPM2_A, "Karras", ("k_dpm_2_a_ka",)),
        _named(DPMPP_2S_A, "Karras", ("k_dpmpp_2s_a_ka",)),
        _named(DPMPP_2M, "Karras", ("k_dpmpp_2m_ka",)),
        _named(DPMPP_SDE, "Karras", ("k_dpmpp_sde_ka",)),
        _named(DPMPP_2M_SDE, "Karras", ("k_dpmpp_2m_sde_ka",)),
        _named(DPMPP_2M_SDE, "Exponential", ("k_dpmpp_2m_sde_exp",)),
        SamplerSpec("Restart", "sample_restart", schedule="Karras", aliases=("restart",)),
        SamplerSpec("DDIM", "sample_ddim", eta=0.0, timesteps=True, aliases=("ddim",)),
        SamplerSpec("PLMS", "sample_plms", timesteps=True, aliases=("plms",)),
        SamplerSpec("UniPC", "sample_unipc", timesteps=True, unipc=True, aliases=("unipc",)),
        SamplerSpec("LCM", "sample_lcm", lcm=True, aliases=("k_lcm",)),
        SamplerSpec("DDIM CFG++", "sample_ddim_cfgpp", eta=0.0, timesteps=True, cfgpp=True, aliases=("ddim_cfgpp",)),
    ]
}
SAMPLER_NAMES = list(SAMPLERS)

def _fold(name: str) -> str:
    return name.lower().replace(" ", "")


def _find(name: str) -> SamplerSpec | None:
    if name in SAMPLERS:
        return SAMPLERS[name]
    # Be forgiving about case and spacing, as the WebUI's API is, and take its aliases.
    folded = _fold(name)
    for spec in SAMPLERS.values():
        if folded == _fold(spec.name) or folded in (_fold(a) for a in spec.aliases):
            return spec
    return None


def lookup(name: str) -> SamplerSpec:
    """A sampler by any WebUI name or alias; a name with a schedule type on its end
    ("Euler Karras", "DPM++ 2M SGM Uniform", as the WebUI 1.9+ accepts) is that
    sampler with that spacing."""
    spec = _find(name)
    if spec is None:
        for label, aliases in schedules.SCHEDULE_TYPES.items():
            for suffix in (label, *aliases):
                if label != "Automatic" and _fold(name).endswith(_fold(suffix)) and len(name) > len(suffix):
                    base = _find(name[: len(name) - len(suffix)].rstrip(" _"))
                    if base is not None and not base.timesteps:
                        spec = replace(base, name=f"{base.name} {label}", schedule=label, aliases=())
                        break
            if spec is not None:
                break
    if spec is None:
        raise EngineError("unknown_sampler", f"unknown sampler {name!r}; valid: {', '.join(SAMPLER_NAMES)}", field="sampler")
    return spec


def resolve(name: str, schedule_type: str = "Automatic") -> tuple[SamplerSpec, str]:
    """(the sampler, the schedule type label it runs with): a request's schedule
    type, or for "Automatic" the name's own."""
    spec = lookup(name)
    label = schedules.canonical(schedule_type or "Automatic")
    return spec, spec.schedule if label == "Automatic" else label


def recorded_options(spec: SamplerSpec, label: str, automatic: bool, options: Any, txt2img: bool) -> dict[str, Any]:
    """The sampler parameters (protocol/sampler_options.py) the WebUI would write
    into this job's infotext: those it used that are not at their defaults.
    `automatic`: the request left the schedule type to the sampler (the WebUI
    then spaces the sigmas without a schedule function for a Uniform sampler,
    and records no schedule overrides)."""
    import math

    if options is None:
        return {}
    out: dict[str, Any] = {}
    if spec.churn:
        for key, default in (("s_churn", 0.0), ("s_tmin", 0.0)):
            if getattr(options, key) != default:
                out[key] = getattr(options, key)
        if options.s_tmax and options.s_tmax != math.inf:
            out["s_tmax"] = options.s_tmax
    if spec.s_noise and options.s_noise != 1.0:
        out["s_noise"] = options.s_noise
    if options.always_discard_next_to_last_sigma and not spec.discard_penultimate:
        out["always_discard_next_to_last_sigma"] = True
    uses_schedule = not spec.timesteps and not spec.lcm and not (automatic and label == "Uniform")
    if uses_schedule:
        for key in ("sigma_min", "sigma_max"):
            if getattr(options, key):
                out[key] = getattr(options, key)
        if label in schedules.DEFAULT_RHO and options.rho and options.rho != schedules.DEFAULT_RHO[label]:
            out["rho"] = options.rho
        if label == "Beta":
            out.update(beta_dist_alpha=options.beta_dist_alpha, beta_dist_beta=options.beta_dist_beta)
    if options.sgm_noise_multiplier and txt2img and not spec.timesteps:
        out["sgm_noise_multiplier"] = True
    if spec.unipc:
        for key, default in (("uni_pc_variant", "bh1"), ("uni_pc_skip_type", "time_uniform"), ("uni_pc_order", 3),
                             ("uni_pc_lower_order_final", True)):
            if getattr(options, key) != default:
                out[key] = getattr(options, key)
    return out
