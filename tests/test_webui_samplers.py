"""Every WebUI sampler name x schedule type against k-diffusion itself.

k-diffusion (the PyPI release, a test dependency) is the oracle: its sampling
functions run as the WebUI calls them (sigmas from the model's discretisation
spaced by the schedule type, one step more and the next-to-last sigma dropped
for DPM2 and DPM++ 3M SDE, start noise times sigma_max, step noise continuing
each image's seeded generator, the SDE samplers' Brownian tree seeded with
the image seeds), and ours (engine/kpipeline.py's KPipeline.run) next to them,
on the exact denoiser of Gaussian data. The WebUI's own additions (its
schedules beyond k-diffusion's, DDIM and PLMS on integer timesteps, LCM,
Restart) are written here from its documented behaviour as oracles.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import types

import numpy as np
import pytest
import torch

from engine import schedules
from engine.denoiser import Denoiser
from engine.kpipeline import KPipeline
from engine.noise import ImageNoise
from engine.samplers import SAMPLER_NAMES, lookup, resolve

MU, S = 0.3, 0.5  # the data: x0 ~ N(MU, S^2) per element
SHAPE = (4, 8, 8)
SEEDS = [11, 12]
SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
TOLERANCE = 1e-3  # relative: max |ours - theirs| / max |theirs|
MEASURED: dict[str, float] = {}


def _k_diffusion():
    """k_diffusion.sampling without its package __init__ (which imports training code)."""
    if "k_diffusion.sampling" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None:
            pytest.skip("k-diffusion (the oracle, a test dependency) is not installed")
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations or [])
        sys.modules.setdefault("k_diffusion", package)
    from k_diffusion import external, sampling

    return sampling, external


def gaussian(x, sigma):
    """The ideal denoiser for N(MU, S^2) data, for a float or per-image tensor sigma."""
    if torch.is_tensor(sigma) and sigma.ndim:
        sigma = sigma.reshape(-1, *[1] * (x.ndim - 1))
    return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)


class ExactDenoiser(Denoiser):
    """The engine's Denoiser (its schedule tables), predicting with the exact x0."""

    def __init__(self, lcm: bool = False):
        super().__init__(SD_SCHEDULE, lambda x, t: x, torch.float32, lcm=lcm)

    def __call__(self, x, sigma):
        self.calls += 1
        x0 = gaussian(x, sigma)
        return self._lcm_boundary(x0, x, sigma) if self.lcm else x0


def training_sigmas() -> torch.Tensor:
    from diffusers import EulerDiscreteScheduler

    alphas = EulerDiscreteScheduler.from_config(SD_SCHEDULE).alphas_cumprod.float()
    return ((1 - alphas) / alphas) ** 0.5


def ours(name: str, schedule: str, steps: int, eta: float | None) -> tuple[torch.Tensor, int]:
    spec, label = resolve(name, schedule)
    denoiser = ExactDenoiser(lcm=spec.lcm)
    pipe = KPipeline(None, spec, eta=spec.eta_for(eta), schedule=label)
    rng = ImageNoise(SHAPE, SEEDS, source="cpu")
    return pipe.run(denoiser, steps, rng), denoiser.calls


# -- the oracle ---------------------------------------------------------------------------
def webui_sigmas(schedule: str, steps: int, discard: bool) -> torch.Tensor:
    """The WebUI's get_sigmas: k-diffusion's DiscreteSchedule and schedule functions,
    and the WebUI's own schedules written from its source's behaviour."""
    sampling, external = _k_diffusion()
    table = training_sigmas()
    model = external.DiscreteSchedule(table, quantize=False)
    n = steps + 1 if discard else steps
    lo, hi = table[0].item(), table[-1].item()
    if schedule == "Uniform":
        sigmas = model.get_sigmas(n)
    elif schedule == "Karras":
        sigmas = sampling.get_sigmas_karras(n, lo, hi)
    elif schedule == "Exponential":
        sigmas = sampling.get_sigmas_exponential(n, lo, hi)
    elif schedule == "Polyexponential":
        sigmas = sampling.get_sigmas_polyexponential(n, lo, hi, rho=1.0)
    elif schedule in ("SGM Uniform", "Normal"):
        start, end = model.sigma_to_t(torch.tensor(hi)), model.sigma_to_t(torch.tensor(lo))
        ts = torch.linspace(start, end, n + 1)[:-1] if schedule == "SGM Uniform" else torch.linspace(start, end, n)
        sigmas = sampling.append_zero(model.t_to_sigma(ts))
    elif schedule == "KL Optimal":
        i = torch.arange(n + 1) / n
        sigmas = torch.tan(i * math.atan(lo) + (1 - i) * math.atan(hi))
    elif schedule == "Align Your Steps":
        table10 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
        if n == len(table10):
            sigmas = torch.tensor([*table10, 0.0])
        else:
            ys = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, 11), np.log(table10[::-1]))
            sigmas = torch.tensor([*np.exp(ys)[::-1], 0.0], dtype=torch.float32)
    elif schedule == "Simple":
        stride = len(table) / n
        sigmas = sampling.append_zero(torch.stack([table[-(1 + int(k * stride))] for k in range(n)]))
    elif schedule == "DDIM":
        stride = max(len(table) // n, 1)
        sigmas = sampling.append_zero(table[1::stride].flip(0))
    elif schedule == "Beta":
        from scipy import stats

        quantiles = [stats.beta.ppf(q, 0.6, 0.6) for q in 1 - np.linspace(0, 1, n)]
        sigmas = sampling.append_zero(torch.tensor([lo + q * (hi - lo) for q in quantiles]))
    else:
        raise AssertionError(schedule)
    sigmas = sigmas.float()
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


class GeneratorNoise:
    """The WebUI 1.6+'s ImageRNG on the CPU: each image's generator, continued."""

    def __init__(self, seeds):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, *_):
        return torch.stack([torch.randn(SHAPE, generator=g) for g in self.generators])


def theirs(name: str, schedule: str, steps: int, eta: float | None) -> tuple[torch.Tensor, int]:
    sampling, _ = _k_diffusion()
    spec, label = resolve(name, schedule)
    calls = [0]

    def model(x, sigma):
        calls[0] += 1
        return gaussian(x, sigma)

    rng = GeneratorNoise(SEEDS)
    start = rng()
    sigmas = webui_sigmas(label, steps, spec.discard_penultimate)
    x = start * sigmas[0]
    kwargs = {}
    f = getattr(sampling, spec.function)
    if spec.function in ("sample_dpm_fast", "sample_dpm_adaptive"):
        table = training_sigmas()
        kwargs = {"sigma_min": table[0].item(), "sigma_max": table[-1].item()}
        if spec.function == "sample_dpm_fast":
            kwargs["n"] = steps
    else:
        kwargs["sigmas"] = sigmas
    if spec.brownian:
        positive = sigmas[sigmas > 0]
        kwargs["noise_sampler"] = sampling.BrownianTreeNoiseSampler(x, positive.min(), positive.max(), seed=SEEDS)
    parameters = inspect.signature(f).parameters
    if "noise_sampler" in parameters and not spec.brownian:
        kwargs["noise_sampler"] = rng
    if "eta" in parameters:
        kwargs["eta"] = spec.eta_for(eta)
    if spec.solver_type:
        kwargs["solver_type"] = spec.solver_type
    return f(model, x, disable=True, **kwargs), calls[0]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


K_NAMES = [n for n in SAMPLER_NAMES if lookup(n).function and not lookup(n).timesteps
           and lookup(n).function not in ("sample_lcm", "sample_restart")]
SCHEDULES = [s for s in schedules.SCHEDULE_TYPES if s != "Automatic"]


def _check(name: str, schedule: str, steps: int, eta: float | None) -> None:
    a, calls_a = ours(name, schedule, steps, eta)
    b, calls_b = theirs(name, schedule, steps, eta)
    error = relative(a, b)
    MEASURED[f"{name} | {schedule} | {steps} | eta {eta}"] = error
    assert error < TOLERANCE, (name, schedule, steps, eta, error)
    if lookup(name).function != "sample_dpm_adaptive":
        assert calls_a == calls_b, (name, schedule, steps, calls_a, calls_b)


@pytest.mark.parametrize("name", K_NAMES)
@pytest.mark.parametrize("eta", [None, 0.0])
def test_every_name_at_its_own_schedule_equals_k_diffusion(name, eta):
    """Quick tier: each name with "Automatic" (its own spacing), 20 steps."""
    _check(name, "Automatic", 20, eta)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_type_equals_the_webui(schedule):
    """Quick tier: every schedule type under one first-order and one multistep sampler."""
    for name in ("Euler", "DPM++ 2M"):
        _check(name, schedule, 10, None)


@pytest.mark.slow
@pytest.mark.parametrize("name", K_NAMES)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_matrix_name_x_schedule_x_steps_x_eta(name, schedule):
    for steps in (10, 20, 30):
        for eta in (None, 0.0):
            if eta == 0.0 and lookup(name).eta is None:
                continue
            _check(name, schedule, steps, eta)


# -- the WebUI's own samplers ------------------------------------------------------------
def webui_timestep_sampler(kind: str, steps: int, eta: float = 0.0) -> tuple[torch.Tensor, int]:
    """The WebUI's DDIM/PLMS (modules/sd_samplers_timesteps_impl.py) on the
    variance-preserving x_t over its integer timesteps, with the exact eps."""
    alphas = 1 / (1 + training_sigmas().double() ** 2)
    timesteps = torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
    calls = [0]

    def eps(x, t):
        calls[0] += 1
        a = alphas[t]
        sigma, x_s = ((1 - a) / a).sqrt(), x / a.sqrt()
        return (x_s - gaussian(x_s, sigma)) / sigma

    rng = GeneratorNoise(SEEDS)
    x = rng().double()
    a_all = alphas[timesteps]
    a_prev_all = alphas[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))]
    old: list[torch.Tensor] = []
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        a, a_prev = a_all[index], a_prev_all[index]
        e = eps(x, timesteps[index])
        if kind == "DDIM":
            sigma_t = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
            x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma_t**2).sqrt() * e + sigma_t * rng().double()
            continue

        def step(e_t, x=x, a=a, a_prev=a_prev):
            x0 = (x - (1 - a).sqrt() * e_t) / a.sqrt()
            return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e_t

        if not old:
            e_next = eps(step(e), timesteps[index - 1])
            e_prime = (e + e_next) / 2
        elif len(old) == 1:
            e_prime = (3 * e - old[-1]) / 2
        elif len(old) == 2:
            e_prime = (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            e_prime = (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x = step(e_prime)
        old = [*old[-2:], e]
    return x, calls[0]


@pytest.mark.parametrize("kind", ["DDIM", "PLMS"])
@pytest.mark.parametrize("steps", [10, 20, 30])
def test_ddim_and_plms_equal_the_webuis_timestep_samplers(kind, steps):
    a, calls_a = ours(kind, "Automatic", steps, None)
    b, calls_b = webui_timestep_sampler(kind, steps)
    error = relative(a, b)
    MEASURED[f"{kind} | - | {steps} | eta None"] = error
    # The WebUI's loop runs between its len(range(0, 1000, 1000 // steps)) timesteps; PLMS's first step twice.
    expected = len(schedules.webui_timesteps(steps)) - (1 if kind == "DDIM" else 0)
    assert error < TOLERANCE and calls_a == calls_b == expected


def test_ddim_with_eta_draws_the_generators_noise():
    a, _ = ours("DDIM", "Automatic", 20, 1.0)
    b, _ = webui_timestep_sampler("DDIM", 20, eta=1.0)
    assert relative(a, b) < TOLERANCE


def webui_lcm(steps: int) -> tuple[torch.Tensor, int]:
    """The WebUI's LCM: its denoiser on 50 of the training timesteps (19, 39...999),
    quantised timesteps and the consistency boundary scaling, and sample_lcm."""
    table = training_sigmas().double()[19::20]
    log_table = table.log()
    calls = [0]

    def t_of(sigma):
        return int((sigma.log() - log_table).abs().argmin()) * 20 + 19

    def denoise(x, sigma):
        calls[0] += 1
        scaled = t_of(sigma) * 10.0
        c_skip, c_out = 0.25 / (scaled**2 + 0.25), scaled / (scaled**2 + 0.25) ** 0.5
        return c_out * gaussian(x, sigma) + c_skip * x

    ts = torch.linspace(t_of(table[-1]), t_of(table[0]), steps, dtype=torch.float64)
    index = ((ts - 19) / 20).clamp(0, len(table) - 1)
    low, high, w = index.floor().long(), index.ceil().long(), index.frac()
    sigmas = torch.cat([((1 - w) * log_table[low] + w * log_table[high]).exp(), torch.zeros(1, dtype=torch.float64)])
    rng = GeneratorNoise(SEEDS)
    x = rng().double() * sigmas[0]
    for i in range(steps):
        x = denoise(x, sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * rng().double()
    return x, calls[0]


@pytest.mark.parametrize("steps", [4, 8])
def test_lcm_equals_the_webuis(steps):
    a, calls_a = ours("LCM", "Automatic", steps, None)
    b, calls_b = webui_lcm(steps)
    error = relative(a, b)
    MEASURED[f"LCM | - | {steps} | -"] = error
    assert error < TOLERANCE and calls_a == calls_b == steps


def test_restart_is_heun_below_20_steps_and_restarts_from_20():
    sampling, _ = _k_diffusion()
    a, calls = ours("Restart", "Automatic", 10, None)
    sigmas = webui_sigmas("Karras", 10, False)
    b = sampling.sample_heun(gaussian, GeneratorNoise(SEEDS)() * sigmas[0], sigmas, disable=True)
    assert relative(a, b) < TOLERANCE and calls == 19
    # 20 steps: 11 Karras steps, then 9 Heun steps from sigma ~2 back down after a jump (the WebUI's plan).
    from engine import ksampling

    pairs = ksampling.restart_steps(webui_sigmas("Karras", 20, False).tolist())
    assert len(pairs) == 20 and sum(1 for (s, _), (_, prev) in zip(pairs[1:], pairs, strict=False) if s > prev) == 1
    out, calls = ours("Restart", "Automatic", 20, None)
    assert calls == 39
    assert abs(float(out.mean()) - MU) < 0.05 and abs(float(out.std()) - S) < 0.05


def test_ddim_cfgpp_equals_the_webuis():
    """DDIM CFG++ on two exact denoisers (conditional data around 0.8, unconditional
    around -0.2): the WebUI's loop (CFG / 12.5 for the estimate, the unconditional
    eps for the direction) against ours."""
    from engine import ksampling

    mu_c, mu_u, cfg, steps = 0.8, -0.2, 7.0, 20

    def exact(x, sigma, mu):
        return (S**2 * x + sigma**2 * mu) / (S**2 + sigma**2)

    def guided(x, sigma, scale):
        u = exact(x, sigma, mu_u)
        return u + scale * (exact(x, sigma, mu_c) - u), u

    # The WebUI's loop, on x_t over its integer timesteps.
    alphas = 1 / (1 + training_sigmas().double() ** 2)
    timesteps = torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
    x = GeneratorNoise(SEEDS)().double()
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        a, a_prev = alphas[timesteps[index]], alphas[timesteps[index - 1]]
        sigma = float(((1 - a) / a).sqrt())
        x_s = x / a.sqrt()
        x0, x0_u = guided(x_s, sigma, cfg / 12.5)
        e_t, e_u = (x_s - x0) / sigma, (x_s - x0_u) / sigma
        pred_x0 = (x - (1 - a).sqrt() * e_t) / a.sqrt()
        x = a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * e_u
    theirs_out = x

    last = {}

    def model(x, sigma):
        x0, last["u"] = guided(x, sigma, cfg / 12.5)
        return x0

    sigmas, _ = schedules.timestep_sigmas(steps, schedules.Discrete(ExactDenoiser().log_sigmas))
    start = ImageNoise(SHAPE, SEEDS, source="cpu").first().double() * math.sqrt(1 + sigmas[0] ** 2)
    ours_out = ksampling.sample("sample_ddim_cfgpp", model, start, sigmas, lambda *_: None, eta=0.0,
                                uncond=lambda x, sigma: last["u"]) / math.sqrt(1 + sigmas[-1] ** 2)
    error = relative(ours_out, theirs_out)
    MEASURED["DDIM CFG++ | - | 20 | eta 0"] = error
    assert error < TOLERANCE


# -- UniPC, as the WebUI runs it ----------------------------------------------------------
def webui_unipc(steps: int, order: int = 3, variant: str = "bh1", skip_type: str = "time_uniform",
                lower_order_final: bool = True, t_enc: int | None = None) -> tuple[torch.Tensor, int]:
    """The WebUI's UniPC (modules/models/diffusion/uni_pc, called by
    sd_samplers_timesteps_impl.unipc): the variance-preserving x_t in continuous
    time t, log alpha interpolated linearly between the training timesteps at
    t = (n + 1) / 1000, the data prediction from the exact eps, the multistep
    predictor-corrector with its B(h) or varying coefficients. Written from the
    paper (Zhao et al. 2023, Algorithms 1-2) and the WebUI's call."""
    alphas = 1 / (1 + training_sigmas().double() ** 2)
    log_alpha_table = 0.5 * alphas.log()
    grid = torch.arange(1, 1001, dtype=torch.float64) / 1000
    calls = [0]

    def log_alpha(t: float) -> float:
        return float(np.interp(t, grid.numpy(), log_alpha_table.numpy()))

    def alpha_sigma_lambda(t: float) -> tuple[float, float, float]:
        la = log_alpha(t)
        sigma = math.sqrt(1 - math.exp(2 * la))
        return math.exp(la), sigma, la - math.log(sigma)

    def data(x, t):  # x0 from the model's eps at x_t
        calls[0] += 1
        a, s, _ = alpha_sigma_lambda(t)
        k_sigma = s / a
        eps = (x / a - gaussian(x / a, k_sigma)) / k_sigma
        return (x - s * eps) / a

    timesteps = torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
    rng = GeneratorNoise(SEEDS)
    if t_enc is None:
        n, t_top = len(timesteps), 1.0
        x = rng().double()
    else:
        n, t_top = t_enc, float(timesteps[t_enc - 1]) / 1000 + 1 / 1000
        a_noise = alphas[timesteps[t_enc]]
        x = a_noise.sqrt() * torch.full((len(SEEDS), *SHAPE), MU, dtype=torch.float64) + (1 - a_noise).sqrt() * rng().double()
    t_low = 1 / 1000
    if skip_type == "time_uniform":
        ts = np.linspace(t_top, t_low, n + 1)
    elif skip_type == "time_quadratic":
        ts = np.linspace(t_top**0.5, t_low**0.5, n + 1) ** 2
    else:  # logSNR: evenly in lambda, back to t through the inverse of the interpolation
        lambdas = np.linspace(alpha_sigma_lambda(t_top)[2], alpha_sigma_lambda(t_low)[2], n + 1)
        las = -0.5 * np.logaddexp(0, -2 * lambdas)
        ts = np.interp(las, log_alpha_table.numpy()[::-1], grid.numpy()[::-1])

    def update(x, prev_t, prev_m, t, k, correct):
        a_t, s_t, l_t = alpha_sigma_lambda(t)
        _, s_0, l_0 = alpha_sigma_lambda(prev_t[-1])
        m0 = prev_m[-1]
        h = l_t - l_0
        rks = [(alpha_sigma_lambda(prev_t[-(i + 1)])[2] - l_0) / h for i in range(1, k)] + [1.0]
        d1s = [(prev_m[-(i + 1)] - m0) / rks[i - 1] for i in range(1, k)]
        hh = -h
        if variant == "vary_coeff":
            c = np.stack([np.array(rks) ** (j - 1) / math.factorial(j) for j in range(1, k + 1)], axis=1)
            phis = [math.expm1(hh)]
            for j in range(1, k + 1):
                phis.append(phis[-1] / hh - 1 / math.factorial(j))
            base = s_t / s_0 * x - a_t * phis[0] * m0
            pred = base
            if d1s:
                a_p = np.linalg.inv(c[:-1, :-1])
                for j in range(k - 1):
                    pred = pred - a_t * phis[j + 1] * sum(a_p[j][i] * d1s[i] for i in range(k - 1))
            if not correct:
                return pred, None
            a_c = np.linalg.inv(c)
            m_t = data(pred, t)
            out, last = base, 0
            for j in range(k - 1):
                out, last = out - a_t * phis[j + 1] * sum(a_c[j][i] * d1s[i] for i in range(k - 1)), j
            return out - a_t * phis[k] * a_c[last][-1] * (m_t - m0), m_t
        b_h = hh if variant == "bh1" else math.expm1(hh)
        phi = math.expm1(hh) / hh - 1
        r_rows, b = [], []
        for i in range(1, k + 1):
            r_rows.append([r ** (i - 1) for r in rks])
            b.append(phi * math.factorial(i) / b_h)
            phi = phi / hh - 1 / math.factorial(i + 1)
        r_m, b_v = np.array(r_rows), np.array(b)
        base = s_t / s_0 * x - a_t * math.expm1(hh) * m0
        pred = base
        if d1s:
            rho_p = [0.5] if k == 2 else np.linalg.solve(r_m[:-1, :-1], b_v[:-1])
            pred = base - a_t * b_h * sum(r * d for r, d in zip(rho_p, d1s, strict=True))
        if not correct:
            return pred, None
        rho_c = [0.5] if k == 1 else np.linalg.solve(r_m, b_v)
        m_t = data(pred, t)
        res = sum(r * d for r, d in zip(rho_c[:-1], d1s, strict=True)) if d1s else 0
        return base - a_t * b_h * (res + rho_c[-1] * (m_t - m0)), m_t

    prev_t, prev_m = [ts[0]], [data(x, ts[0])]
    for k in range(1, order):
        x, m = update(x, prev_t, prev_m, ts[k], k, True)
        prev_t, prev_m = [*prev_t, ts[k]], [*prev_m, m]
    for step in range(order, n + 1):
        k = min(order, n + 1 - step) if lower_order_final else order
        x, m = update(x, prev_t, prev_m, ts[step], k, step != n)
        prev_t, prev_m = [*prev_t[1:], ts[step]], [*prev_m[1:], m]
    return x, calls[0]


def ours_unipc(steps: int, t_enc: int | None = None, **settings) -> tuple[torch.Tensor, int]:
    from protocol.sampler_options import SamplerOptions

    spec = lookup("UniPC")
    denoiser = ExactDenoiser()
    denoiser.vp_time = True
    options = SamplerOptions(**settings)
    pipe = KPipeline(None, spec, schedule="Automatic", options=options)
    rng = ImageNoise(SHAPE, SEEDS, source="cpu")
    if t_enc is None:
        return pipe.run(denoiser, steps, rng), denoiser.calls
    x0 = torch.full((len(SEEDS), *SHAPE), MU)
    strength = (t_enc + 0.5) / steps  # int(strength * steps) = t_enc
    return pipe.run(denoiser, steps, rng, x0=x0, strength=strength), denoiser.calls


@pytest.mark.parametrize("steps", [10, 20, 30])
def test_unipc_equals_the_webuis(steps):
    a, calls_a = ours_unipc(steps)
    b, calls_b = webui_unipc(steps)
    error = relative(a, b)
    MEASURED[f"UniPC | - | {steps} | bh1"] = error
    # One call per time point but the last: as many as the WebUI's timesteps (31 for 30 steps).
    assert error < TOLERANCE and calls_a == calls_b == len(schedules.webui_timesteps(steps))


@pytest.mark.parametrize("settings", [
    {"uni_pc_variant": "bh2"}, {"uni_pc_variant": "vary_coeff"}, {"uni_pc_order": 2},
    {"uni_pc_skip_type": "time_quadratic"}, {"uni_pc_skip_type": "logSNR"}, {"uni_pc_lower_order_final": False},
    {"uni_pc_order": 1, "uni_pc_variant": "bh2"},
])
def test_unipc_options_equal_the_webuis(settings):
    a, calls_a = ours_unipc(20, **settings)
    names = {"uni_pc_variant": "variant", "uni_pc_order": "order", "uni_pc_skip_type": "skip_type",
             "uni_pc_lower_order_final": "lower_order_final"}
    b, calls_b = webui_unipc(20, **{names[k]: v for k, v in settings.items()})
    error = relative(a, b)
    MEASURED[f"UniPC | {settings} | 20"] = error
    assert error < TOLERANCE and calls_a == calls_b


@pytest.mark.parametrize("t_enc", [6, 12])
def test_unipc_img2img_runs_t_enc_steps_from_the_timestep_below(t_enc):
    a, calls_a = ours_unipc(20, t_enc=t_enc)
    b, calls_b = webui_unipc(20, t_enc=t_enc)
    error = relative(a, b)
    MEASURED[f"UniPC img2img | t_enc {t_enc} | 20"] = error
    assert error < TOLERANCE and calls_a == calls_b == t_enc
