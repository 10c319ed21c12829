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
