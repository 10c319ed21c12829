"""What a job asks for and what it returns, in the engine's own terms.

The engine sits below the protocol, so it has its own request type: the
server copies the protocol's validated `JobRequest` into `JobParams`, turning
raw pixel buffers into numpy arrays (views, no copies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from protocol.sampler_options import SamplerOptions


@dataclass
class HiresParams:
    scale: float = 2.0
    upscaler: str = "Latent"
    steps: int = 0  # 0 = same as the first pass
    denoise: float = 0.45
    resize_width: int = 0  # WebUI "Resize width to": an exact target instead of `scale`
    resize_height: int = 0


@dataclass
class UpscaleParams:
    scale: float = 2.0
    upscaler: str = ""
    denoise: float = 0.35
    tile: int = 64  # latent pixels
    overlap: int = 16
    tile_batch: int = 4
    vae_tile: int = 512  # image pixels
    keep_size: bool = True
    color_fix: str = "auto"  # auto | wavelet | adain | none (engine/colorfix.py)
    vae: str = ""  # "" = the checkpoint's VAE; "taesd" = TAESD from the models folder (engine/taesd.py)


@dataclass
class ControlParams:
    """One ControlNet unit (engine/control.py)."""

    model: str = ""  # a ControlNet in the models folder
    image: np.ndarray | None = None  # HxWx3/4 uint8, any size; None = the job's image
    strength: float = 1.0
    start: float = 0.0  # guidance start, fraction of the steps
    end: float = 1.0
    mode: str = "balanced"  # balanced | prompt | control
    preprocess: str = "none"  # none | depth | canny | lineart | scribble | tile
    resize_mode: str = "crop and resize"  # crop and resize | just resize | resize and fill


@dataclass
class RegionParams:
    """A prompt for part of the picture (engine/regions.py)."""

    mask: np.ndarray  # HxW uint8, 255 = the region; soft edges blend
    prompt: str = ""
    negative_prompt: str | None = None  # None = the job's negative prompt
    weight: float = 1.0


@dataclass
class RestoreParams:
    """Restoration-guided sampling (engine/restore.py) for img2img and upscale."""

    guidance: float = 0.0  # tau_r; 0 = off; small = near the input, large = generated detail
    s_churn: float = 0.0  # EDM churn (sampler "Euler")
    s_noise: float = 1.0
    cfg_start: float | None = None  # linear CFG from this (first step) to cfg_scale (last); None = constant
    supir: str = ""  # upscale: a SUPIR model (SUPIR/ or upscale_models/) with an SDXL checkpoint
    pre_denoise: bool = True  # SUPIR: guide toward the degradation-robust encoder's cleaned input
    quality_prompt: bool = True  # SUPIR: append the authors' positive quality prompt


@dataclass
class JobParams:
    kind: str = "txt2img"  # txt2img | img2img | inpaint | upscale | preprocess
    prompt: str = ""
    negative_prompt: str = ""
    model: str = ""
    sampler: str = "Euler a"
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 0
    height: int = 0
    strength: float = 0.75
    batch_size: int = 1
    batch_count: int = 1
    subseed: int = -1
    subseed_strength: float = 0.0
    eta: float | None = None  # None = the sampler's default: 0 for DDIM, 1 for the ancestral ones
    resize_mode: str = "just resize"  # img2img: crop and resize | resize and fill | latent upscale
    image: np.ndarray | None = None  # HxWx3 or HxWx4 uint8
    mask: np.ndarray | None = None  # HxW uint8, 255 = repaint
    mask_blur: int = 4
    inpaint_padding: int = 32
    preview: bool = True
    clip_skip: int = 1  # 1 = the last CLIP layer, 2 = the one before
    vae: str = ""  # "" = the checkpoint's own
    hires: HiresParams | None = None
    upscale: UpscaleParams | None = None
    resolution: str = "exact"  # "auto": width/height or the image is the area (engine/autosize.py)
    inpaint_mode: str = "original"  # original | fill | expand | add | remove (engine/inpainting.py)
    mask_grow: int = 0  # px; -1 = auto
    mask_feather: int = 0  # px; -1 = auto
    result_alpha: str = "opaque"  # "mask": repainted pixels with alpha = the blend mask
    # WebUI reproduction (issue 15): the schedule type, and how noise is made (engine/noise.py).
    schedule_type: str = "Automatic"  # Automatic = the sampler's own spacing
    rng: str = "gpu"  # gpu | cpu | nv (NVIDIA's generator emulated on the CPU); the WebUI's default is GPU
    eta_noise_seed_delta: int = 0  # WebUI "Eta noise seed delta" (ENSD)
    seed_resize_from_w: int = 0  # WebUI "Resize seed from width/height"; 0 = off
    seed_resize_from_h: int = 0
    controls: list[ControlParams] = field(default_factory=list)
    regions: list[RegionParams] = field(default_factory=list)  # engine/regions.py; the base prompt covers the rest
    restore: RestoreParams | None = None  # img2img and upscale
    sampler_options: SamplerOptions | None = None  # the WebUI's Settings > Sampler parameters; None = its defaults


@dataclass
class JobOutput:
    images: list[np.ndarray]  # HxWx4 uint8 each
    seeds: list[int]
    parameters: dict[str, Any] = field(default_factory=dict)
    infotext: str = ""


class ProgressFn(Protocol):
    def __call__(
        self, step: int, total: int, stage: str, preview: np.ndarray | None, tile: int = 0, tiles: int = 0
    ) -> None: ...


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...
