"""Which Stable Diffusion family a single-file checkpoint belongs to.

Detection reads only tensor names (and one shape) from the safetensors
header, the way the WebUI and diffusers tell them apart, so no weights are
loaded to list a models folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CONFIG_ROOT = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class Family:
    name: str  # sd15 | sd2 | sdxl
    native_size: int
    label: str

    @property
    def config_dir(self) -> Path:
        return CONFIG_ROOT / self.name


SD15 = Family("sd15", 512, "SD 1.x")
SD2 = Family("sd2", 768, "SD 2.x")
SDXL = Family("sdxl", 1024, "SDXL")
FAMILIES = {f.name: f for f in (SD15, SD2, SDXL)}

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"


@dataclass(frozen=True)
class Detected:
    family: Family
    inpainting: bool  # UNet takes 9 input channels (latent + mask + masked latent)
    depth: bool = False  # SD 2's depth model (512-depth-ema): 5 channels, latent + depth, and its MiDaS


def detect(shapes: Mapping[str, Sequence[int]]) -> Detected | None:
    """Classify a checkpoint from its tensor names -> shapes; None if not SD."""
    if UNET_IN not in shapes:
        return None
    inpainting = len(shapes[UNET_IN]) == 4 and shapes[UNET_IN][1] == 9
    depth = len(shapes[UNET_IN]) == 4 and shapes[UNET_IN][1] == 5 and any(k.startswith("depth_model.") for k in shapes)
    if any(k.startswith("conditioner.embedders.1.model.") for k in shapes):
        if not any(k.startswith("conditioner.embedders.0.transformer.") for k in shapes):
            return None  # the SDXL refiner: image-to-image only, not supported yet
        return Detected(SDXL, inpainting)
    if any(k.startswith("cond_stage_model.model.") for k in shapes):
        return Detected(SD2, inpainting, depth)  # OpenCLIP ViT-H text encoder
    if any(k.startswith("cond_stage_model.transformer.") for k in shapes):
        return Detected(SD15, inpainting)
    return None


def looks_like_vae(shapes: Mapping[str, Sequence[int]]) -> bool:
    keys = set(shapes)
    return any(k.startswith(("encoder.conv_in", "first_stage_model.encoder.conv_in")) for k in keys) and not any(
        k.startswith("model.diffusion_model.") for k in keys
    )


def looks_like_lora(shapes: Mapping[str, Sequence[int]]) -> bool:
    return any(".lora_down." in k or ".lora_A." in k or k.startswith("lora_unet_") for k in shapes)


def looks_like_upscaler(shapes: Mapping[str, Sequence[int]]) -> bool:
    return any(k.startswith(("conv_first.", "model.0.", "body.0.", "params_ema.")) for k in shapes)
