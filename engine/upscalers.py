"""Image upscalers: Real-ESRGAN-family models through spandrel, plus Lanczos.

spandrel (the loader ComfyUI and chaiNNer use) recognises the architecture
from the state dict. We read the weights ourselves (engine.weights) so that
pickled files only ever go through `torch.load(weights_only=True)`.

Models run tiled with overlap: each tile is computed with `overlap` pixels
of context on every side and only its core is kept, so the result has no
seams, and the tile size is halved on out-of-memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from engine import heap, runtime
from engine.errors import EngineError, JobCancelled
from engine.models import free_memory, is_out_of_memory, one_line
from engine.params import CancelFlag
from engine.registry import UPSCALER, ModelEntry, Registry
from engine.weights import load_weights, refused_pickle, unsafe_file

BUILTIN = {"Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}
MIN_TILE = 32
# A tile's output edge, image pixels: the model's working memory follows the
# output (its last convolutions run at the upscaled size), so a x4 model takes
# 192-pixel input tiles (the WebUI's ESRGAN default) and a x2 model 384.
OUTPUT_TILE = 768

TileProgress = Callable[[int, int], None]  # (tiles done, tiles in all)


@dataclass
class LoadedUpscaler:
    entry: ModelEntry
    model: Any  # spandrel ImageModelDescriptor
    scale: int


class Upscalers:
    """Keeps the last used upscaler model loaded."""

    def __init__(self, registry: Registry, device: str = "cpu", half: bool = False) -> None:
        self.registry = registry
        self.device = device
        self.half = half
        self._loaded: LoadedUpscaler | None = None

    def names(self) -> list[str]:
        return [e.name for e in self.registry.list(UPSCALER)] + list(BUILTIN)

    def resolve(self, name: str, field: str = "upscaler") -> ModelEntry | str:
        """An upscaler model entry, or the name of a built-in resampler."""
        if not name:
            models = self.registry.list(UPSCALER)
            return models[0] if models else "Lanczos"
        if name in BUILTIN:
            return name
        try:
            return self.registry.get(name, UPSCALER, field=field)
        except EngineError as exc:
            if exc.code != "unknown_model":
                raise
            # Name the resamplers too: "Latent" only where the hires fix takes it.
            have = self.names() + (["Latent"] if field.startswith("hires") else [])
            raise EngineError("unknown_model", f"no upscaler named {name!r} (have: {', '.join(have)})",
                              field=field) from None

    def load(self, entry: ModelEntry) -> LoadedUpscaler:
        if self._loaded is not None and self._loaded.entry == entry:
            return self._loaded
        import spandrel

        self._loaded = None
        try:
            descriptor = spandrel.ModelLoader().load_from_state_dict(load_weights(entry.path))
        except EngineError:
            raise
        except Exception as exc:
            if refused_pickle(exc) is not None:
                raise unsafe_file(entry.path, exc) from exc
            raise EngineError("model_load_failed", f"{entry.name} is not a supported upscaler: {one_line(exc)}") from exc
        if not isinstance(descriptor, spandrel.ImageModelDescriptor):
            raise EngineError("model_load_failed", f"{entry.name} is not an image upscaler")
        descriptor.eval().to(self.device)
        runtime.cpu_layout(descriptor.model, self.device)  # an ESRGAN x4 a third faster on the CPU
        if self.half and descriptor.supports_half:
            descriptor.half()
        self._loaded = LoadedUpscaler(entry, descriptor, int(descriptor.scale))
        return self._loaded

    def upscale(
        self,
        image: np.ndarray,
        size: tuple[int, int],
        name: str = "",
        tile: int = 0,
        overlap: int = 16,
        progress: TileProgress | None = None,
        cancel: CancelFlag | None = None,
    ) -> np.ndarray:
        """HxWx3 uint8 -> exactly `size` (w, h): the model's native scale,
        repeated until large enough, then a Lanczos resize to the target.
        `tile`: input pixels per tile; 0 = OUTPUT_TILE // the model's scale."""
        which = self.resolve(name)
        target_w, target_h = size
        if isinstance(which, str):
            return np.asarray(Image.fromarray(image).resize(size, BUILTIN[which]))
        upscaler = self.load(which)
        tile = tile or max(MIN_TILE, OUTPUT_TILE // upscaler.scale)
        current = image
        while current.shape[1] < target_w or current.shape[0] < target_h:
            current = self._run_tiled(upscaler, current, tile, overlap, progress, cancel)
        if current.shape[:2] != (target_h, target_w):
            current = np.asarray(Image.fromarray(current).resize(size, Image.LANCZOS))
        return current

    def _run_tiled(self, upscaler, image, tile, overlap, progress, cancel) -> np.ndarray:
        while True:
            try:
                return run_tiled(upscaler.model, upscaler.scale, image, tile, overlap, progress, cancel)
            except Exception as exc:
                if not is_out_of_memory(exc) or tile <= MIN_TILE:
                    raise
                free_memory()
                tile //= 2  # fits in less memory; overlap keeps it seamless
            finally:
                heap.trim()


def tile_starts(length: int, tile: int) -> list[int]:
    """Starts of tiles of `tile` covering `length`; the last one ends at the edge."""
    if length <= tile:
        return [0]
    count = math.ceil(length / tile)
    return [min(i * tile, length - tile) for i in range(count)]


def run_tiled(model, scale: int, image: np.ndarray, tile: int, overlap: int, progress=None, cancel=None) -> np.ndarray:
    """Apply an image-to-image model tile by tile; each tile sees `overlap`
    pixels of context around it, and only its core is written."""
    import torch

    h, w = image.shape[:2]
    param = next(model.model.parameters())
    source = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None]  # a writable copy
    out = np.empty((h * scale, w * scale, 3), np.uint8)
    ys, xs = tile_starts(h, tile), tile_starts(w, tile)
    total, done = len(ys) * len(xs), 0
    with torch.inference_mode():
        for y in ys:
            for x in xs:
                if cancel is not None and cancel.is_set():
                    raise JobCancelled()
                th, tw = min(tile, h), min(tile, w)
                y0, x0 = max(0, y - overlap), max(0, x - overlap)
                y1, x1 = min(h, y + th + overlap), min(w, x + tw + overlap)
                patch = source[:, :, y0:y1, x0:x1].to(param.device, param.dtype) / 255.0
                result = model(patch).float().clamp_(0, 1)
                core = result[0, :, (y - y0) * scale : (y - y0 + th) * scale, (x - x0) * scale : (x - x0 + tw) * scale]
                out[y * scale : (y + th) * scale, x * scale : (x + tw) * scale] = (
                    (core * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
                )
                done += 1
                if progress is not None:
                    progress(done, total)
    return out
