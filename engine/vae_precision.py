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


@contextmanager
def full_precision(vae: Any) -> Iterator[None]:
    """float32 for the duration when the VAE is float16 and its config asks for it,
    then back (the model stays resident in its own dtype between jobs)."""
    import torch

    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        yield
    finally:
        if upcast:
            vae.to(torch.float16)
