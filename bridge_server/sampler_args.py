"""CLI flags for the WebUI's advanced sampler settings (protocol/sampler_options.py).

Named as the WebUI's infotext names them ("Sigma churn" is --sigma-churn), so
a flag, the request field and the PNG's text read alike. Every flag defaults to
"not given": the request then carries no `sampler_options` and the server
uses the WebUI's defaults. `--from-png` fills them from the text.
"""

from __future__ import annotations

import argparse
from typing import Any

from protocol.sampler_options import UNIPC_SKIP_TYPES, UNIPC_VARIANTS, from_infotext

PREFIX = "opt_"  # argparse destinations: "s_churn" is restore guidance's --s-churn already

# field -> (flag, type, help)
FLAGS: dict[str, tuple[str, Any, str]] = {
    "s_churn": ("--sigma-churn", float, "WebUI 'sigma churn' (Euler, Heun, DPM2): noise added before each step"),
    "s_tmin": ("--sigma-tmin", float, "churn only from this sigma up"),
    "s_tmax": ("--sigma-tmax", float, "churn only up to this sigma (0 = no limit)"),
    "s_noise": ("--sigma-noise", float, "scale of the noise the stochastic samplers add (default 1)"),
    "sigma_min": ("--schedule-min-sigma", float, "the schedule's lowest sigma (0 = the model's)"),
    "sigma_max": ("--schedule-max-sigma", float, "the schedule's highest sigma (0 = the model's)"),
    "rho": ("--schedule-rho", float, "Karras / Polyexponential rho (0 = 7 / 1)"),
    "beta_dist_alpha": ("--beta-alpha", float, "the Beta schedule's alpha (default 0.6)"),
    "beta_dist_beta": ("--beta-beta", float, "the Beta schedule's beta (default 0.6)"),
    "uni_pc_variant": ("--unipc-variant", str, f"UniPC: {', '.join(UNIPC_VARIANTS)} (default bh1)"),
    "uni_pc_skip_type": ("--unipc-skip-type", str, f"UniPC: {', '.join(UNIPC_SKIP_TYPES)} (default time_uniform)"),
    "uni_pc_order": ("--unipc-order", int, "UniPC's order (default 3)"),
}
SWITCHES: dict[str, tuple[str, str]] = {
    "always_discard_next_to_last_sigma": ("--discard-penultimate-sigma",
                                          "WebUI 'Always discard next-to-last sigma'"),
    "sgm_noise_multiplier": ("--sgm-noise-multiplier", "txt2img start noise x sqrt(1 + sigma^2) (SGM's)"),
}


def add_args(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("sampler parameters (the WebUI's Settings > Sampler parameters)")
    for field, (flag, kind, text) in FLAGS.items():
        metavar = "NAME" if kind is str else "N"
        group.add_argument(flag, dest=PREFIX + field, type=kind, default=None, metavar=metavar, help=text)
    for field, (flag, text) in SWITCHES.items():
        group.add_argument(flag, dest=PREFIX + field, action="store_const", const=True, default=None, help=text)
    group.add_argument("--unipc-lower-order-final", dest=PREFIX + "uni_pc_lower_order_final",
                       action=argparse.BooleanOptionalAction, default=None,
                       help="UniPC: lower orders for the last steps (default on)")


def wire(args: argparse.Namespace) -> dict[str, Any] | None:
    """The request's `sampler_options` map: the flags given, or None."""
    out = {key[len(PREFIX):]: value for key, value in vars(args).items()
           if key.startswith(PREFIX) and value is not None}
    return out or None


def png_settings(fields: dict[str, str]) -> dict[str, Any]:
    """argparse defaults from an infotext's sampler parameters."""
    return {PREFIX + key: value for key, value in from_infotext(fields).items()}


def flag_names() -> dict[str, str]:
    """Request field -> flag, for error messages."""
    names = {f"sampler_options.{k}": flag for k, (flag, _, _) in FLAGS.items()}
    names.update({f"sampler_options.{k}": flag for k, (flag, _) in SWITCHES.items()})
    names["sampler_options.uni_pc_lower_order_final"] = "--unipc-lower-order-final"
    return names
