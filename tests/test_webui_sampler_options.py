"""The WebUI's Settings > Sampler parameters, against k-diffusion called as the WebUI calls it.

The oracle is test_webui_samplers.py's: k-diffusion's own sampling functions
(and schedule functions) on the exact denoiser of Gaussian data, with the
options the WebUI passes (its sampler_extra_params: churn for Euler, Heun
and DPM2, s_noise for the samplers it lists), `torch.randn_like` inside
k-diffusion drawing from each image's generator as the WebUI's TorchHijack
makes it; the schedule overrides through k-diffusion's get_sigmas_* and the
WebUI's own schedules. Then the infotext: written as the WebUI writes it and
read back.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.kpipeline import KPipeline
from engine.noise import ImageNoise
from engine.samplers import resolve
from protocol.infotext import parse_infotext
from protocol.sampler_options import SamplerOptions, from_infotext, infotext_fields
from tests.test_webui_samplers import (
    SEEDS,
    SHAPE,
    TOLERANCE,
    ExactDenoiser,
    GeneratorNoise,
    _k_diffusion,
    gaussian,
    relative,
    training_sigmas,
    webui_sigmas,
)

MEASURED: dict[str, float] = {}


def ours(name: str, schedule: str, steps: int, options: SamplerOptions, eta: float | None = None):
    spec, label = resolve(name, schedule)
    denoiser = ExactDenoiser()
    pipe = KPipeline(None, spec, eta=spec.eta_for(eta), schedule=label, options=options)
    return pipe.run(denoiser, steps, ImageNoise(SHAPE, SEEDS, source="cpu")), denoiser.calls


class TorchHijack:
    """k_diffusion.sampling's `torch`, its randn_like drawing from the images' generators."""

    def __init__(self, rng: GeneratorNoise):
        self.rng = rng

    def __getattr__(self, name):
        return self.randn_like if name == "randn_like" else getattr(torch, name)

    def randn_like(self, x):
        return self.rng()


def webui_schedule(label: str, steps: int, options: SamplerOptions, discard: bool) -> torch.Tensor:
    """The WebUI's get_sigmas with its overrides, through k-diffusion's schedule functions."""
    sampling, external = _k_diffusion()
    table = training_sigmas()
    model = external.DiscreteSchedule(table, quantize=False)
    n = steps + 1 if discard else steps
    lo = options.sigma_min or table[0].item()
    hi = options.sigma_max or table[-1].item()
    if label == "Karras":
        sigmas = sampling.get_sigmas_karras(n, lo, hi, rho=options.rho or 7.0)
    elif label == "Exponential":
        sigmas = sampling.get_sigmas_exponential(n, lo, hi)
    elif label == "Polyexponential":
        sigmas = sampling.get_sigmas_polyexponential(n, lo, hi, rho=options.rho or 1.0)
    elif label == "Normal":
        ts = torch.linspace(model.sigma_to_t(torch.tensor(hi)), model.sigma_to_t(torch.tensor(lo)), n)
        sigmas = sampling.append_zero(model.t_to_sigma(ts))
    elif label == "Beta":
        from scipy import stats

        q = [stats.beta.ppf(v, options.beta_dist_alpha, options.beta_dist_beta) for v in 1 - np.linspace(0, 1, n)]
        sigmas = sampling.append_zero(torch.tensor([lo + v * (hi - lo) for v in q]))
    else:
        return webui_sigmas(label, steps, discard)
    sigmas = sigmas.float()
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def theirs(name: str, schedule: str, steps: int, options: SamplerOptions, eta: float | None = None):
    sampling, _ = _k_diffusion()
    spec, label = resolve(name, schedule)
    calls = [0]

    def model(x, sigma):
        calls[0] += 1
        return gaussian(x, sigma)

    rng = GeneratorNoise(SEEDS)
    start = rng()
    discard = spec.discard_penultimate or options.always_discard_next_to_last_sigma
    sigmas = webui_schedule(label, steps, options, discard)
    x = start * (torch.sqrt(1 + sigmas[0] ** 2) if options.sgm_noise_multiplier else sigmas[0])
    f = getattr(sampling, spec.function)
    kwargs: dict = {"sigmas": sigmas}
    if spec.churn:  # the WebUI's sampler_extra_params
        kwargs.update(s_churn=options.s_churn, s_tmin=options.s_tmin, s_tmax=options.s_tmax or float("inf"),
                      s_noise=options.s_noise)
    elif spec.s_noise:
        kwargs["s_noise"] = options.s_noise
    if spec.brownian:
        positive = sigmas[sigmas > 0]
        kwargs["noise_sampler"] = sampling.BrownianTreeNoiseSampler(x, positive.min(), positive.max(), seed=SEEDS)
    elif "noise_sampler" in f.__code__.co_varnames:
        kwargs["noise_sampler"] = rng
    if "eta" in f.__code__.co_varnames:
        kwargs["eta"] = spec.eta_for(eta)
    if spec.solver_type:
        kwargs["solver_type"] = spec.solver_type
    saved = sampling.torch
    sampling.torch = TorchHijack(rng)  # the WebUI's hijack: churn noise continues the generators
    try:
        return f(model, x, disable=True, **kwargs), calls[0]
    finally:
        sampling.torch = saved


def _check(name: str, schedule: str, steps: int, options: SamplerOptions, key: str) -> None:
    a, calls_a = ours(name, schedule, steps, options)
    b, calls_b = theirs(name, schedule, steps, options)
    error = relative(a, b)
    MEASURED[f"{name} | {schedule} | {key}"] = error
    assert error < TOLERANCE and calls_a == calls_b, (name, schedule, key, error, calls_a, calls_b)


CHURN = {
    "churn": SamplerOptions(s_churn=1.0),
    "churn in a band": SamplerOptions(s_churn=2.0, s_tmin=0.5, s_tmax=5.0),
    "churn, less noise": SamplerOptions(s_churn=1.0, s_noise=0.9),
}


@pytest.mark.parametrize("name", ["Euler", "Heun", "DPM2"])
@pytest.mark.parametrize("key", list(CHURN))
def test_churn_equals_k_diffusion(name, key):
    _check(name, "Automatic", 10, CHURN[key], key)


@pytest.mark.parametrize("name", ["DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun",
                                  "DPM++ 3M SDE"])
def test_sigma_noise_equals_k_diffusion(name):
    _check(name, "Automatic", 10, SamplerOptions(s_noise=0.8), "s_noise 0.8")


def test_sigma_noise_is_not_given_to_euler_a_as_the_webui_does_not():
    plain, _ = ours("Euler a", "Automatic", 10, SamplerOptions())
    assert torch.equal(ours("Euler a", "Automatic", 10, SamplerOptions(s_noise=0.8))[0], plain)


OVERRIDES = [
    ("Karras", SamplerOptions(sigma_min=0.1, sigma_max=10.0)),
    ("Karras", SamplerOptions(rho=5.0)),
    ("Exponential", SamplerOptions(sigma_min=0.05, sigma_max=12.0)),
    ("Polyexponential", SamplerOptions(rho=2.0, sigma_max=8.0)),
    ("Normal", SamplerOptions(sigma_min=0.1)),
    ("Beta", SamplerOptions(beta_dist_alpha=0.4, beta_dist_beta=0.8)),
    ("Karras", SamplerOptions(always_discard_next_to_last_sigma=True)),
    ("Uniform", SamplerOptions(always_discard_next_to_last_sigma=True)),
    ("Karras", SamplerOptions(sgm_noise_multiplier=True)),
]


@pytest.mark.parametrize(("schedule", "options"), OVERRIDES)
@pytest.mark.parametrize("name", ["Euler", "DPM++ 2M"])
def test_schedule_overrides_equal_the_webuis(name, schedule, options):
    _check(name, schedule, 10, options, repr(options))


def test_the_uniform_spacing_ignores_the_sigma_range_as_the_webuis_does():
    plain, _ = ours("Euler", "Uniform", 10, SamplerOptions())
    assert torch.equal(ours("Euler", "Uniform", 10, SamplerOptions(sigma_min=0.5, sigma_max=5.0))[0], plain)


def test_always_discard_adds_a_timestep_to_ddim_as_the_webui_does():
    _, calls = ours("DDIM", "Automatic", 10, SamplerOptions(always_discard_next_to_last_sigma=True))
    from engine.schedules import webui_timesteps

    assert calls == len(webui_timesteps(11)) - 1


# -- the record -------------------------------------------------------------------------
def test_infotext_names_and_values_are_the_webuis():
    recorded = {"s_churn": 0.5, "s_tmax": 10.0, "s_noise": 1.0, "rho": 5.0, "sigma_max": 12.5,
                "always_discard_next_to_last_sigma": True, "sgm_noise_multiplier": True,
                "beta_dist_alpha": 0.6, "uni_pc_variant": "bh2", "uni_pc_order": 2, "uni_pc_lower_order_final": False}
    assert infotext_fields(recorded) == [
        "Sigma churn: 0.5", "Sigma tmax: 10.0", "Sigma noise: 1.0", "Schedule rho: 5.0", "Schedule max sigma: 12.5",
        "Discard penultimate sigma: True", "SGM noise multiplier: True", "Beta schedule alpha: 0.6",
        "UniPC variant: bh2", "UniPC order: 2", "UniPC lower order final: False"]
    text = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, " + ", ".join(infotext_fields(recorded))
    assert from_infotext(parse_infotext(text)) == recorded


def test_a_job_records_what_the_webui_records_and_reads_it_back(engine):
    from engine.params import JobParams

    cases = [
        ("Euler", "Karras", SamplerOptions(s_churn=0.5, rho=5.0, always_discard_next_to_last_sigma=True,
                                           sgm_noise_multiplier=True),
         {"Sigma churn: 0.5", "Schedule rho: 5.0", "Discard penultimate sigma: True", "SGM noise multiplier: True"}),
        ("DPM2", "Beta", SamplerOptions(always_discard_next_to_last_sigma=True, s_noise=0.9),
         {"Beta schedule alpha: 0.6", "Beta schedule beta: 0.6", "Sigma noise: 0.9"}),
        ("UniPC", "Automatic", SamplerOptions(uni_pc_variant="bh2", uni_pc_order=2, rho=5.0),
         {"UniPC variant: bh2", "UniPC order: 2"}),
        ("Euler a", "Automatic", SamplerOptions(s_churn=3.0, sigma_max=5.0), set()),  # neither applies to it
    ]
    for sampler, schedule, options, expected in cases:
        out = engine.run(JobParams(prompt="a cat", width=64, height=64, steps=3, seed=2, sampler=sampler,
                                   schedule_type=schedule, sampler_options=options))
        written = set(out.infotext.splitlines()[-1].split(", "))
        names = {f.split(":")[0] for f in infotext_fields(options.__dict__)}
        assert expected <= written and not ({f.split(":")[0] for f in written} & names) - {
            e.split(":")[0] for e in expected}, (sampler, out.infotext)
        read = from_infotext(parse_infotext(out.infotext))
        assert all(getattr(options, k) == v for k, v in read.items()) and len(read) == len(expected)


def test_options_change_the_picture_and_plain_requests_do_not(engine):
    from engine.params import JobParams

    base = {"prompt": "a cat", "width": 64, "height": 64, "steps": 4, "seed": 5, "sampler": "Euler"}
    plain = engine.run(JobParams(**base)).images[0]
    assert np.array_equal(engine.run(JobParams(**base, sampler_options=SamplerOptions())).images[0], plain)
    churned = engine.run(JobParams(**base, sampler_options=SamplerOptions(s_churn=2.0))).images[0]
    assert not np.array_equal(churned, plain)


def test_protocol_refuses_an_out_of_range_option_naming_it():
    from protocol import ProtocolError
    from protocol.fields import from_wire
    from protocol.requests import JobRequest

    assert from_wire(JobRequest, {"sampler_options": {"s_churn": 1.5}}).sampler_options.s_churn == 1.5
    for bad, field in (({"s_noise": 5.0}, "s_noise"), ({"uni_pc_variant": "bh3"}, "uni_pc_variant"),
                       ({"rhoo": 1}, "rhoo")):
        with pytest.raises(ProtocolError) as err:
            from_wire(JobRequest, {"sampler_options": bad})
        assert err.value.field == f"sampler_options.{field}"


def test_s_tmax_zero_means_no_limit():
    from protocol.sampler_options import s_tmax

    assert s_tmax(SamplerOptions()) == math.inf and s_tmax(SamplerOptions(s_tmax=4.0)) == 4.0
