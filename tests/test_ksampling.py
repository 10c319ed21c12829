"""The samplers written here (engine/ksampling.py) against exact answers.

For Gaussian data x0 ~ N(mu, s^2) the ideal denoiser is known in closed form,
and so is the probability-flow ODE's solution from any start: every
deterministic sampler (eta 0) must land on it, the higher orders closer, and
the ancestral ones (eta 1) must produce samples with the data's statistics.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine import ksampling
from engine.denoiser import Denoiser

MU, S = 0.3, 0.5
SIGMA_MIN, SIGMA_MAX = 0.03, 14.6


def gaussian_denoiser(x, sigma: float):
    return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)


def exact(x_start, sigma_start: float, sigma_end: float = 0.0):
    """The ODE solution: x - mu scales with sqrt(s^2 + sigma^2)."""
    return MU + (x_start - MU) * math.sqrt(S**2 + sigma_end**2) / math.sqrt(S**2 + sigma_start**2)


def start(n: int = 4096, seed: int = 0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * SIGMA_MAX


def seeded_noise(like, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return lambda *_: torch.randn(like.shape, generator=g, dtype=like.dtype)


def error(function: str, steps: int, **options) -> float:
    """Largest deviation from the exact answer (the samples spread over about -1.5..2)."""
    x = start()
    sigmas = ksampling.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
    if options:
        out = ksampling.sample_dpm_adaptive(gaussian_denoiser, x, SIGMA_MIN, SIGMA_MAX, seeded_noise(x), **options)
    else:
        out = ksampling.sample(function, gaussian_denoiser, x, sigmas, seeded_noise(x), eta=0.0)
    # The DPM-Solvers stop at the last non-zero sigma; the others at 0.
    end = SIGMA_MIN if function in ("sample_dpm_fast", "sample_dpm_adaptive") else 0.0
    return float((out - exact(x, SIGMA_MAX, end)).abs().max())


@pytest.mark.parametrize(
    ("function", "steps", "tolerance"),
    [
        # Measured here: 0.078, 0.012, 0.016, 0.0042, 0.047. The last step of the
        # first three is Euler from sigma_min to 0, as in k-diffusion: ~0.003 of error.
        ("sample_euler_ancestral", 40, 0.1),  # eta 0: plain Euler, first order
        ("sample_dpm_2_ancestral", 20, 0.02),
        ("sample_dpmpp_2s_ancestral", 20, 0.025),
        ("sample_dpm_fast", 20, 0.008),
        ("sample_dpm_adaptive", 20, 0.08),  # steps ignored; within its rtol of 0.05
    ],
)
def test_deterministic_samplers_solve_the_ode(function, steps, tolerance):
    assert error(function, steps) < tolerance


def test_higher_orders_beat_euler_at_the_same_model_calls():
    euler = error("sample_euler_ancestral", 20)  # 20 calls
    assert error("sample_dpmpp_2s_ancestral", 10) < euler / 2  # 19 calls
    assert error("sample_dpm_fast", 20) < euler / 10  # 20 calls
    assert error("sample_euler_ancestral", 40) < euler * 0.6  # first order: twice the steps, half the error


def test_dpm_adaptive_follows_its_tolerance():
    assert error("", 0, rtol=0.0005, atol=0.0001) < error("", 0, rtol=0.05, atol=0.0078) / 10


def test_dpm_fast_spends_exactly_n_calls_and_adaptive_fewer_when_loose():
    calls = []

    def counting(x, sigma):
        calls.append(sigma)
        return gaussian_denoiser(x, sigma)

    x = start(64)
    ksampling.sample_dpm_fast(counting, x, SIGMA_MIN, SIGMA_MAX, 17, seeded_noise(x))
    assert len(calls) == 17
    calls.clear()
    ksampling.sample_dpm_adaptive(counting, x, SIGMA_MIN, SIGMA_MAX, seeded_noise(x), rtol=0.5, atol=0.1)
    loose = len(calls)
    calls.clear()
    ksampling.sample_dpm_adaptive(counting, x, SIGMA_MIN, SIGMA_MAX, seeded_noise(x))
    assert 0 < loose < len(calls) and len(calls) % 3 == 0


def test_dpm_adaptive_stops_at_its_call_budget():
    calls = []

    def noisy(x, sigma):  # a model whose two orders never agree
        calls.append(sigma)
        return x * 0 + (len(calls) % 2) * 100.0

    x = start(16)
    out = ksampling.sample_dpm_adaptive(noisy, x, SIGMA_MIN, SIGMA_MAX, seeded_noise(x), max_calls=30)
    assert len(calls) <= 30 and torch.isfinite(out).all()


@pytest.mark.parametrize("function", ["sample_euler_ancestral", "sample_dpm_2_ancestral",
                                      "sample_dpmpp_2s_ancestral", "sample_dpm_fast", "sample_dpm_adaptive"])
def test_ancestral_samples_have_the_data_statistics(function):
    x = start(20000, seed=3)
    # Enough steps that Euler a's first-order bias is small (its spread is 0.44 at 30 steps, 0.48 at 100).
    sigmas = ksampling.karras_sigmas(100, SIGMA_MIN, SIGMA_MAX)
    out = ksampling.sample(function, gaussian_denoiser, x, sigmas, seeded_noise(x, 4), eta=1.0)
    assert abs(float(out.mean()) - MU) < 0.02
    assert abs(float(out.std()) - S) < 0.025
    # ...and they are not the ODE's answer: noise was added on the way.
    assert float((out - exact(x, SIGMA_MAX)).abs().mean()) > 0.05


def test_eta_scales_the_added_noise():
    x = start(2000)
    sigmas = ksampling.karras_sigmas(10, SIGMA_MIN, SIGMA_MAX)
    ode = exact(x, SIGMA_MAX)
    spread = []
    for eta in (0.0, 0.3, 1.0):
        out = ksampling.sample_euler_ancestral(gaussian_denoiser, x, sigmas, seeded_noise(x), eta=eta)
        spread.append(float((out - ode).abs().mean()))
    assert spread[0] < spread[1] < spread[2]


def test_ancestral_step_splits_the_variance():
    down, up = ksampling.ancestral_step(2.0, 1.0, eta=1.0)
    assert math.isclose(down**2 + up**2, 1.0) and 0 < down < 1.0
    assert ksampling.ancestral_step(2.0, 1.0, eta=0.0) == (1.0, 0.0)
    assert ksampling.ancestral_step(2.0, 0.0) == (0.0, 0.0)


def test_progress_reaches_one_and_only_grows():
    for function in ("sample_dpmpp_2s_ancestral", "sample_dpm_fast", "sample_dpm_adaptive"):
        done: list[float] = []
        x = start(64)
        sigmas = ksampling.karras_sigmas(12, SIGMA_MIN, SIGMA_MAX)
        ksampling.sample(function, gaussian_denoiser, x, sigmas, seeded_noise(x),
                         lambda x, d, f, done=done: done.append(f), eta=0.0)
        assert done == sorted(done) and math.isclose(done[-1], 1.0), function


SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def test_denoiser_schedule_matches_stable_diffusion():
    d = Denoiser(SD_SCHEDULE, lambda x, t: x, torch.float32)
    assert math.isclose(d.sigma_min, 0.0292, abs_tol=1e-4) and math.isclose(d.sigma_max, 14.6146, abs_tol=1e-3)
    sigmas = d.sigmas(4)
    assert sigmas[0] == pytest.approx(d.sigma_max) and sigmas[-1] == 0.0 and sigmas[-2] == pytest.approx(d.sigma_min)
    assert d.timestep(sigmas[1]) == pytest.approx(666.0)
    karras = d.sigmas(5, karras=True)
    assert len(karras) == 6 and karras[0] == pytest.approx(d.sigma_max) and karras[-2] == pytest.approx(d.sigma_min)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_denoiser_turns_predictions_into_x0(prediction):
    x0, eps, sigma = torch.full((1, 4), 0.7), torch.full((1, 4), -1.2), 3.0
    x = x0 + sigma * eps
    alpha = 1 / math.sqrt(sigma**2 + 1)  # the UNet sees x * alpha = alpha * x0 + (sigma * alpha) * eps
    v = alpha * eps - sigma * alpha * x0  # v = alpha_t * eps - sigma_t * x0 in variance-preserving terms
    truth = eps if prediction == "epsilon" else v
    d = Denoiser({**SD_SCHEDULE, "prediction_type": prediction}, lambda x_in, t: truth, torch.float32)
    assert torch.allclose(d(x, sigma), x0, atol=1e-5)
