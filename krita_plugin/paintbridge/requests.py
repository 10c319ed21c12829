"""The docker's settings and the job requests built from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from protocol import HiresFix, JobRequest, RawImage, Upscale

VISIBLE, LAYER = "visible", "layer"
INPAINT_MODES = ("fill", "expand", "add", "remove")
_REQUEST_FIELDS = {f.name for f in fields(JobRequest)}
# The server hands back layer-ready RGBA (alpha = the blend mask) where the protocol has it.
SERVER_MASKS = "result_alpha" in _REQUEST_FIELDS


def _supported(name: str) -> bool:
    """Newer request fields are sent only to a protocol that has them."""
    return name in _REQUEST_FIELDS


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
    resolution: str = "auto"  # auto: near the model's native size, then hires fix; exact: the area as is
    hires_denoise: float = 0.45  # the WebUI's hires fix default range (0.4-0.5)
    mask_grow: int = 8  # px the selection grows before the model sees it
    mask_feather: int = 16  # px of soft edge: the new layer fades into the painting, no seam
    inpaint_mode: str = "fill"  # fill | add | remove (expand is chosen by the Expand button)
    expand_side: str = "right"
    expand_pixels: int = 128
    mode: str = "generate"  # the docker's mode: generate | upscale
    remember_token: bool = False
    live_strength: float = 0.5  # Live mode's refine strength (live.py)
    # Upscale mode's "Restore (SUPIR)" (restore.py): on/off, the SUPIR model, the SDXL
    # checkpoint it runs with ("" = the docker's model if SDXL, else the first SDXL one),
    # and the fidelity (0) ... detail (100) slider mapped to tau_r.
    supir_on: bool = False
    supir: str = ""
    supir_checkpoint: str = ""
    supir_detail: int = 50
    supir_steps: int = 50  # the authors' 50; fewer with Lightning / Turbo SDXL models
    preset: str = ""  # the style preset picked in the Options tab (picked, not applied)


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


def _round8(value: float) -> int:
    return max(64, round(value / 8) * 8)


@dataclass(frozen=True)
class Sizes:
    """What the model generates first and the size of the result."""

    first: tuple[int, int]
    final: tuple[int, int]

    @property
    def hires(self) -> bool:
        return self.first != self.final

    def text(self) -> str:
        f, t = self.first, self.final
        return f"{f[0]}x{f[1]} → {t[0]}x{t[1]}" if self.hires else f"{t[0]}x{t[1]}"


def plan_sizes(width: int, height: int, native: int, resolution: str = "auto") -> Sizes:
    """The automatic-resolution rule, for the docker's "before -> after" line.

    The server's rule (protocol/resolution.py) where the plugin carries it: an
    area much larger than the model's native size is drawn near the native pixel
    count with the area's aspect, then hires-fixed to the area; a smaller one is
    drawn at native size and scaled down.
    """
    final = (width, height)
    if resolution == "exact" or native <= 0 or width < 1 or height < 1:
        return Sizes((_round8(width), _round8(height)), final)
    try:
        from protocol.resolution import plan
    except ImportError:  # an older protocol: the same rule, inline
        scale = math.sqrt(native * native / (width * height))
        if 1 / 1.5 <= scale * scale <= 1 / 0.75:
            return Sizes((_round8(width), _round8(height)), final)
        return Sizes((_round8(width * min(scale, 1.0) if scale < 1 else width * scale),
                      _round8(height * min(scale, 1.0) if scale < 1 else height * scale)), final)
    return Sizes(plan(width, height, native).first, final)


def _soft_mask_fields(settings: Settings, inpaint_mode: str) -> dict:
    """The mask is the painter's selection, grown and feathered by Krita already."""
    extra: dict = {}
    if _supported("inpaint_mode"):
        extra["inpaint_mode"] = inpaint_mode
    if _supported("resolution"):
        extra["resolution"] = settings.resolution
    if _supported("result_alpha"):
        extra["result_alpha"] = "mask"  # layer-ready: alpha = the blend mask
    return extra


def generate_request(settings: Settings, width: int, height: int, image: RawImage | None,
                     mask: RawImage | None = None, native: int = 0, inpaint_mode: str = "") -> JobRequest:
    """Generate (strength 100%) or refine (below) an area of `width` x `height`.

    With a mask (the painter's selection, already grown and feathered) it is an
    inpaint job at that strength: only the selection is repainted; at 100% the
    docker's inpaint mode (fill/add/remove) prepares it, below it starts from
    the painter's pixels.
    """
    common = {**_common(settings), "batch_size": settings.batch}
    if mask is not None and image is not None:
        mode = inpaint_mode or (settings.inpaint_mode if settings.strength >= 1.0 else "original")
        # mask_blur 0: Krita has feathered the selection already, as the painter set it.
        return JobRequest(kind="inpaint", image=image, mask=mask, strength=settings.strength, mask_blur=0,
                          inpaint_padding=settings.context, **common, **_soft_mask_fields(settings, mode))
    if settings.strength >= 1.0 or image is None:
        if _supported("resolution"):
            # auto: the server plans the passes; the hires options only carry the painter's denoise
            # (an exact request with `hires` would mean "and then upscale x2").
            hires = HiresFix(denoise=settings.hires_denoise) if settings.resolution == "auto" else None
            return JobRequest(kind="txt2img", width=_round8(width), height=_round8(height),
                              resolution=settings.resolution, hires=hires, **common)
        sizes = plan_sizes(width, height, native, settings.resolution)
        if sizes.first[0] < width and sizes.first[1] < height:
            # Older servers: the rule here; the hires fix takes the first pass to the area.
            scale = min(4.0, width / sizes.first[0])
            return JobRequest(kind="txt2img", width=sizes.first[0], height=sizes.first[1],
                              hires=HiresFix(scale=scale, denoise=settings.hires_denoise), **common)
        # The server works in multiples of 8; the layer is scaled to the area on arrival.
        return JobRequest(kind="txt2img", width=sizes.first[0], height=sizes.first[1], **common)
    extra = {"resolution": settings.resolution} if _supported("resolution") else {}
    return JobRequest(kind="img2img", image=image, strength=settings.strength, **common, **extra)


def inpaint_request(settings: Settings, image: RawImage, mask: RawImage, inpaint_mode: str = "") -> JobRequest:
    return generate_request(settings, image.width, image.height, image, mask, inpaint_mode=inpaint_mode)


def upscale_request(settings: Settings, image: RawImage) -> JobRequest:
    options = Upscale(scale=settings.upscale_factor, upscaler=settings.upscaler, denoise=settings.upscale_denoise)
    return JobRequest(kind="upscale", image=image, upscale=options, **_common(settings))
