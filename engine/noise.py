"""Initial noise with the WebUI's variation seeds.

The noise of image i is drawn from a CPU generator seeded with seed + i (the
same draw diffusers makes from that generator, so plain and variation jobs
agree), then spherically blended towards the noise of the variation seed by
the variation strength, as the WebUI's "Variation seed" does.
"""

from __future__ import annotations


def slerp(t: float, a, b):
    """Spherical interpolation between two noise tensors of the same shape."""
    import torch

    a_flat, b_flat = a.flatten(), b.flatten()
    dot = torch.dot(a_flat / a_flat.norm(), b_flat / b_flat.norm()).clamp(-1.0, 1.0)
    if dot.abs() > 0.9995:  # nearly parallel: a straight line is as good
        return (1.0 - t) * a + t * b
    omega = torch.acos(dot)
    return (torch.sin((1.0 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def initial_noise(seeds: list[int], subseeds: list[int], strength: float, shape: tuple[int, ...]):
    """N x C x h x w float32 noise on the CPU."""
    import torch

    images = []
    for seed, subseed in zip(seeds, subseeds, strict=True):
        noise = torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(seed))
        if strength > 0:
            variation = torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(subseed))
            noise = slerp(strength, noise, variation)
        images.append(noise)
    return torch.cat(images)
