"""A pipeline for the samplers written here (engine/ksampling.py).

jobs.py drives diffusers pipelines. For the samplers diffusers lacks (and the
ancestral samplers with a chosen eta) it uses this class instead: it takes
the same call arguments and runs the loop as the WebUI does with
k-diffusion. x starts at the first sigma (noise, or the encoded image plus
noise), the UNet is a denoiser D(x, sigma) -> x0 (engine/denoiser.py), and for
inpainting with an ordinary model D's estimate keeps the known image outside
the mask (the WebUI's way; diffusers re-noises the image instead, which needs
a scheduler). Encoding and decoding use the model's own VAE.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

from engine import ksampling, tiled
from engine.denoiser import Denoiser, Guidance, guided_unet

ENCODE_TILE = 1024  # pixels: larger inputs (hires passes) encode in tiles


class KPipeline:
    """txt2img without `image`, img2img with it, inpainting with `mask_image` too."""

    def __init__(self, model: Any, function: str, karras: bool, eta: float, check: Callable[[], None] | None = None):
        self.model = model  # a LoadedModel
        self.function = function
        self.karras = karras
        self.eta = eta
        self.check = check
        self.num_timesteps = 0  # read by the step callback, as on a diffusers pipeline

    def __call__(
        self, *, prompt_embeds, negative_prompt_embeds, num_inference_steps: int, guidance_scale: float,
        generator: list, output_type: str = "np", callback_on_step_end=None, pooled_prompt_embeds=None,
        negative_pooled_prompt_embeds=None, width: int | None = None, height: int | None = None, latents=None,
        image: Any = None, mask_image: Image.Image | None = None, strength: float = 1.0, control: Any = None, depth_map: np.ndarray | None = None, **_: Any,
    ) -> SimpleNamespace:
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self.model.base
        unet, device = pipe.unet, pipe._execution_device
        batch = len(generator)
        init = self._encode(image, generator[0]) if image is not None else None
        if init is not None:
            height, width = init.shape[2] * 8, init.shape[3] * 8
        assert width and height
        shape = (batch, 4, height // 8, width // 8)

        def noise():  # drawn on the CPU per image, so a seed means the same on every device
            return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32).to(device)

        guidance = Guidance(prompt_embeds, negative_prompt_embeds, guidance_scale, pooled_prompt_embeds,
                            negative_pooled_prompt_embeds)
        if pooled_prompt_embeds is not None:  # SDXL: original size, crop (0, 0), target size
            ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=prompt_embeds.dtype)
            guidance.time_ids = ids.repeat(batch, 1)
        extra = None
        keep = None
        if mask_image is not None:
            assert init is not None
            mask = self._mask(mask_image, width, height, device)
            if unet.config.in_channels == 9:  # inpainting model: mask + masked image as extra channels
                pixels = np.asarray(image.convert("RGB")) * (np.asarray(mask_image.convert("L")) < 128)[..., None]
                masked = self._encode(Image.fromarray(pixels.astype(np.uint8)), generator[0])
                extra = torch.cat([mask, masked], dim=1).repeat(batch, 1, 1, 1)
            else:
                keep = 1.0 - mask
        if unet.config.in_channels == 5:  # SD 2's depth model: the depth map as a fifth channel
            assert depth_map is not None, "a depth model needs the image's depth map"
            extra = depth_latent(depth_map, height // 8, width // 8, device).repeat(batch, 1, 1, 1)

        denoiser = Denoiser(dict(pipe.scheduler.config), lambda x, t: guided_unet(unet, x, t, guidance, extra, control),
                            unet.dtype, self.check)
        sigmas = denoiser.sigmas(num_inference_steps, self.karras)
        if init is not None:
            # img2img: the last steps of the schedule, as many as the strength asks for.
            sigmas = sigmas[num_inference_steps - min(num_inference_steps, max(1, int(num_inference_steps * strength))):]
            x0 = init.float().expand(batch, -1, -1, -1) if init.shape[0] == 1 else init.float()
            x = x0 + noise() * sigmas[0]
            if keep is not None:
                denoiser.known = (x0, keep)
        else:
            start = latents.to(device, torch.float32) if latents is not None else noise()
            x = start * sigmas[0]
        self.num_timesteps = len(sigmas) - 1
        if control is not None:  # ControlNet units (engine/control.py) know the steps of this pass
            control.schedule([denoiser.timestep(s) for s in sigmas[:-1] if s > 0])

        def progress(x, denoised, done: float) -> None:
            if callback_on_step_end is not None:
                step = min(self.num_timesteps, max(1, round(done * self.num_timesteps))) - 1
                callback_on_step_end(self, step, None, {"latents": x})

        with torch.inference_mode():
            x = ksampling.sample(self.function, denoiser, x, sigmas, noise, progress, self.eta)
            if keep is not None:
                x = denoiser.known[0] * keep + x * (1.0 - keep)
            if output_type == "latent":
                return SimpleNamespace(images=x.to(unet.dtype))
            return SimpleNamespace(images=decode_images(pipe.vae, x))

    def _encode(self, image: Any, generator):
        """A PIL image (or a list, one per image of the batch) -> scaled latents;
        a tensor is a latent already (hires fix's "Latent" upscaler)."""
        import torch

        pipe = self.model.base
        if isinstance(image, list):
            return torch.cat([self._encode(im, generator) for im in image])
        if not isinstance(image, Image.Image):
            return image.to(pipe._execution_device)
        rgb = np.asarray(image.convert("RGB"))
        return tiled.encode(pipe.vae, rgb, ENCODE_TILE, generator, pipe._execution_device, pipe.unet.dtype)

    @staticmethod
    def _mask(mask_image: Image.Image, width: int, height: int, device):
        """255 = repaint -> 1 x 1 x h/8 x w/8 of 0/1, as diffusers binarises and resizes it."""
        import torch

        small = mask_image.convert("L").resize((width // 8, height // 8), Image.NEAREST)
        return torch.from_numpy((np.asarray(small) >= 128).astype(np.float32))[None, None].to(device)


def depth_latent(depth: np.ndarray, h: int, w: int, device):
    """A depth map (near = bright) -> 1 x 1 x h x w in -1..1, as diffusers'
    StableDiffusionDepth2ImgPipeline.prepare_depth_map scales MiDaS's output."""
    import torch
    import torch.nn.functional as F

    d = torch.from_numpy(np.asarray(depth, np.float32).reshape(depth.shape[0], depth.shape[1], -1)[..., 0])
    d = F.interpolate(d[None, None], size=(h, w), mode="bicubic", align_corners=False)
    lo, hi = d.amin(), d.amax()
    d = 2.0 * (d - lo) / (hi - lo) - 1.0 if hi > lo else torch.zeros_like(d)
    return d.to(device)


def decode_images(vae, latents) -> np.ndarray:
    """Scaled latents -> N x H x W x 3 floats in 0..1 (what pipelines return as "np")."""
    import torch

    # SDXL's VAE overflows in float16 (its config says force_upcast): decode in float32.
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        with torch.inference_mode():
            decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift).sample
    finally:
        if upcast:
            vae.to(torch.float16)
    return ((decoded.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
