"""The WebUI samplers diffusers has no scheduler for, in the k-diffusion style.

diffusers ships most of the WebUI's samplers as schedulers (engine/samplers.py).
DPM++ 2S a, DPM fast and DPM adaptive have none, and the ancestral samplers'
eta is not exposed by diffusers' ancestral schedulers, so these are written
here as k-diffusion writes them: one short function per sampler, each taking

    model(x, sigma) -> denoised x0, the start x (already at sigmas[0]),
    the sigmas (a decreasing list ending in 0) or the sigma range,

plus `noise()` for fresh Gaussian noise shaped like x (seeded by the caller)
and `callback(x, denoised, done)`, with `done` the fraction of the way
(0..1], called once per step. Sigmas are plain floats: they are the same for
every image of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Model = Callable[[Any, float], Any]  # (x, sigma) -> denoised
Noise = Callable[[], Any]
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


def _ancestral(step: Step, model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback, eta: float):
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
            x = x + noise() * sigma_up
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
                           eta: float = 1.0):
    """Euler a."""
    return _ancestral(_euler, model, x, sigmas, noise, callback, eta)


def sample_dpm_2_ancestral(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                           eta: float = 1.0):
    """DPM2 a: second order, two model calls a step."""
    return _ancestral(_dpm_2, model, x, sigmas, noise, callback, eta)


def sample_dpmpp_2s_ancestral(model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
                              eta: float = 1.0):
    """DPM++ 2S a: single-step DPM-Solver++ of second order, two model calls a step."""
    return _ancestral(_dpmpp_2s, model, x, sigmas, noise, callback, eta)


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
                    callback: Callback = _none, eta: float = 0.0):
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
        x = x_next + sigma_up * noise() if sigma_up else x_next
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
            x = x_high + sigma_up * noise() if sigma_up else x_high
            s = t
    return x


# -- by name ---------------------------------------------------------------------------
def sample(function: str, model: Model, x, sigmas: Sequence[float], noise: Noise, callback: Callback = _none,
           eta: float = 1.0):
    """Run the named sampler over `sigmas`. The DPM-Solvers take their range from
    it (the first sigma down to the last non-zero one) and DPM fast spends
    len(sigmas) - 1 calls; a single step (an empty range) is one Euler step to 0."""
    if function in ("sample_dpm_fast", "sample_dpm_adaptive") and len(sigmas) < 3:
        return sample_euler_ancestral(model, x, sigmas, noise, callback, eta=0.0)
    if function == "sample_dpm_fast":
        return sample_dpm_fast(model, x, sigmas[-2], sigmas[0], len(sigmas) - 1, noise, callback, eta)
    if function == "sample_dpm_adaptive":
        return sample_dpm_adaptive(model, x, sigmas[-2], sigmas[0], noise, callback, eta)
    samplers = {f.__name__: f for f in (sample_euler_ancestral, sample_dpm_2_ancestral, sample_dpmpp_2s_ancestral)}
    return samplers[function](model, x, sigmas, noise, callback, eta)
