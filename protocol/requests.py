"""The job request: one typed dataclass, WebUI names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from protocol.errors import invalid
from protocol.fields import bounded, choice
from protocol.images import RawImage
from protocol.limits import MAX_GENERATE_SIDE, check_sides
from protocol.plots import Plot, check
from protocol.regions import Region, check_regions
from protocol.resolution import RESOLUTIONS
from protocol.sampler_options import SamplerOptions

MAX_SEED = 2**32 - 1  # WebUI seeds are 32-bit; -1 means "pick one at random"
INPAINT_MODES = ("original", "fill", "expand", "add", "remove")
COLOR_FIXES = ("auto", "wavelet", "adain", "none")
MAX_TILE_BATCH_AREA = 64 * 64 * 64  # latent pixels through the UNet at once in tiled upscaling
__all__ = ["INPAINT_MODES", "MAX_GENERATE_SIDE", "MAX_SEED", "MAX_TILE_BATCH_AREA", "SCHEDULE_TYPES", "HiresFix",
           "JobKind", "JobRequest", "Upscale"]
# The WebUI's schedule types (engine/schedules.py spaces the sigmas by them).
SCHEDULE_TYPES = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                  "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")


class JobKind(str, Enum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    UPSCALE = "upscale"
    PREPROCESS = "preprocess"  # the control image alone: `image` through controls[0].preprocess


@dataclass
class HiresFix:
    """WebUI "Hires. fix" on txt2img: generate, upscale, img2img at the new size."""

    scale: float = bounded(2.0, 1.0, 4.0)  # "Upscale by"
    upscaler: str = "Latent"  # "Latent", "Lanczos", "Nearest" or an upscaler model name
    steps: int = bounded(0, 0, 150)  # "Hires steps"; 0 = same as the first pass
    denoise: float = bounded(0.45, 0.0, 1.0)  # "Denoising strength"; above 0.5 repaints a lot
    # WebUI "Resize width to" / "Resize height to": an exact target instead of `scale` (0 = use scale;
    # one side given keeps the first pass's aspect). Automatic resolution sets both.
    resize_width: int = bounded(0, 0, MAX_GENERATE_SIDE)
    resize_height: int = bounded(0, 0, MAX_GENERATE_SIDE)


UPSCALE_VAES = ("", "taesd")  # upscale.vae


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
    # After the diffusion: the result's colours put back onto the upscaled input's (engine/colorfix.py).
    # auto = wavelet for SUPIR (the authors' default), none for the plain tiled upscale.
    color_fix: str = choice("auto", COLOR_FIXES)
    # The tiled diffusion's VAE: "" = the checkpoint's (or the job's `vae`), "taesd" = TAESD from the
    # models folder (VAE-approx/ or vae_approx/): much faster, slightly less faithful colours.
    vae: str = choice("", UPSCALE_VAES)


MAX_CONTROLS = 4  # ControlNet units per job (each may load a model of up to ~2.5 GB)
CONTROL_MODES = ("balanced", "prompt", "control")
PREPROCESSORS = ("none", "depth", "canny", "lineart", "scribble", "tile", "normal", "softedge")
CONTROL_RESIZE = ("crop and resize", "just resize", "resize and fill")


@dataclass
class ControlUnit:
    """One ControlNet unit, as the WebUI's ControlNet extension has them."""

    model: str = ""  # a ControlNet in the models folder ("" only for a preprocess job)
    image: RawImage | None = None  # any size, gray/RGB/RGBA; absent = the job's own image
    strength: float = bounded(1.0, 0.0, 2.0)  # "Control Weight"
    start: float = bounded(0.0, 0.0, 1.0)  # "Starting Control Step", a fraction of the steps
    end: float = bounded(1.0, 0.0, 1.0)  # "Ending Control Step"
    # balanced | prompt ("My prompt is more important") | control ("ControlNet is more important")
    mode: str = choice("balanced", CONTROL_MODES)
    preprocess: str = choice("none", PREPROCESSORS)  # run on the server before use
    resize_mode: str = choice("crop and resize", CONTROL_RESIZE)  # how the image is fitted to the job's area


@dataclass
class Restore:
    """Restoration-guided sampling (SUPIR, arXiv 2401.13627) on img2img and upscale:
    each step's clean-image estimate is pulled toward the input's latent by
    k = (sigma / sigma_start) ** guidance."""

    guidance: float = bounded(0.0, 0.0, 100.0)  # tau_r; 0 = off; ~1-2 = faithful, ~4 = balanced, >10 = detail
    s_churn: float = bounded(0.0, 0.0, 100.0)  # EDM churn, sampler "Euler" only (SUPIR: 5)
    s_noise: float = bounded(1.0, 0.5, 1.5)  # churn noise scale (SUPIR: 1.003)
    cfg_start: float | None = bounded(None, 0.0, 30.0)  # linear CFG from this to cfg_scale; null = constant
    supir: str = ""  # upscale only: a SUPIR model (SUPIR/ or upscale_models/); the checkpoint must be SDXL
    pre_denoise: bool = True  # SUPIR: guide toward the degradation-robust encoder's cleaned input
    quality_prompt: bool = True  # SUPIR: append the authors' positive quality prompt


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
    # Issue 13, the painter's workflow (docs/protocol.md, "Automatic resolution" and "Soft masks").
    # "auto": width/height (or the image) is the area; the model draws near its native size
    # (protocol/resolution.py) and the hires fix or a resize brings it to the area.
    resolution: str = choice("exact", RESOLUTIONS)
    # How the masked area is prepared before diffusion: "original" keeps its pixels (protocol 2);
    # fill / expand / add / remove pre-fill it as krita-ai-diffusion's inpaint modes do.
    inpaint_mode: str = choice("original", INPAINT_MODES)
    mask_grow: int = bounded(0, -1, 512)  # px the mask grows by; -1 = auto (scaled to the selection)
    mask_feather: int = bounded(0, -1, 512)  # px of soft edge outside the grown mask; -1 = auto
    # "mask": the result is layer-ready RGBA, the repainted pixels with alpha = the blend mask,
    # transparent elsewhere (inpaint only); "opaque": composited over the input image.
    result_alpha: str = choice("opaque", ("opaque", "mask"))
    # WebUI reproduction: schedule type (Automatic = the sampler's own), noise source and seeds.
    schedule_type: str = choice("Automatic", SCHEDULE_TYPES)
    rng: str = choice("gpu", ("gpu", "cpu", "nv"))  # nv: NVIDIA's CUDA generator, emulated on any machine
    eta_noise_seed_delta: int = bounded(0, 0, MAX_SEED)  # WebUI "Eta noise seed delta"
    seed_resize_from_w: int = bounded(0, 0, MAX_GENERATE_SIDE)  # WebUI "Resize seed from width"; 0 = off
    seed_resize_from_h: int = bounded(0, 0, MAX_GENERATE_SIDE)
    controls: list[ControlUnit] = field(default_factory=list)  # ControlNet units (and a preprocess job's one)
    regions: list[Region] = field(default_factory=list)  # a prompt per masked area (protocol/regions.py)
    restore: Restore | None = None  # img2img and upscale: restoration-guided sampling
    # Live painting: supersedes this client's previous live job, jumps ahead of ordinary
    # jobs, sends no previews and is not kept in the result store.
    live: bool = False
    # The WebUI's Settings > Sampler parameters (protocol/sampler_options.py); null = its defaults.
    sampler_options: SamplerOptions | None = None

    def validate(self) -> None:
        """Cross-field rules that the per-field ranges cannot express."""
        for name in ("width", "height"):
            value = getattr(self, name)
            if value and (value < 64 or value % 8):
                raise invalid(name, f"{name} must be 0 (default) or a multiple of 8 from 64 to {MAX_GENERATE_SIDE}, got {value}")
        kind = JobKind(self.kind)
        if self.hires is not None and kind is not JobKind.TXT2IMG and not (
            self.resolution == "auto" and kind in (JobKind.IMG2IMG, JobKind.INPAINT)
        ):
            raise invalid("hires", "hires fix applies to txt2img (or, as the second pass, to auto-resolution refine and inpaint)")
        if self.hires is not None:
            for name in ("resize_width", "resize_height"):
                value = getattr(self.hires, name)
                if value and (value < 64 or value % 8):
                    raise invalid(f"hires.{name}", f"hires.{name} must be 0 or a multiple of 8 from 64 to {MAX_GENERATE_SIDE}, got {value}")
        if kind is not JobKind.INPAINT:
            for name, off in (("inpaint_mode", "original"), ("result_alpha", "opaque"), ("mask_grow", 0), ("mask_feather", 0)):
                if getattr(self, name) != off:
                    raise invalid(name, f"{name} applies to inpaint jobs (a selection: send kind inpaint with the strength)")
        if self.upscale is not None and kind is not JobKind.UPSCALE:
            raise invalid("upscale", f"{kind.value} takes no upscale options")
        if kind is JobKind.UPSCALE:
            if self.image is None:
                raise invalid("image", "upscale needs an image")
            options = self.upscale or Upscale()
            if options.overlap >= options.tile:
                raise invalid("upscale.overlap", f"overlap ({options.overlap}) must be smaller than the tile ({options.tile})")
            # Tiles through the UNet at once: the UNet's working memory follows tile_batch x tile^2,
            # so the two maxima together (64 tiles of 2048 px) are refused; 4 tiles of 2048 px pass.
            if options.tile_batch * options.tile**2 > MAX_TILE_BATCH_AREA:
                raise invalid("upscale.tile_batch", f"tile_batch x tile^2 must be at most {MAX_TILE_BATCH_AREA} latent "
                                                    f"pixels (e.g. 64 tiles of 64, 4 of 256); got {options.tile_batch} x {options.tile}^2")
        if self.plot is not None:
            check(self.plot, self.prompt)
        if kind in (JobKind.IMG2IMG, JobKind.INPAINT, JobKind.UPSCALE, JobKind.PREPROCESS):
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
        if self.restore is not None and kind not in (JobKind.IMG2IMG, JobKind.UPSCALE):
            raise invalid("restore", f"restore guidance applies to img2img and upscale, not {kind.value}")
        if self.restore is not None and self.restore.supir and kind is not JobKind.UPSCALE:
            raise invalid("restore.supir", "SUPIR models restore in upscale jobs")
        if kind is JobKind.TXT2IMG and self.image is not None:
            raise invalid("image", "txt2img takes no image; use img2img")
        # Every size the engine will make (derived from the image, hires, upscale), before queueing.
        check_sides(self)
        self._validate_controls(kind)
        check_regions(self.regions, self.image)

    def _validate_controls(self, kind: JobKind) -> None:
        if len(self.controls) > MAX_CONTROLS:
            raise invalid("controls", f"at most {MAX_CONTROLS} ControlNet units, got {len(self.controls)}")
        for i, unit in enumerate(self.controls):
            where = f"controls[{i}]"
            if unit.start > unit.end:
                raise invalid(f"{where}.start", f"{where}: start ({unit.start:g}) is after end ({unit.end:g})")
            if unit.image is None and self.image is None:
                raise invalid(f"{where}.image", f"{where} has no image and the {kind.value} job has none to lend it")
            if unit.image is not None and unit.image.channels == 2:
                raise invalid(f"{where}.image.channels", "a control image is gray, RGB or RGBA")
            if kind is not JobKind.PREPROCESS and not unit.model:
                raise invalid(f"{where}.model", f"{where} names no ControlNet")
        if kind is JobKind.PREPROCESS:
            if len(self.controls) != 1 or self.controls[0].preprocess == "none":
                raise invalid("controls", "a preprocess job takes one unit naming its preprocess (depth, canny, ...)")
            if self.plot is not None:
                raise invalid("plot", "a preprocess job takes no plot")
