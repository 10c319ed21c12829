"""The job request: one typed dataclass, WebUI names and defaults."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from protocol.errors import invalid
from protocol.fields import bounded, choice
from protocol.images import RawImage
from protocol.plots import Plot, check

MAX_SEED = 2**32 - 1  # WebUI seeds are 32-bit; -1 means "pick one at random"
MAX_GENERATE_SIDE = 8192


class JobKind(str, Enum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    UPSCALE = "upscale"


@dataclass
class HiresFix:
    """WebUI "Hires. fix" on txt2img: generate, upscale, img2img at the new size."""

    scale: float = bounded(2.0, 1.0, 4.0)  # "Upscale by"
    upscaler: str = "Latent"  # "Latent", "Lanczos", "Nearest" or an upscaler model name
    steps: int = bounded(0, 0, 150)  # "Hires steps"; 0 = same as the first pass
    denoise: float = bounded(0.45, 0.0, 1.0)  # "Denoising strength"; above 0.5 repaints a lot


@dataclass
class Upscale:
    """The `upscale` job: upscaler model, then optional tiled diffusion (MultiDiffusion)."""

    scale: float = bounded(2.0, 1.0, 8.0)
    upscaler: str = ""  # "" = the first upscaler model, else "Lanczos"
    denoise: float = bounded(0.35, 0.0, 1.0)  # 0 = the upscaler only
    tile: int = bounded(64, 16, 256)  # latent tile size (x8 pixels)
    overlap: int = bounded(16, 0, 128)  # latent tile overlap
    tile_batch: int = bounded(4, 1, 64)  # tiles through the UNet at once
    vae_tile: int = bounded(512, 128, 4096)  # VAE encoder/decoder tile, pixels; halved on out-of-memory
    keep_size: bool = True  # scale the input image's size (else width/height x scale)


@dataclass
class JobRequest:
    kind: str = choice("txt2img", tuple(k.value for k in JobKind))
    prompt: str = ""
    negative_prompt: str = ""
    model: str = ""  # "" = the server's default checkpoint
    sampler: str = "Euler a"
    steps: int = bounded(20, 1, 150)
    cfg_scale: float = bounded(7.0, 0.0, 30.0)
    seed: int = bounded(-1, -1, MAX_SEED)
    # 0 = the model's native size (txt2img) or the input image's size.
    width: int = bounded(0, 0, MAX_GENERATE_SIDE)
    height: int = bounded(0, 0, MAX_GENERATE_SIDE)
    strength: float = bounded(0.75, 0.0, 1.0)  # denoising strength (img2img, inpaint)
    batch_size: int = bounded(1, 1, 16)
    batch_count: int = bounded(1, 1, 100)  # batches run one after another; seeds continue
    subseed: int = bounded(-1, -1, MAX_SEED)  # WebUI "Variation seed"; -1 = random
    subseed_strength: float = bounded(0.0, 0.0, 1.0)  # WebUI "Variation strength"; 0 = off
    # Noise added per step: DDIM (default 0) and the ancestral samplers (default 1); null = that default.
    eta: float | None = bounded(None, 0.0, 1.0)
    resize_mode: str = choice("just resize", ("just resize", "crop and resize", "resize and fill", "latent upscale"))
    image: RawImage | None = None
    mask: RawImage | None = None  # 8-bit gray, 255 = repaint
    mask_blur: int = bounded(4, 0, 64)
    inpaint_padding: int = bounded(32, 0, 1024)  # context around the mask, pixels
    preview: bool = True
    clip_skip: int = bounded(1, 1, 12)  # WebUI "Clip skip": 1 = last layer, 2 = the one before
    vae: str = ""  # a VAE from the models folder; "" = the checkpoint's own
    hires: HiresFix | None = None  # txt2img only
    upscale: Upscale | None = None  # upscale only (defaults when absent)
    plot: Plot | None = None  # X/Y/Z plot, prompt matrix or prompt list: many images, each labelled
    # Live painting: supersedes this client's previous live job, jumps ahead of ordinary
    # jobs, sends no previews and is not kept in the result store.
    live: bool = False

    def validate(self) -> None:
        """Cross-field rules that the per-field ranges cannot express."""
        for name in ("width", "height"):
            value = getattr(self, name)
            if value and (value < 64 or value % 8):
                raise invalid(name, f"{name} must be 0 (default) or a multiple of 8 from 64 to {MAX_GENERATE_SIDE}, got {value}")
        kind = JobKind(self.kind)
        if self.hires is not None and kind is not JobKind.TXT2IMG:
            raise invalid("hires", "hires fix applies to txt2img only")
        if self.upscale is not None and kind is not JobKind.UPSCALE:
            raise invalid("upscale", f"{kind.value} takes no upscale options")
        if kind is JobKind.UPSCALE:
            if self.image is None:
                raise invalid("image", "upscale needs an image")
            options = self.upscale or Upscale()
            if options.overlap >= options.tile:
                raise invalid("upscale.overlap", f"overlap ({options.overlap}) must be smaller than the tile ({options.tile})")
            base_w, base_h = (self.image.width, self.image.height) if options.keep_size or not self.width else (self.width, self.height or self.image.height)
            if max(base_w, base_h) * options.scale > MAX_GENERATE_SIDE:
                raise invalid("upscale.scale", f"the result would be larger than {MAX_GENERATE_SIDE} pixels on a side")
        if self.plot is not None:
            check(self.plot, self.prompt)
        if self.hires is not None:
            side = max(self.width or 1024, self.height or 1024) * self.hires.scale
            if side > MAX_GENERATE_SIDE:
                raise invalid("hires.scale", f"the result would be larger than {MAX_GENERATE_SIDE} pixels on a side")
        if kind in (JobKind.IMG2IMG, JobKind.INPAINT, JobKind.UPSCALE):
            if self.image is None:
                raise invalid("image", f"{kind.value} needs an image")
            if self.image.channels == 1:
                raise invalid("image.channels", "image must be RGB or RGBA")
        if kind is JobKind.INPAINT:
            if self.mask is None:
                raise invalid("mask", "inpaint needs a mask (8-bit gray, 255 = repaint)")
            if self.mask.channels != 1:
                raise invalid("mask.channels", f"mask must have 1 channel, got {self.mask.channels}")
            assert self.image is not None
            if self.mask.size != self.image.size:
                raise invalid("mask", f"mask is {self.mask.width}x{self.mask.height}, image is {self.image.width}x{self.image.height}")
        elif self.mask is not None:
            raise invalid("mask", f"{kind.value} takes no mask")
        if kind is JobKind.TXT2IMG and self.image is not None:
            raise invalid("image", "txt2img takes no image; use img2img")
