"""Noise as the WebUI (1.6+) makes it: seeds, variation seeds, RNG source.

Each image of a batch has a generator seeded with its seed. Its first draw is
the start noise, blended towards the variation seed's noise by the variation
strength (the WebUI's slerp, which works per column of the noise: it
normalises along the second axis, height, so each (channel, x) column is
interpolated on its own); with "resize seed from" a different size, the seed's
noise is drawn at that size and pasted centred into the noise of the real
size. Every later draw (the step noise of ancestral and other stochastic
samplers) continues that generator, or, with an "Eta noise seed delta", a
generator seeded with seed + delta.

The RNG source is the WebUI's setting: "gpu" draws with torch's generator on
the device that runs the model (its default; on a CPU machine the same as
"cpu"), "cpu" on the CPU, and "nv" emulates NVIDIA's CUDA generator on the CPU
(engine/philox.py), so any machine reproduces a picture made on an NVIDIA GPU.
"""

from __future__ import annotations

from typing import Any

from engine.errors import EngineError

RNG_SOURCES = ("gpu", "cpu", "nv")
DEFAULT_RNG = "gpu"  # the WebUI's default
INFOTEXT_RNG = {"gpu": "GPU", "cpu": "CPU", "nv": "NV"}


def check_source(source: str) -> str:
    folded = (source or DEFAULT_RNG).lower()
    if folded not in RNG_SOURCES:
        raise EngineError("invalid_request", f"unknown RNG source {source!r}; valid: {', '.join(RNG_SOURCES)}",
                          field="rng")
    return folded


class Generator:
    """One image's seeded generator; `randn(shape)` continues it."""

    def __init__(self, seed: int, source: str = DEFAULT_RNG, device: Any = "cpu"):
        import torch

        from engine.philox import PhiloxGenerator

        self.source, self.device = check_source(source), torch.device(device)
        if self.source == "nv":
            self.philox = PhiloxGenerator(seed)
        else:
            where = self.device if self.source == "gpu" and self.device.type == "cuda" else torch.device("cpu")
            self.torch = torch.Generator(where).manual_seed(int(seed))

    def randn(self, shape: tuple[int, ...]):
        import torch

        if self.source == "nv":
            return torch.from_numpy(self.philox.randn(shape)).to(self.device)
        return torch.randn(shape, generator=self.torch, device=self.torch.device).to(self.device)


def slerp(t: float, low, high):
    """The WebUI's spherical interpolation of two C x H x W noises: per (channel, x)
    column, normalised along H; nearly parallel inputs (mean cosine > 0.9995) are
    mixed linearly, as the WebUI does it (its weights that way round)."""
    import torch

    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * t + high * (1 - t)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / so).unsqueeze(1) * low + (torch.sin(t * omega) / so).unsqueeze(1) * high


def _paste_centred(noise, small):
    """The seed's noise drawn at another size, centred in (or cropped to) this one."""
    dx = (noise.shape[2] - small.shape[2]) // 2
    dy = (noise.shape[1] - small.shape[1]) // 2
    w = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
    h = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    noise[:, ty : ty + h, tx : tx + w] = small[:, sy : sy + h, sx : sx + w]
    return noise


class ImageNoise:
    """The noise of a batch: `first()` the start noise, `next()` each later draw."""

    def __init__(self, shape: tuple[int, int, int], seeds: list[int], subseeds: list[int] | None = None,
                 strength: float = 0.0, resize_from: tuple[int, int] = (0, 0), source: str = DEFAULT_RNG,
                 device: Any = "cpu", eta_noise_seed_delta: int = 0):
        self.shape = tuple(shape)
        self.seeds = list(seeds)
        self.subseeds = list(subseeds or [])
        self.strength = strength
        self.resize_from = resize_from  # (width, height) in pixels; (0, 0) = off
        self.source, self.device = check_source(source), device
        self.delta = eta_noise_seed_delta
        self.generators = [Generator(s, self.source, device) for s in self.seeds]

    def first(self):
        import torch

        c = self.shape[0]
        rw, rh = self.resize_from
        seed_shape = (c, rh // 8, rw // 8) if rw > 0 and rh > 0 else self.shape
        images = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators, strict=True)):
            variation = None
            if self.strength:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                variation = Generator(subseed, self.source, self.device).randn(seed_shape)
            if seed_shape != self.shape:
                noise = Generator(seed, self.source, self.device).randn(seed_shape)
            else:
                noise = generator.randn(self.shape)
            if variation is not None:
                noise = slerp(self.strength, noise, variation)
            if seed_shape != self.shape:
                noise = _paste_centred(generator.randn(self.shape), noise)
            images.append(noise)
        if self.delta:
            self.generators = [Generator(s + self.delta, self.source, self.device) for s in self.seeds]
        return torch.stack(images)

    def next(self):
        import torch

        return torch.stack([g.randn(self.shape) for g in self.generators])
