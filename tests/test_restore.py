"""Restoration-guided sampling (engine/restore.py) against exact answers, then on the tiny model.

On Gaussian data x0 ~ N(mu, s^2) the ideal denoiser is known in closed form
(tests/test_ksampling.py), so the effect of k_t = (sigma_t / sigma_start)^tau
can be checked exactly: no restore hook at all with tau -> infinity past the
first step, and a result that moves steadily toward z_LQ as tau falls.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from engine import ksampling, restore
from engine.denoiser import Denoiser
from engine.params import JobParams, RestoreParams, UpscaleParams

MU, S = 0.3, 0.5
SIGMA_MIN, SIGMA_MAX = 0.0292, 14.6146


def gaussian_denoiser(x, sigma: float):
    return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)


def seeded(shape, seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda: torch.randn(shape, generator=g, dtype=torch.float64)


def guided(tau: float, z, sigmas, gamma: float = 0.0):
    hook = restore.RestoreGuidance.for_schedule(z, tau, sigmas, gamma)
    return lambda x, sigma: hook(gaussian_denoiser(x, sigma), sigma)


N = 4096
Z_LQ = -1.0 + 0.2 * torch.randn(N, generator=torch.Generator().manual_seed(5), dtype=torch.float64)  # far from mu


def test_k_follows_the_formula_and_stops_below_005():
    sigmas = ksampling.karras_sigmas(10, SIGMA_MIN, SIGMA_MAX)
    hook = restore.RestoreGuidance.for_schedule(Z_LQ, 4.0, sigmas)
    assert hook.k(sigmas[0]) == 1.0
    assert hook.k(sigmas[3]) == pytest.approx((sigmas[3] / sigmas[0]) ** 4)
    # The last step (to 0) and any step ending below 0.05 run unguided, as the authors' restore_cfg_s_tmin.
    assert sigmas[-2] < 0.05 < sigmas[-3]  # the step from sigmas[-3] ends below 0.05
    assert hook.k(sigmas[-2]) == 0.0 and hook.k(sigmas[-3]) == 0.0 and hook.k(sigmas[-4]) > 0.0
    # Churn raises the model's sigma by (1 + gamma); the normalisation follows it.
    churned = restore.RestoreGuidance.for_schedule(Z_LQ, 4.0, sigmas, 0.1)
    assert churned.k(sigmas[3] * 1.1) == pytest.approx(hook.k(sigmas[3]))
    assert restore.RestoreGuidance(Z_LQ, math.inf, 10.0).k(9.999) == 0.0


def test_edm_without_churn_is_euler():
    x = seeded(N, 0)() * SIGMA_MAX
    sigmas = ksampling.karras_sigmas(12, SIGMA_MIN, SIGMA_MAX)
    edm = restore.sample_edm(gaussian_denoiser, x, sigmas, seeded(N, 1))
    euler = ksampling.sample_euler_ancestral(gaussian_denoiser, x, sigmas, seeded(N, 1), eta=0.0)
    assert torch.allclose(edm, euler, atol=1e-12)


def test_edm_churn_samples_the_data_distribution():
    # Churn re-noises and then follows the ODE: with the exact denoiser the samples keep the
    # data's statistics (up to Euler's first-order bias: std 0.485 here, 0.493 without churn)
    # but no longer are the ODE's answer.
    x = seeded(20000, 3)() * SIGMA_MAX
    sigmas = ksampling.karras_sigmas(100, SIGMA_MIN, SIGMA_MAX)
    out = restore.sample_edm(gaussian_denoiser, x, sigmas, seeded(20000, 4), s_churn=5, s_noise=1.0)
    assert abs(float(out.mean()) - MU) < 0.01 and abs(float(out.std()) - S) < 0.025
    ode = restore.sample_edm(gaussian_denoiser, x, sigmas, seeded(20000, 4))
    assert float((out - ode).abs().mean()) > 0.3
    assert restore.churn_gamma(60, 20) == pytest.approx(20 / 60)
    assert restore.churn_gamma(10, 50) == pytest.approx(math.sqrt(2) - 1)  # capped as in EDM


@pytest.mark.parametrize("s_churn", [0.0, 5.0])
def test_infinite_tau_is_plain_sampling_after_the_first_step(s_churn):
    """k = 1 at the start sigma by definition and 0 after it as tau -> infinity: the
    first Euler step lands on z_LQ + noise * sigma_1, then sampling is plain. So an
    img2img from z_LQ with tau = inf equals plain sampling of the same noise from sigma_1."""
    sigmas = ksampling.karras_sigmas(20, SIGMA_MIN, 6.0)  # a partial (img2img) schedule
    n = seeded(N, 7)()
    if s_churn:  # the churn noise of step 0 joins the start noise; plain sampling then churns from step 1
        gamma = restore.churn_gamma(20, s_churn)
        steps = seeded(N, 8)
        first = steps()
        x0 = Z_LQ + n * sigmas[0]
        x_hat = x0 + first * math.sqrt((sigmas[0] * (1 + gamma)) ** 2 - sigmas[0] ** 2)
        noise_after = (x_hat - Z_LQ) / (sigmas[0] * (1 + gamma))
        out = restore.sample_edm(guided(math.inf, Z_LQ, sigmas, gamma), x0, sigmas, seeded(N, 8), s_churn=s_churn)
        # The plain run has one step fewer, so its gamma differs: compare step by step instead.
        plain_model = gaussian_denoiser
        g = seeded(N, 8)
        g()  # the first step's noise was used above
        x = Z_LQ + noise_after * sigmas[1]
        for i in range(1, 20):
            sigma_hat = sigmas[i] * (1 + gamma)
            x = x + g() * math.sqrt(sigma_hat**2 - sigmas[i] ** 2)
            x = x + (x - plain_model(x, sigma_hat)) / sigma_hat * (sigmas[i + 1] - sigma_hat)
        assert torch.allclose(out, x, atol=1e-10)
    else:
        out = restore.sample_edm(guided(math.inf, Z_LQ, sigmas), Z_LQ + n * sigmas[0], sigmas, seeded(N, 8))
        plain = restore.sample_edm(gaussian_denoiser, Z_LQ + n * sigmas[1], sigmas[1:], seeded(N, 8))
        assert torch.allclose(out, plain, atol=1e-10)
    # A large finite tau is the same to within rounding.
    big = restore.sample_edm(guided(300.0, Z_LQ, sigmas), Z_LQ + n * sigmas[0], sigmas, seeded(N, 8))
    inf = restore.sample_edm(guided(math.inf, Z_LQ, sigmas), Z_LQ + n * sigmas[0], sigmas, seeded(N, 8))
    assert torch.allclose(big, inf, atol=1e-10)


@pytest.mark.parametrize(("start", "s_churn"), [(SIGMA_MAX, 0.0), (SIGMA_MAX, 5.0), (3.0, 0.0)])
def test_smaller_tau_moves_monotonically_toward_z_lq(start, s_churn):
    sigmas = ksampling.karras_sigmas(30, SIGMA_MIN, start)
    gamma = restore.churn_gamma(30, s_churn)
    x0 = (Z_LQ if start < SIGMA_MAX else 0) + seeded(N, 9)() * start
    distances = []
    for tau in (math.inf, 16.0, 4.0, 2.0, 1.0, 0.5):
        out = restore.sample_edm(guided(tau, Z_LQ, sigmas, gamma), x0, sigmas, seeded(N, 10), s_churn=s_churn)
        distances.append(float((out - Z_LQ).pow(2).mean().sqrt()))
    assert all(a > b for a, b in itertools.pairwise(distances)), distances
    assert distances[-1] < distances[0] * 0.7


def test_denoiser_hooks_restore_and_linear_cfg():
    seen = []
    guidance = type("G", (), {"cfg_scale": 4.0})()

    def predict(x, t):
        seen.append(guidance.cfg_scale)
        return torch.zeros_like(x)  # epsilon 0: x0 = x

    d = Denoiser({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, predict, torch.float32)
    sigmas = [10.0, 5.0, 1.0, 0.0]
    z = torch.full((2,), 3.0)
    restore.install(d, guidance, z, 1.0, 7.5, sigmas, 0.0)
    x = torch.zeros(2)
    assert torch.allclose(d(x, 10.0), z)  # k = 1: all z_LQ
    assert torch.allclose(d(x, 5.0), z * 0.5)  # k = 0.5 (tau 1)
    assert torch.allclose(d(x, 1.0), x)  # the last step: unguided
    # CFG falls linearly from 7.5 at the start sigma to 4.0 at sigma 0.
    assert seen == pytest.approx([7.5, 4.0 + 3.5 * 0.5, 4.0 + 3.5 * 0.1])


# -- the tiny model ------------------------------------------------------------------
def _image(size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    rgb = np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // size], axis=-1).astype(np.uint8)
    return np.dstack([rgb, np.full((size, size), 255, np.uint8)])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["img2img", "upscale"])
def test_stronger_guidance_stays_closer_to_the_input(engine, kind, monkeypatch):
    """Measured in latent space, between z_LQ (the upscaled input as the VAE encodes it)
    and the sampled latent: the demo model's random VAE maps any latent far from its
    training range to about the same noise, so its pixels cannot show the difference."""
    from engine import kpipeline, tiled

    seen: dict[str, torch.Tensor] = {}
    encode, decode, decode_images = tiled.encode, tiled.decode, kpipeline.decode_images

    def spy_encode(*args, **kwargs):
        seen["z_lq"] = encode(*args, **kwargs)
        return seen["z_lq"]

    def spy_decode(vae, latents, *args):
        seen["out"] = latents
        return (decode if args else decode_images)(vae, latents, *args)

    monkeypatch.setattr(tiled, "encode", spy_encode)
    monkeypatch.setattr(tiled, "decode", spy_decode)
    monkeypatch.setattr(kpipeline, "decode_images", spy_decode)
    image = _image(64 if kind == "img2img" else 32)
    extra = {"strength": 1.0} if kind == "img2img" else {
        "upscale": UpscaleParams(scale=2, upscaler="Lanczos", denoise=1.0, tile=6, overlap=2)}
    distances = []
    for tau in (100.0, 2.0, 0.5):
        out = engine.run(JobParams(kind=kind, image=image, steps=5, seed=3, sampler="Euler", prompt="a cat",
                                   restore=RestoreParams(guidance=tau, s_churn=2.0, s_noise=1.003), **extra))
        assert out.images[0].shape == (64, 64, 4)
        distances.append(float((seen["out"].float() - seen["z_lq"].float()).pow(2).mean().sqrt()))
    assert all(a > b for a, b in itertools.pairwise(distances)), distances
    assert "Restore guidance: 0.5, S churn: 2, S noise: 1.003" in out.infotext


@pytest.mark.slow
def test_restore_with_any_written_sampler_and_linear_cfg(engine):
    out = engine.run(JobParams(kind="img2img", image=_image(), steps=4, seed=1, strength=0.6, sampler="DPM++ 2S a",
                               restore=RestoreParams(guidance=3.0, cfg_start=2.0)))
    assert out.parameters["cfg_start"] == 2.0 and "CFG start: 2" in out.infotext


def test_restore_refused_where_it_has_no_meaning(engine):
    from engine.errors import EngineError

    with pytest.raises(EngineError) as info:
        engine.run(JobParams(kind="txt2img", steps=2, restore=RestoreParams(guidance=2)))
    assert info.value.field == "restore"
    with pytest.raises(EngineError) as info:
        engine.run(JobParams(kind="img2img", image=_image(), steps=2, sampler="Euler z", restore=RestoreParams(guidance=2)))
    assert info.value.field == "sampler"


def test_protocol_restore_field():
    from protocol.fields import from_wire
    from protocol.requests import JobRequest

    image = {"width": 8, "height": 8, "channels": 3, "data": bytes(192)}
    request = from_wire(JobRequest, {"kind": "img2img", "image": image, "restore": {"guidance": 4, "s_churn": 5}})
    request.validate()
    assert request.restore is not None and request.restore.guidance == 4.0 and request.restore.cfg_start is None
    with pytest.raises(Exception, match="restore"):
        from_wire(JobRequest, {"kind": "txt2img", "restore": {"guidance": 4}}).validate()
    with pytest.raises(Exception, match="guidance"):
        from_wire(JobRequest, {"kind": "img2img", "image": image, "restore": {"guidance": -1}})


def test_restore_crosses_from_the_wire_to_the_engine():
    from bridge_server.convert import to_params
    from protocol.fields import from_wire
    from protocol.requests import JobRequest

    image = {"width": 8, "height": 8, "channels": 3, "data": bytes(192)}
    wire = {"kind": "upscale", "image": image, "sampler": "Euler",
            "restore": {"guidance": 4, "s_churn": 5, "s_noise": 1.003, "cfg_start": 4, "supir": "SUPIR-v0Q",
                        "pre_denoise": False}}
    request = from_wire(JobRequest, wire)
    request.validate()
    params = to_params(request)
    assert params.restore == RestoreParams(4.0, 5.0, 1.003, 4.0, "SUPIR-v0Q", False, True)
    with pytest.raises(Exception, match="SUPIR models restore in upscale jobs"):
        from_wire(JobRequest, {**wire, "kind": "img2img"}).validate()
