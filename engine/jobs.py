"""The jobs: request + models -> images, with progress and cancel.

One entry point, `run_job`. Everything below it is a small step: resolve the
model and sampler (cheap checks first, so bad input fails before any model
work), prepare seeds and sizes, run a diffusers pipeline with a per-step
callback, and format the WebUI-style record of what was done.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from engine import masks
from engine.errors import EngineError, JobCancelled
from engine.models import LoadedModel, ModelManager, free_memory, is_out_of_memory
from engine.params import CancelFlag, JobOutput, JobParams, ProgressFn
from engine.preview import latent_preview
from engine.registry import CHECKPOINT, Registry
from engine.samplers import lookup, make_scheduler

PREVIEW_INTERVAL_S = 0.25  # at most four previews a second


@dataclass
class Engine:
    """Registry + resident model; the server owns one and calls it from one thread."""

    registry: Registry
    models: ModelManager

    def run(self, params: JobParams, progress: ProgressFn | None = None, cancel: CancelFlag | None = None) -> JobOutput:
        return run_job(self, params, progress, cancel)


def run_job(
    engine: Engine, params: JobParams, progress: ProgressFn | None = None, cancel: CancelFlag | None = None
) -> JobOutput:
    lookup(params.sampler)  # unknown sampler: fail before loading anything
    entry = engine.registry.get(params.model, CHECKPOINT) if params.model else engine.registry.default_checkpoint()
    if entry is None:
        raise EngineError("unknown_model", f"the models folder {engine.registry.root} has no checkpoint", field="model")
    if entry.inpainting and params.kind != "inpaint":
        raise EngineError("invalid_request", f"{entry.name} is an inpainting model; use it for inpaint jobs", field="model")
    _check_cancel(cancel)
    try:
        model = engine.models.get(entry)
        _check_cancel(cancel)
        if params.kind == "inpaint":
            return _inpaint(model, params, progress, cancel)
        return _generate(model, params, progress, cancel)
    except (EngineError, JobCancelled):
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            engine.models.unload()  # drop everything; the next job reloads
            raise EngineError("out_of_memory", "out of memory: try a smaller size or batch") from exc
        raise
    finally:
        free_memory() if engine.models.device.startswith("cuda") else None


def _check_cancel(cancel: CancelFlag | None) -> None:
    if cancel is not None and cancel.is_set():
        raise JobCancelled()


def resolve_seeds(seed: int, count: int) -> list[int]:
    """WebUI rule: -1 picks a random seed; image i of a batch uses seed + i."""
    base = random.randrange(2**32) if seed < 0 else seed
    return [(base + i) % 2**32 for i in range(count)]


def _size(params: JobParams, native: int) -> tuple[int, int]:
    if params.width and params.height:
        return params.width, params.height
    if params.image is not None:
        h, w = params.image.shape[:2]
    else:
        w = h = native
    # One side given: keep the image's (or a square's) aspect ratio.
    if params.width:
        return params.width, masks.round8(params.width * h / w)
    if params.height:
        return masks.round8(params.height * w / h), params.height
    return (masks.round8(w), masks.round8(h)) if params.image is not None else (w, h)


def _rgb(image: np.ndarray) -> Image.Image:
    """Model input: RGB; transparent pixels are flattened over white."""
    if image.shape[2] == 3:
        return Image.fromarray(image, "RGB")
    rgba = Image.fromarray(image, "RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _to_rgba(images: np.ndarray) -> list[np.ndarray]:
    """Pipeline output (N x H x W x 3 floats in 0..1) -> opaque RGBA uint8."""
    rgb = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    alpha = np.full((*rgb.shape[:3], 1), 255, np.uint8)
    return list(np.concatenate([rgb, alpha], axis=3))


class _StepReporter:
    """diffusers `callback_on_step_end`: progress, cancel and cheap previews."""

    def __init__(self, family: str, params: JobParams, progress: ProgressFn | None, cancel: CancelFlag | None):
        self.family = family
        self.want_preview = params.preview
        self.progress = progress
        self.cancel = cancel
        self.last_preview = 0.0

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        _check_cancel(self.cancel)
        if self.progress is not None:
            total = getattr(pipe, "num_timesteps", 0) or step + 1
            preview = None
            now = time.monotonic()
            if self.want_preview and step + 1 < total and now - self.last_preview >= PREVIEW_INTERVAL_S:
                self.last_preview = now
                preview = latent_preview(kwargs["latents"][0], self.family)
            self.progress(step + 1, total, "sampling", preview)
        return {}


def _common(model: LoadedModel, params: JobParams, seeds: list[int], progress, cancel) -> dict[str, Any]:
    import torch

    pipe_kwargs: dict[str, Any] = {
        "prompt": [params.prompt] * len(seeds),
        "negative_prompt": [params.negative_prompt] * len(seeds),
        "num_inference_steps": params.steps,
        "guidance_scale": params.cfg_scale,
        # Noise is drawn on the CPU, so a seed gives the same image on any device.
        "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds],
        "output_type": "np",
        "callback_on_step_end": _StepReporter(model.family, params, progress, cancel),
        "callback_on_step_end_tensor_inputs": ["latents"],
    }
    return pipe_kwargs


def _prepare(model: LoadedModel, task: str, sampler: str):
    pipe = model.pipeline(task)
    pipe.scheduler = make_scheduler(sampler, model.base.scheduler.config)
    return pipe


def _generate(model: LoadedModel, params: JobParams, progress, cancel) -> JobOutput:
    width, height = _size(params, model.entry.native_size)
    seeds = resolve_seeds(params.seed, params.batch_size)
    kwargs = _common(model, params, seeds, progress, cancel)
    if params.kind == "img2img":
        assert params.image is not None
        pipe = _prepare(model, "img2img", params.sampler)
        init = _rgb(params.image).resize((width, height), Image.LANCZOS)
        kwargs.update(image=init, strength=params.strength)
    else:
        pipe = _prepare(model, "txt2img", params.sampler)
        kwargs.update(width=width, height=height)
    images = _to_rgba(pipe(**kwargs).images)
    if params.kind == "img2img" and params.image is not None and not (params.width or params.height):
        # Worked at a multiple of 8; give the painter back the layer's exact size.
        h, w = params.image.shape[:2]
        if (w, h) != (width, height):
            images = [np.asarray(Image.fromarray(im).resize((w, h), Image.LANCZOS)) for im in images]
    return _output(model, params, images, seeds, width, height)


def _inpaint(model: LoadedModel, params: JobParams, progress, cancel) -> JobOutput:
    assert params.image is not None and params.mask is not None
    image, mask = params.image, params.mask
    h, w = image.shape[:2]
    box = masks.mask_box(mask)
    seeds = resolve_seeds(params.seed, params.batch_size)
    if box is None:  # nothing to repaint: the input comes back untouched
        rgba = image if image.shape[2] == 4 else np.dstack([image, np.full((h, w), 255, np.uint8)])
        return _output(model, params, [rgba.copy() for _ in seeds], seeds, w, h)
    x0, y0, x1, y1 = masks.expand_box(box, params.inpaint_padding, w, h)
    work_w, work_h = masks.working_size(x1 - x0, y1 - y0, model.entry.native_size)
    crop = _rgb(np.ascontiguousarray(image[y0:y1, x0:x1])).resize((work_w, work_h), Image.LANCZOS)
    crop_mask = Image.fromarray(np.ascontiguousarray(mask[y0:y1, x0:x1]), "L").resize((work_w, work_h), Image.LANCZOS)
    pipe = _prepare(model, "inpaint", params.sampler)
    kwargs = _common(model, params, seeds, progress, cancel)
    kwargs.update(image=crop, mask_image=crop_mask, strength=params.strength, width=work_w, height=work_h)
    generated = _to_rgba(pipe(**kwargs).images)
    alpha = masks.feather(mask, params.mask_blur)
    original = image if image.shape[2] == 4 else np.dstack([image, np.full((h, w), 255, np.uint8)])
    results = []
    for patch in generated:
        canvas = original.copy()
        patch = np.asarray(Image.fromarray(patch).resize((x1 - x0, y1 - y0), Image.LANCZOS))
        if original[..., 3].min() < 255:
            patch = patch.copy()
            patch[..., 3] = 255  # repainted pixels are opaque
        canvas[y0:y1, x0:x1] = masks.composite(original[y0:y1, x0:x1], patch, alpha[y0:y1, x0:x1])
        results.append(canvas)
    return _output(model, params, results, seeds, work_w, work_h)


def _output(model: LoadedModel, params: JobParams, images: list[np.ndarray], seeds: list[int], w: int, h: int) -> JobOutput:
    parameters: dict[str, Any] = {
        "kind": params.kind,
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "steps": params.steps,
        "sampler": lookup(params.sampler).name,
        "cfg_scale": params.cfg_scale,
        "seed": seeds[0],
        "width": w,
        "height": h,
        "model": model.entry.name,
        "model_family": model.family,
        "batch_size": len(seeds),
    }
    if params.kind != "txt2img":
        parameters["denoising_strength"] = params.strength
    if params.kind == "inpaint":
        parameters.update(mask_blur=params.mask_blur, inpaint_padding=params.inpaint_padding)
    return JobOutput(images, seeds, parameters, infotext(parameters))


def infotext(p: dict[str, Any]) -> str:
    """The WebUI's `parameters` text, so PNGs read back in WebUI tools."""
    fields = [
        f"Steps: {p['steps']}",
        f"Sampler: {p['sampler']}",
        f"CFG scale: {p['cfg_scale']:g}",
        f"Seed: {p['seed']}",
        f"Size: {p['width']}x{p['height']}",
        f"Model: {p['model']}",
    ]
    if "denoising_strength" in p:
        fields.append(f"Denoising strength: {p['denoising_strength']:g}")
    if "mask_blur" in p:
        fields.append(f"Mask blur: {p['mask_blur']}")
    lines = [p["prompt"]]
    if p["negative_prompt"]:
        lines.append(f"Negative prompt: {p['negative_prompt']}")
    lines.append(", ".join(fields))
    return "\n".join(lines)
