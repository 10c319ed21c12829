"""The docker's settings and the job requests built from them."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import JobRequest, RawImage, Upscale

VISIBLE, LAYER = "visible", "layer"


@dataclass
class Settings:
    """What the painter set in the docker (persisted between sessions)."""

    server: str = "ws://127.0.0.1:8765"
    token: str = ""
    model: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = "Euler a"
    steps: int = 20
    cfg_scale: float = 7.0
    strength: float = 1.0  # 1.0 = generate from scratch; below = refine the current pixels
    seed: int = 0
    random_seed: bool = True
    batch: int = 1
    source: str = VISIBLE  # what inpaint/refine read: the visible image or the active layer
    context: int = 32  # pixels of context around a selection
    upscale_factor: float = 2.0
    upscaler: str = ""
    upscale_denoise: float = 0.0  # 0 = the upscaler only; >0 = tiled diffusion


def _common(settings: Settings) -> dict:
    """The fields every job takes from the docker."""
    return {
        "prompt": settings.prompt,
        "negative_prompt": settings.negative_prompt,
        "model": settings.model,
        "sampler": settings.sampler,
        "steps": settings.steps,
        "cfg_scale": settings.cfg_scale,
        "seed": -1 if settings.random_seed else settings.seed,
    }


def _round8(value: int) -> int:
    return max(64, value // 8 * 8)


def generate_request(settings: Settings, width: int, height: int, image: RawImage | None) -> JobRequest:
    """Generate (strength 100%) or refine (below) an area of `width` x `height`."""
    common = {**_common(settings), "batch_size": settings.batch}
    if settings.strength >= 1.0 or image is None:
        # The server works in multiples of 8; the layer is scaled to the area on arrival.
        return JobRequest(kind="txt2img", width=_round8(width), height=_round8(height), **common)
    return JobRequest(kind="img2img", image=image, strength=settings.strength, **common)


def inpaint_request(settings: Settings, image: RawImage, mask: RawImage) -> JobRequest:
    return JobRequest(kind="inpaint", image=image, mask=mask, strength=settings.strength, batch_size=settings.batch,
                      inpaint_padding=settings.context, **_common(settings))


def upscale_request(settings: Settings, image: RawImage) -> JobRequest:
    options = Upscale(scale=settings.upscale_factor, upscaler=settings.upscaler, denoise=settings.upscale_denoise)
    return JobRequest(kind="upscale", image=image, upscale=options, **_common(settings))
