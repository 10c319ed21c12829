"""Where results go: new layers (never the painter's own), named and placed."""

from __future__ import annotations

from dataclasses import dataclass

from .regions import Rect


@dataclass
class LayerPlan:
    name: str
    rect: Rect  # where on the canvas
    rgba: bytes  # rect.width x rect.height x 4


@dataclass
class Placement:
    group: str | None  # a batch arrives as a group of layers
    layers: list[LayerPlan]


def short(prompt: str, limit: int = 40) -> str:
    text = " ".join(prompt.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def layer_name(kind: str, prompt: str, seed: int) -> str:
    label = {"txt2img": "Generated", "img2img": "Refined", "inpaint": "Inpainted", "upscale": "Upscaled"}.get(kind, kind)
    text = short(prompt)
    return f"{label}: {text} (seed {seed})" if text else f"{label} (seed {seed})"


def apply_mask_alpha(rgba: bytes, mask: bytes) -> bytes:
    """Transparent where the mask is 0; soft selections keep their softness."""
    out = bytearray(rgba)
    alpha = rgba[3::4]
    out[3::4] = bytes((a * m + 127) // 255 for a, m in zip(alpha, mask, strict=True))
    return bytes(out)


def plan(kind: str, prompt: str, seeds: list[int], images: list[bytes], rect: Rect, mask: bytes | None = None) -> Placement:
    """Layers for a finished job: one per image, grouped when there are several."""
    layers = []
    for seed, rgba in zip(seeds, images, strict=True):
        if mask is not None:
            rgba = apply_mask_alpha(rgba, mask)
        layers.append(LayerPlan(layer_name(kind, prompt, seed), rect, rgba))
    group = f"PaintBridge batch: {short(prompt, 30) or kind} ({len(layers)})" if len(layers) > 1 else None
    return Placement(group, layers)
