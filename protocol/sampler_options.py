"""The WebUI's advanced sampler settings (Settings > Sampler parameters), per job.

In the WebUI these are global settings; a PNG records the ones that were not
at their defaults in its infotext, under the names below, so `--from-png`
can ask for the same again. Every default is the WebUI's, and a request
without `sampler_options` samples exactly as before.

Pure: the infotext names are written (engine/jobs.py) and read (the CLI's
`--from-png`) through `infotext_fields` and `from_infotext` here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from protocol.fields import bounded, choice

UNIPC_VARIANTS = ("bh1", "bh2", "vary_coeff")
UNIPC_SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


@dataclass
class SamplerOptions:
    """The WebUI's option names (modules/shared_options.py), its defaults."""

    s_churn: float = bounded(0.0, 0.0, 100.0)  # "sigma churn": Euler, Heun and DPM2 (Karras et al. 2022, Alg. 2)
    s_tmin: float = bounded(0.0, 0.0, 100.0)  # churn only at sigmas >= s_tmin
    s_tmax: float = bounded(0.0, 0.0, 1000.0)  # ... and <= s_tmax; 0 = infinity
    s_noise: float = bounded(1.0, 0.0, 2.0)  # scale of the noise the stochastic samplers add
    sigma_min: float = bounded(0.0, 0.0, 1000.0)  # schedule's lowest sigma; 0 = the model's
    sigma_max: float = bounded(0.0, 0.0, 1000.0)  # schedule's highest sigma; 0 = the model's
    rho: float = bounded(0.0, 0.0, 100.0)  # Karras / Polyexponential rho; 0 = the schedule's own (7 / 1)
    beta_dist_alpha: float = bounded(0.6, 0.01, 1.0)  # the Beta schedule's distribution
    beta_dist_beta: float = bounded(0.6, 0.01, 1.0)
    always_discard_next_to_last_sigma: bool = False  # "Always discard next-to-last sigma"
    sgm_noise_multiplier: bool = False  # txt2img start noise x sqrt(1 + sigma^2) instead of x sigma (SGM's)
    uni_pc_variant: str = choice("bh1", UNIPC_VARIANTS)
    uni_pc_skip_type: str = choice("time_uniform", UNIPC_SKIP_TYPES)
    uni_pc_order: int = bounded(3, 1, 10)
    uni_pc_lower_order_final: bool = True


DEFAULTS = SamplerOptions()

# The infotext names the WebUI 1.6-1.10 writes (its extra_generation_params) and reads.
SIGMA_CHURN = (("s_churn", "Sigma churn"), ("s_tmin", "Sigma tmin"), ("s_tmax", "Sigma tmax"),
               ("s_noise", "Sigma noise"))
SCHEDULE = (("sigma_min", "Schedule min sigma"), ("sigma_max", "Schedule max sigma"), ("rho", "Schedule rho"))
BETA = (("beta_dist_alpha", "Beta schedule alpha"), ("beta_dist_beta", "Beta schedule beta"))
UNIPC = (("uni_pc_variant", "UniPC variant"), ("uni_pc_skip_type", "UniPC skip type"), ("uni_pc_order", "UniPC order"),
         ("uni_pc_lower_order_final", "UniPC lower order final"))
FLAGS = (("always_discard_next_to_last_sigma", "Discard penultimate sigma"),
         ("sgm_noise_multiplier", "SGM noise multiplier"))
NAMES: dict[str, str] = dict(SIGMA_CHURN + SCHEDULE + BETA + UNIPC + FLAGS)


def s_tmax(options: SamplerOptions) -> float:
    """The WebUI's `opts.s_tmax or inf`."""
    return options.s_tmax or math.inf


def format_value(value: Any) -> str:
    """As Python prints it, which is how the WebUI's infotext shows numbers and flags."""
    return str(float(value)) if isinstance(value, float) else str(value)


def infotext_fields(recorded: dict[str, Any]) -> list[str]:
    """'Name: value' for each recorded option (engine/jobs.py decides which the
    WebUI would record for the job), in the WebUI's names."""
    return [f"{NAMES[key]}: {format_value(value)}" for key, value in recorded.items() if key in NAMES]


def from_infotext(fields_: dict[str, str]) -> dict[str, Any]:
    """The options an infotext records, as a wire map (only those present)."""
    out: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(SamplerOptions)}
    for key, name in NAMES.items():
        if name not in fields_:
            continue
        text = fields_[name].strip()
        kind = types[key]
        try:
            if kind in ("bool", bool):
                out[key] = text.lower() == "true"
            elif kind in ("int", int):
                out[key] = int(float(text))
            elif kind in ("float", float):
                out[key] = 0.0 if text == "inf" and key == "s_tmax" else float(text)
            else:
                out[key] = text
        except ValueError:
            continue  # an unreadable value: the option keeps its default, as the WebUI's paste does
    return out
