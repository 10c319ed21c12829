"""Live previews: latents -> small RGB by a fixed linear map.

This is the WebUI's "Approx cheap" preview: a 4x3 matrix per model family,
fitted to the VAE, applied to the latent. No VAE decode, so it costs
microseconds and runs every step without slowing sampling.
"""

from __future__ import annotations

import numpy as np

# Rows: latent channels; columns: R, G, B. From the WebUI (sd_samplers_common).
_SD15 = np.array(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]], dtype=np.float32
)
_SDXL = np.array(
    [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163], [-0.3730, -0.2499, -0.2088]],
    dtype=np.float32,
)
COEFFICIENTS = {"sd15": _SD15, "sd2": _SD15, "sdxl": _SDXL}


def latent_preview(latent, family: str) -> np.ndarray:
    """One latent (4xhxw torch tensor) -> hxwx4 uint8 RGBA at latent size."""
    lat = latent.detach().float().cpu().numpy()
    if lat.shape[0] != 4:
        lat = lat[:4]
    rgb = np.einsum("chw,cr->hwr", lat, COEFFICIENTS.get(family, _SD15))
    rgb = np.clip((rgb + 1.0) * 127.5, 0, 255).astype(np.uint8)
    alpha = np.full((*rgb.shape[:2], 1), 255, np.uint8)
    return np.concatenate([rgb, alpha], axis=2)


MAX_TAESD_PREVIEW = 64  # latent pixels per side (512 image pixels): previews are for watching, not keeping


def taesd_preview(decoder, latent) -> np.ndarray:
    """One scaled latent (4xhxw) -> RGBA uint8 through TAESD's decoder (engine/taesd.py), at
    up to 512 pixels a side: the picture as the VAE will paint it, colours and detail, where
    the linear map gives a blurred sketch."""
    import torch
    import torch.nn.functional as F

    z = latent.detach()[None, :4].to(decoder.device, decoder.dtype)
    h, w = z.shape[2:]
    if max(h, w) > MAX_TAESD_PREVIEW:
        scale = MAX_TAESD_PREVIEW / max(h, w)
        z = F.interpolate(z, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    with torch.inference_mode():
        rgb = decoder.decode(z).sample[0].float().clamp(-1, 1).add(1).mul(127.5).round().byte()
    rgb = rgb.permute(1, 2, 0).cpu().numpy()
    return np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)


class Previewer:
    """A job's previews: TAESD's decoder when the models folder has one for the
    model's family (as ComfyUI's "auto" picks it), else the linear map. TAESD
    costs real time on a CPU, so previews are spaced to keep them near a
    tenth of the job: after one that took d seconds the next waits 9 d (and
    never less than `interval`)."""

    def __init__(self, family: str, decoder=None, interval: float = 0.25) -> None:
        self.family, self.decoder, self.interval = family, decoder, interval
        self.last, self.cost = -float("inf"), 0.0

    def due(self) -> bool:
        import time

        return time.monotonic() - self.last >= max(self.interval, 9 * self.cost)

    def __call__(self, latent) -> np.ndarray:
        import time

        started = time.monotonic()
        out = taesd_preview(self.decoder, latent) if self.decoder is not None else latent_preview(latent, self.family)
        self.last = time.monotonic()
        self.cost = self.last - started
        return out
