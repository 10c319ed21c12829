"""The WebUI's samplers, written as k-diffusion writes them.

Every sampler name the WebUI offers runs one of these functions (DDIM and PLMS
as the WebUI's own timestep samplers), so a seed gives the picture the WebUI
gives. One short function per sampler, each taking

    model(x, sigma) -> denoised x0, the start x (already at sigmas[0]),
    the sigmas (a decreasing list, normally ending in 0) or the sigma range,

plus `noise(sigma, sigma_next)` for the Gaussian noise a stochastic step adds
between two noise levels (the caller decides where it comes from: each image's
seeded generator, as the WebUI 1.6+ continues it, or a Brownian tree for the
SDE samplers) and `callback(x, denoised, done)`, with `done` the fraction of
the way (0..1], called once per step. Sigmas are plain floats: they are the
same for every image of a batch. The functions mirror k-diffusion's
(crowsonkb/k-diffusion, sampling.py), which the tests run next to them.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

Model = Callable[[Any, float], Any]  # (x, sigma) -> denoised
Noise = Callable[[float, float], Any]  # (sigma, sigma_next) -> unit Gaussian noise shaped like x
Callback = Callable[[Any, Any, float], None]  # (x, denoised, fraction done)


# -- schedules -------------------------------------------------------------------
def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """Karras et al. (2022): n sigmas spaced evenly in sigma^(1/rho), then 0."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    ramp = [i / (n - 1) for i in range(n)] if n > 1 else [0.0]
    return [(hi + r * (lo - hi)) ** rho for r in ramp] + [0.0]


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic part down to sigma_down and fresh noise
    of sigma_up, so that sigma_down^2 + sigma_up^2 = sigma_to^2; eta 0 adds none."""
    if not eta or not sigma_to:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - sigma_up**2), sigma_up


def _d(x, sigma: float, denoised):
    """dx/dsigma of the probability-flow ODE."""
    return (x - denoised) / sigma


def _none(x, denoised, done) -> None:
    pass


# -- ancestral samplers ----------------------------------------------------------
# Each takes a deterministic step from sigma down to sigma_down with its own
# method, then adds fresh noise of sigma_up (ancestral_step): `_ancestral` is
# the loop they share; the last step (sigma_down = 0) is Euler's, as in k-diffusion.
Step = Callable[[Model, Any, float, float, Any], Any]  # (model, x, sigma, sigma_down, denoised) -> x


def _ancestral(step: Step, model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback, eta: float,
               s_noise: float = 1.0):
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma = sigmas[i]
        denoised = model(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1], eta)
        if sigma_down == 0:
            x = denoised  # Euler to sigma 0 lands on the estimate itself
        else:
            x = step(model, x, sigma, sigma_down, denoised)
        if sigma_up:
            x = x + noise(sigma, sigmas[i + 1]) * s_noise * sigma_up
        callback(x, denoised, (i + 1) / steps)
    return x


def _euler(model: Model, x, sigma: float, sigma_down: float, denoised):
    return x + _d(x, sigma, denoised) * (sigma_down - sigma)


def _dpm_2(model: Model, x, sigma: float, sigma_down: float, denoised):
    """A midpoint step in log sigma."""
    sigma_mid = math.exp((math.log(sigma) + math.log(sigma_down)) / 2)
    x_2 = x + _d(x, sigma, denoised) * (sigma_mid - sigma)
    return x + _d(x_2, sigma_mid, model(x_2, sigma_mid)) * (sigma_down - sigma)


def _dpmpp_2s(model: Model, x, sigma: float, sigma_down: float, denoised):
    """DPM-Solver++(2S): in t = -log(sigma), a half step to s, then the whole step
    with the clean-image estimate made at s."""
    h = math.log(sigma) - math.log(sigma_down)
    sigma_s = math.exp(math.log(sigma) - h / 2)
    x_2 = (sigma_s / sigma) * x - math.expm1(-h / 2) * denoised
    return (sigma_down / sigma) * x - math.expm1(-h) * model(x_2, sigma_s)


def sample_euler_ancestral(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                           eta: float = 1.0, s_noise: float = 1.0):
    """Euler a."""
    return _ancestral(_euler, model, x, sigmas, noise, callback, eta, s_noise)


def sample_dpm_2_ancestral(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                           eta: float = 1.0, s_noise: float = 1.0):
    """DPM2 a: second order, two model calls a step."""
    return _ancestral(_dpm_2, model, x, sigmas, noise, callback, eta, s_noise)


def sample_dpmpp_2s_ancestral(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                              eta: float = 1.0, s_noise: float = 1.0):
    """DPM++ 2S a: single-step DPM-Solver++ of second order, two model calls a step."""
    return _ancestral(_dpmpp_2s, model, x, sigmas, noise, callback, eta, s_noise)


# -- Euler, Heun, DPM2: Karras et al. (2022), Algorithm 2 ------------------------------
# "Churn" raises sigma to sigma_hat = (1 + gamma) sigma with fresh noise before
# a step, for the steps with s_tmin <= sigma <= s_tmax (the WebUI's "sigma
# churn" settings; 0 = the deterministic samplers it runs by default).
def _churn(x, sigmas: Sequence[float], i: int, noise: Noise, s_churn: float, s_tmin: float, s_tmax: float,
           s_noise: float) -> tuple[Any, float]:
    """(x raised to sigma_hat, sigma_hat) for step i (Algorithm 2, lines 4-6)."""
    sigma = sigmas[i]
    if not s_churn:
        return x, sigma
    gamma = min(s_churn / (len(sigmas) - 1), math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0
    eps = noise(sigma, sigmas[i + 1]) * s_noise  # drawn every step, as k-diffusion draws it
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + eps * math.sqrt(sigma_hat**2 - sigma**2)
    return x, sigma_hat


def sample_euler(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0):
    """Euler: first order, one model call a step."""
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat)
        x = x + _d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
        callback(x, denoised, (i + 1) / (len(sigmas) - 1))
    return x


def sample_heun(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0):
    """Heun: Euler, then the trapezoid of both slopes (two calls a step, one for the last)."""
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        sigma_next = sigmas[i + 1]
        denoised = model(x, sigma_hat)
        d = _d(x, sigma_hat, denoised)
        x_2 = x + d * (sigma_next - sigma_hat)
        if sigma_next:
            x_2 = x + (d + _d(x_2, sigma_next, model(x_2, sigma_next))) / 2 * (sigma_next - sigma_hat)
        x = x_2
        callback(x, denoised, (i + 1) / (len(sigmas) - 1))
    return x


def sample_dpm_2(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0):
    """DPM2: the midpoint (in log sigma) slope for the whole step; Euler to 0."""
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        sigma_next = sigmas[i + 1]
        denoised = model(x, sigma_hat)
        if sigma_next:
            x = _dpm_2(model, x, sigma_hat, sigma_next, denoised)
        else:
            x = _euler(model, x, sigma_hat, 0.0, denoised)
        callback(x, denoised, (i + 1) / (len(sigmas) - 1))
    return x


def lms_coefficient(order: int, sigmas: Sequence[float], i: int, j: int) -> float:
    """The integral from sigmas[i] to sigmas[i+1] of the Lagrange basis polynomial
    of sigmas[i-j] over the last `order` sigmas (linear multistep). Integrated
    exactly with numpy's polynomials; k-diffusion integrates numerically to 1e-4."""
    import numpy as np

    poly = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            poly = poly * np.polynomial.Polynomial([-sigmas[i - k], 1.0]) / (sigmas[i - j] - sigmas[i - k])
    integral = poly.integ()
    return float(integral(sigmas[i + 1]) - integral(sigmas[i]))


def sample_lms(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none, order: int = 4):
    """LMS: Adams-Bashforth of up to fourth order on the ODE's slopes."""
    slopes: list[Any] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        slopes = [*slopes[-(order - 1):], _d(x, sigmas[i], denoised)]
        current = min(i + 1, order)
        x = x + sum(lms_coefficient(current, sigmas, i, j) * d for j, d in enumerate(reversed(slopes)))
        callback(x, denoised, (i + 1) / (len(sigmas) - 1))
    return x


def sample_dpmpp_2m(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second order from the previous
    step's estimate; the first and the last step are first order."""
    old_denoised, h_last = None, 0.0
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if not sigma_next:
            x = denoised  # the first-order step to sigma 0 lands on the estimate
        else:
            h = math.log(sigma) - math.log(sigma_next)
            d = denoised
            if old_denoised is not None:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - math.expm1(-h) * d
            h_last = h
        old_denoised = denoised
        callback(x, denoised, (i + 1) / (len(sigmas) - 1))
    return x


# -- stochastic samplers on a Brownian tree (their noise depends on the interval) ------
def sample_dpmpp_sde(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                     eta: float = 1.0, r: float = 1 / 2, s_noise: float = 1.0):
    """DPM++ SDE: stochastic DPM-Solver++ with a midpoint estimate, two calls a step."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if not sigma_next:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            sigma_s = math.exp(math.log(sigma) - r * h)
            down, up = ancestral_step(sigma, sigma_s, eta)
            x_2 = (down / sigma) * x - math.expm1(math.log(down) - math.log(sigma)) * denoised
            if up:
                x_2 = x_2 + noise(sigma, sigma_s) * s_noise * up
            denoised_2 = model(x_2, sigma_s)
            down, up = ancestral_step(sigma, sigma_next, eta)
            mixed = (1 - 1 / (2 * r)) * denoised + 1 / (2 * r) * denoised_2
            x = (down / sigma) * x - math.expm1(math.log(down) - math.log(sigma)) * mixed
            if up:
                x = x + noise(sigma, sigma_next) * s_noise * up
        callback(x, denoised, (i + 1) / (len(sigmas) - 1))
    return x


def sample_dpmpp_2m_sde(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                        eta: float = 1.0, solver_type: str = "midpoint", s_noise: float = 1.0):
    """DPM++ 2M SDE: the multistep solver of the SDE (eta 1) or ODE (eta 0); its
    second-order correction by the midpoint or Heun's rule."""
    old_denoised, h_last = None, 0.0
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if not sigma_next:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            eta_h = eta * h
            phi = -math.expm1(-h - eta_h)
            x = sigma_next / sigma * math.exp(-eta_h) * x + phi * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (phi / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * phi * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(sigma, sigma_next) * sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
            h_last = h
        old_denoised = denoised
        callback(x, denoised, (i + 1) / (len(sigmas) - 1))
    return x


def sample_dpmpp_3m_sde(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                        eta: float = 1.0, s_noise: float = 1.0):
    """DPM++ 3M SDE: third-order multistep from the last two estimates."""
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        h = None
        if not sigma_next:
            x = denoised
        else:
            h = math.log(sigma) - math.log(sigma_next)
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                x = x + noise(sigma, sigma_next) * sigma_next * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
        callback(x, denoised, (i + 1) / (len(sigmas) - 1))
    return x


# -- the WebUI's own additions ----------------------------------------------------------
def sample_lcm(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none):
    """LCM (Luo et al. 2023): jump to the consistency model's estimate, then re-noise
    it to the next sigma with fresh noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
        callback(x, denoised, (i + 1) / (len(sigmas) - 1))
    return x


def restart_steps(sigmas: Sequence[float]) -> list[tuple[float, float]]:
    """Restart sampling (Xu et al. 2023) as the WebUI schedules it: from 20 steps on,
    fewer Karras steps plus restart intervals that jump back from sigma ~0.1 to ~2
    (once, twice from 36 steps) and run Heun down again."""
    steps = len(sigmas) - 1
    restarts: dict[int, tuple[int, int, float]] = {}
    if steps >= 20:
        count, times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras_sigmas(steps - count * times, sigmas[-2], sigmas[0])
        restarts = {_nearest(sigmas, 0.1): (count + 1, times, 2.0)}
    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restarts:
            count, times, high = restarts[i + 1]
            top = _nearest(sigmas, high)
            if top < i + 1:
                ladder = karras_sigmas(count, sigmas[i + 1], sigmas[top])[:-1]
                pairs += list(itertools.pairwise(ladder)) * times
    return pairs


def _nearest(sigmas: Sequence[float], value: float) -> int:
    return min(range(len(sigmas)), key=lambda k: (abs(sigmas[k] - value), k))


def sample_restart(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none):
    """Restart: Heun steps; before each jump back up, noise to the higher sigma."""
    pairs = restart_steps(sigmas)
    last = None
    for n, (sigma, sigma_next) in enumerate(pairs):
        if last is not None and last < sigma:
            x = x + noise(last, sigma) * math.sqrt(sigma**2 - last**2)
        x = sample_heun(model, x, [sigma, sigma_next], noise)
        last = sigma_next
        callback(x, x, (n + 1) / len(pairs))
    return x


# -- the WebUI's timestep samplers (DDIM, PLMS), in sigma space ------------------------
# The WebUI runs these on the variance-preserving x_t = sqrt(a) x0 + sqrt(1 - a) eps
# over its integer timesteps (engine/schedules.py: webui_timesteps). Here x is
# x_t / sqrt(a) = x0 + sigma eps, so the same model (a denoiser) serves; the
# steps are the same arithmetic, and the run ends, as the WebUI's does, at
# the lowest timestep (sigmas has no 0): the caller rescales that x by sqrt(a).
def _eps(model: Model, x, sigma: float):
    return (x - model(x, sigma)) / sigma


def sample_ddim(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                eta: float = 0.0):
    """DDIM (Song et al. 2021, eq. 12): one model call a step, `eta` of DDPM's noise."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        a, a_prev = 1 / (1 + sigma**2), 1 / (1 + sigma_prev**2)
        eps = _eps(model, x, sigma)
        x0 = x - sigma * eps
        sigma_t = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x_vp = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma_t**2) * eps
        if sigma_t:
            x_vp = x_vp + sigma_t * noise(sigma, sigma_prev)
        x = x_vp / math.sqrt(a_prev)
        callback(x, x0, (i + 1) / (len(sigmas) - 1))
    return x


def sample_ddim_cfgpp(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                      eta: float = 0.0, uncond: Callable[[Any, float], Any] | None = None):
    """DDIM CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free
    Guidance"): the estimate from guidance at CFG / 12.5, the direction back to
    the noise from the unconditional prediction. `uncond(x, sigma)` gives the
    unconditional x0 of the call just made."""
    assert uncond is not None, "DDIM CFG++ needs the unconditional estimate"
    for i in range(len(sigmas) - 1):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        a, a_prev = 1 / (1 + sigma**2), 1 / (1 + sigma_prev**2)
        x0 = model(x, sigma)
        eps_uncond = (x - uncond(x, sigma)) / sigma
        sigma_t = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        x_vp = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma_t**2) * eps_uncond
        if sigma_t:
            x_vp = x_vp + sigma_t * noise(sigma, sigma_prev)
        x = x_vp / math.sqrt(a_prev)
        callback(x, x0, (i + 1) / (len(sigmas) - 1))
    return x


def sample_plms(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none):
    """PLMS (Liu et al. 2022, pseudo linear multistep): the first step is pseudo
    improved Euler (two calls), then Adams-Bashforth of orders 2-4 on eps."""
    old: list[Any] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        eps = _eps(model, x, sigma)
        if not old:
            eps_next = _eps(model, x + (sigma_prev - sigma) * eps, sigma_prev)
            combined = (eps + eps_next) / 2
        elif len(old) == 1:
            combined = (3 * eps - old[-1]) / 2
        elif len(old) == 2:
            combined = (23 * eps - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            combined = (55 * eps - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        old = [*old[-2:], eps]
        # In sigma space a DDIM step (eta 0) with a given eps is an Euler step.
        x_next = x + (sigma_prev - sigma) * combined
        callback(x_next, x - sigma * combined, (i + 1) / (len(sigmas) - 1))
        x = x_next
    return x


# -- DPM-Solver: fixed budget and adaptive ------------------------------------------
class DPMSolver:
    """DPM-Solver (Lu et al., 2022) of orders 1-3 in t = -log(sigma), on the
    noise prediction eps = (x - x0) / sigma; model calls are cached per step."""

    def __init__(self, model: Model, callback: Callback, t_start: float, t_end: float):
        self.model = model
        self.callback = callback
        self.t_start, self.t_end = t_start, t_end

    @staticmethod
    def sigma(t: float) -> float:
        return math.exp(-t)

    @staticmethod
    def t(sigma: float) -> float:
        return -math.log(sigma)

    def eps(self, cache: dict[str, Any], key: str, x, t: float):
        if key not in cache:
            cache[key] = (x - self.model(x, self.sigma(t))) / self.sigma(t)
        return cache[key]

    def step_1(self, x, t: float, t_next: float, cache: dict[str, Any]):
        h = t_next - t
        return x - self.sigma(t_next) * math.expm1(h) * self.eps(cache, "eps", x, t)

    def step_2(self, x, t: float, t_next: float, cache: dict[str, Any], r1: float = 1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * math.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * math.expm1(h) * eps - self.sigma(t_next) / (2 * r1) * math.expm1(h) * (eps_r1 - eps)

    def step_3(self, x, t: float, t_next: float, cache: dict[str, Any], r1: float = 1 / 3, r2: float = 2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * math.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - self.sigma(s2) * math.expm1(r2 * h) * eps
              - self.sigma(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - self.sigma(t_next) * math.expm1(h) * eps - self.sigma(t_next) / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps)

    def ancestral(self, t: float, t_next: float, eta: float) -> tuple[float, float]:
        """The deterministic target in t and the noise to add after it."""
        if not eta:
            return t_next, 0.0
        sigma_down, _ = ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        target = min(self.t_end, self.t(sigma_down))
        return target, math.sqrt(max(0.0, self.sigma(t_next) ** 2 - self.sigma(target) ** 2))

    def report(self, x, cache: dict[str, Any], t: float, now: float) -> None:
        denoised = x - self.sigma(t) * cache["eps"]
        self.callback(x, denoised, (now - self.t_start) / (self.t_end - self.t_start))


def sample_dpm_fast(model: Model, x, sigma_min: float, sigma_max: float, n: int, noise: Noise,
                    callback: Callback = _none, eta: float = 0.0, s_noise: float = 1.0):
    """DPM fast: DPM-Solver with n model calls, in steps of order 3 spaced
    evenly in log sigma, finishing with lower orders to spend exactly n."""
    solver = DPMSolver(model, callback, -math.log(sigma_max), -math.log(sigma_min))
    m = n // 3 + 1
    ts = [solver.t_start + (solver.t_end - solver.t_start) * i / m for i in range(m + 1)]
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    steps = {1: solver.step_1, 2: solver.step_2, 3: solver.step_3}
    for i, order in enumerate(orders):
        cache: dict[str, Any] = {}
        target, sigma_up = solver.ancestral(ts[i], ts[i + 1], eta)
        x_next = steps[order](x, ts[i], target, cache)
        solver.report(x, cache, ts[i], ts[i + 1])
        x = x_next + sigma_up * s_noise * noise(solver.sigma(ts[i]), solver.sigma(ts[i + 1])) if sigma_up else x_next
    return x


class StepSizeController:
    """PI(D) control of the step size from the local error (Söderlind 2003),
    with the atan limiter, as k-diffusion's DPM adaptive uses it."""

    def __init__(self, h: float, order: float, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.errors: list[float] = []

    def propose(self, error: float) -> bool:
        inverse = 1 / (error + 1e-8)
        if not self.errors:
            self.errors = [inverse] * 3
        self.errors[0] = inverse
        factor = self.errors[0] ** self.b1 * self.errors[1] ** self.b2 * self.errors[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errors[2], self.errors[1] = self.errors[1], self.errors[0]
        self.h *= factor
        return accept


def sample_dpm_adaptive(model: Model, x, sigma_min: float, sigma_max: float, noise: Noise,
                        callback: Callback = _none, eta: float = 0.0, rtol: float = 0.05, atol: float = 0.0078,
                        h_init: float = 0.05, max_calls: int = 1000):
    """DPM adaptive: embedded DPM-Solver 2/3 pairs; a step is kept when the two
    agree within rtol/atol, and the step size follows the error. The step
    count is the solver's choice; `max_calls` bounds it for a pathological model."""
    import torch

    solver = DPMSolver(model, callback, -math.log(sigma_max), -math.log(sigma_min))
    control = StepSizeController(h_init, 1.5 if eta else 3)
    s, x_prev, calls = solver.t_start, x, 0
    while s < solver.t_end - 1e-5:
        cache: dict[str, Any] = {}
        if calls + 3 >= max_calls:  # the budget's last three calls: one third-order step to the end
            x = solver.step_3(x, s, solver.t_end, cache)
            solver.report(x, cache, s, solver.t_end)
            break
        t = min(solver.t_end, s + control.h)
        target, sigma_up = solver.ancestral(s, t, eta)
        x_low = solver.step_2(x, s, target, cache, r1=1 / 3)
        x_high = solver.step_3(x, s, target, cache)
        calls += 3
        tolerance = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
        error = float(torch.linalg.vector_norm((x_low - x_high) / tolerance)) / x.numel() ** 0.5
        if control.propose(error):
            solver.report(x, cache, s, t)
            x_prev = x_low
            x = x_high + sigma_up * noise(solver.sigma(s), solver.sigma(t)) if sigma_up else x_high
            s = t
    return x


# -- UniPC (Zhao et al. 2023), as the WebUI runs it --------------------------------------
# The WebUI's UniPC (modules/models/diffusion/uni_pc) is the authors' multistep
# predictor-corrector on the data prediction, in variance-preserving time. With
# x = x_vp / alpha and lambda = -log sigma every one of its updates is the same
# arithmetic on this module's x (alpha_t cancels), so it runs on the denoiser
# like the others; engine/schedules.unipc_sigmas gives its time points.
def _unipc_ratios(history: list[tuple[float, Any]], sigma: float, order: int) -> tuple[float, Any, float, list, list]:
    """What both UniPC updates start from: the last sigma and estimate, the step h in
    log sigma, the step ratios r_k (the last 1) and the scaled differences D1_k."""
    s0, m0 = history[-1]
    h = math.log(s0) - math.log(sigma)
    rks, d1s = [], []
    for i in range(1, order):
        si, mi = history[-(i + 1)]
        rk = (math.log(s0) - math.log(si)) / h
        rks.append(rk)
        d1s.append((mi - m0) / rk)
    rks.append(1.0)
    return s0, m0, h, rks, d1s


def _unipc_bh(model: Model, x, history: list[tuple[float, Any]], sigma: float, order: int,
              variant: str, correct: bool) -> tuple[Any, Any]:
    """One UniPC-B(h) update from the last point in `history` [(sigma, x0)...]
    to `sigma` (eq. 8 / 10 of the paper, B(h) = h for bh1, e^h - 1 for bh2):
    the predictor from the last `order` estimates, then, with `correct`, the
    corrector using the model's estimate at the predicted point (returned, to
    be the next step's history without another call)."""
    import numpy as np

    s0, m0, h, rks, d1s = _unipc_ratios(history, sigma, order)
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k, factorial = h_phi_1 / hh - 1, 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r_matrix, b_vector = np.array(rows), np.array(b)
    x_base = (sigma / s0) * x - h_phi_1 * m0
    predicted = x_base
    if d1s:
        rhos_p = [0.5] if order == 2 else np.linalg.solve(r_matrix[:-1, :-1], b_vector[:-1]).tolist()
        predicted = x_base - b_h * sum(float(r) * d for r, d in zip(rhos_p, d1s, strict=True))
    if not correct:
        return predicted, None
    rhos_c = [0.5] if order == 1 else np.linalg.solve(r_matrix, b_vector).tolist()
    model_t = model(predicted, sigma)
    residual = sum(float(r) * d for r, d in zip(rhos_c[:-1], d1s, strict=True)) if d1s else 0.0
    return x_base - b_h * (residual + rhos_c[-1] * (model_t - m0)), model_t


def _unipc_vary(model: Model, x, history: list[tuple[float, Any]], sigma: float, order: int,
                variant: str, correct: bool) -> tuple[Any, Any]:
    """One UniPC update with varying coefficients (the paper's UniPC-v): the
    coefficients from the inverse of the Taylor matrix of the step ratios.
    The corrector's last term uses the last row the loop saw, as the WebUI's does."""
    import numpy as np

    s0, m0, h, rks, d1s = _unipc_ratios(history, sigma, order)
    k_count = len(rks)
    columns, column = [], np.ones(k_count)
    for k in range(1, k_count + 1):
        columns.append(column)
        column = column * np.array(rks) / (k + 1)
    c_matrix = np.stack(columns, axis=1)
    hh = -h
    h_phi_ks, h_phi_k, factorial = [], math.expm1(hh), 1
    for k in range(1, k_count + 2):
        h_phi_ks.append(h_phi_k)
        h_phi_k = h_phi_k / hh - 1 / factorial
        factorial *= k + 1
    x_base = (sigma / s0) * x - h_phi_ks[0] * m0

    def combined(row) -> Any:
        return sum(float(a) * d for a, d in zip(row, d1s, strict=True))

    predicted = x_base
    if d1s:
        a_p = np.linalg.inv(c_matrix[:-1, :-1])
        for k in range(k_count - 1):
            predicted = predicted - h_phi_ks[k + 1] * combined(a_p[k])
    if not correct:
        return predicted, None
    a_c = np.linalg.inv(c_matrix)
    model_t = model(predicted, sigma)
    x = x_base
    k = 0
    for k in range(k_count - 1):
        x = x - h_phi_ks[k + 1] * combined(a_c[k][:-1])
    return x - h_phi_ks[k_count] * float(a_c[k][-1]) * (model_t - m0), model_t


def sample_unipc(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                 order: int = 3, variant: str = "bh1", lower_order_final: bool = True):
    """UniPC multistep: one model call per point but the last; the first steps
    (and with `lower_order_final` the last ones) of lower order. `sigmas` are
    the time points, ending at the lowest one (no 0): the result is x there."""
    steps = len(sigmas) - 1
    order = max(1, min(order, steps))  # the WebUI refuses fewer steps than the order; this lowers it
    update = _unipc_vary if variant == "vary_coeff" else _unipc_bh
    history = [(sigmas[0], model(x, sigmas[0]))]
    for step in range(1, steps + 1):
        step_order = min(step, order)
        if step >= order and lower_order_final:
            step_order = min(order, steps + 1 - step)
        last = step == steps
        x, estimate = update(model, x, history, sigmas[step], step_order, variant, not last)
        callback(x, estimate if estimate is not None else history[-1][1], step / steps)
        if not last:
            history = [*history[-(order - 1):], (sigmas[step], estimate)] if order > 1 else [(sigmas[step], estimate)]
    return x


# -- by name ---------------------------------------------------------------------------
FUNCTIONS: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        sample_euler_ancestral, sample_dpm_2_ancestral, sample_dpmpp_2s_ancestral, sample_euler, sample_heun,
        sample_dpm_2, sample_lms, sample_dpmpp_2m, sample_dpmpp_sde, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde,
        sample_lcm, sample_restart, sample_ddim, sample_ddim_cfgpp, sample_plms, sample_unipc,
    )
}


def _legacy(noise: Callable[..., Any]) -> Noise:
    """Accept a zero-argument noise function (this module's older interface)."""
    try:
        takes_none = not inspect.signature(noise).parameters
    except (TypeError, ValueError):
        takes_none = False
    return (lambda sigma, sigma_next: noise()) if takes_none else noise


def sample(function: str, model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
           eta: float = 1.0, **options: Any):
    """Run the named sampler over `sigmas`. The DPM-Solvers take their range from
    it (the first sigma down to the last non-zero one) and DPM fast spends
    len(sigmas) - 1 calls; a single step (an empty range) is one Euler step to 0.
    `eta` goes to the samplers that take one; `options` (solver_type, s_churn,
    s_noise, UniPC's order...) as named, those a sampler does not take dropped."""
    noise = _legacy(noise)
    if function in ("sample_dpm_fast", "sample_dpm_adaptive") and len(sigmas) < 3:
        return sample_euler_ancestral(model, x, sigmas, noise, callback, eta=0.0)
    if function == "sample_dpm_fast":
        return sample_dpm_fast(model, x, sigmas[-2], sigmas[0], len(sigmas) - 1, noise, callback, eta,
                               options.get("s_noise", 1.0))
    if function == "sample_dpm_adaptive":
        return sample_dpm_adaptive(model, x, sigmas[-2], sigmas[0], noise, callback, eta)
    f = FUNCTIONS[function]
    takes = inspect.signature(f).parameters
    if "eta" in takes:
        options["eta"] = eta
    return f(model, x, sigmas, noise, callback, **{k: v for k, v in options.items() if k in takes})
