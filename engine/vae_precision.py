"""The VAE's precision on a half-precision device.

SDXL's VAE overflows in float16 (NaN, a black picture); its config says so with
`force_upcast`, and diffusers' SDXL pipelines then run it in float32 for the
encode and the decode. Every VAE call of the engine (the plain decode, the
tiled encode and decode) goes through `full_precision` so none of them forgets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SDXL_SCALING_FACTOR = 0.13025


def needs_upcast(vae: Any) -> bool:
    """diffusers upcasts only in its SDXL pipelines, on `force_upcast`; its SD 1.x/2.x
    pipelines run the VAE in float16 (as the WebUI does by default), although
    AutoencoderKL's config defaults `force_upcast` to true and SD 1.5's own config
    does not set it. SDXL's VAE is the one with its scaling factor; an fp16-fixed
    SDXL VAE with its own config says `force_upcast: false`."""
    config = vae.config
    return bool(getattr(config, "force_upcast", False)) and getattr(config, "scaling_factor", 0) == SDXL_SCALING_FACTOR


@contextmanager
def full_precision(vae: Any, force: bool = False) -> Iterator[None]:
    """float32 for the duration when the VAE is SDXL's in float16 (`needs_upcast`),
    or any float16 VAE with `force` (the WebUI's revert on NaN), then back (the
    model stays resident in its own dtype between jobs)."""
    import torch

    upcast = vae.dtype == torch.float16 and (force or needs_upcast(vae))
    if upcast:
        vae.to(torch.float32)
    try:
        yield
    finally:
        if upcast:
            vae.to(torch.float16)
