"""Automatic resolution in the engine: `resolution: "auto"` requests.

The rule (which size to draw at) is protocol/resolution.py's, shared with the
plugin; this module carries it out with the engine's own passes:

- txt2img, area much larger than native: a first pass near the native pixel
  count, then the hires fix to the area ("Hires resize: WxH", as the WebUI's
  "Resize width/height to"), with the request's hires options or the
  WebUI's defaults (Latent, denoise 0.45);
- refine (img2img), area much larger: the refine at the first-pass size,
  then the upscaler to the area and a second img2img there at the hires
  denoise (never more than the painter's strength);
- area smaller than native: the model draws at native size, aspect kept,
  and the result is scaled down (Lanczos) to the area;
- inpaint: the context crop is worked at the rule's first-pass size
  (`inpaint_work_size`, called from the inpaint job itself); a crop much
  larger than native is then refined again at its own size
  (`refine_inpaint`), as a large refine is.

Each pass is an ordinary exact-size job through `run_job`, so every feature
(samplers, LoRAs, seeds, cancel) behaves as it does there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from engine import masks
from engine.params import CancelFlag, HiresParams, JobOutput, JobParams, ProgressFn
from protocol.resolution import HIRES, SizePlan, plan


@dataclass(frozen=True)
class SecondPass:
    """A large inpaint's refinement at the context crop's own size."""

    size: tuple[int, int]
    strength: float
    steps: int

DEFAULT_NATIVE = 512


def hires_target(hires: HiresParams, width: int, height: int) -> tuple[int, int]:
    """The hires fix's target: "Resize width/height to" when set, else x scale."""
    if hires.resize_width and hires.resize_height:
        return hires.resize_width, hires.resize_height
    if hires.resize_width:
        return hires.resize_width, masks.round8(hires.resize_width * height / width)
    if hires.resize_height:
        return masks.round8(hires.resize_height * width / height), hires.resize_height
    return masks.round8(width * hires.scale), masks.round8(height * hires.scale)


def inpaint_work_size(params: JobParams, width: int, height: int, native: int) -> tuple[int, int]:
    """The size an inpaint context crop of `width` x `height` is worked at."""
    if params.resolution == "auto":
        return plan(width, height, native).first
    return masks.working_size(width, height, native)  # protocol 2: always scaled to the native pixel count


def inpaint_second_pass(params: JobParams, width: int, height: int, native: int) -> SecondPass | None:
    """The hires-like second pass for an inpaint crop, when the rule asks for one."""
    if params.resolution != "auto" or plan(width, height, native).mode != HIRES:
        return None
    hires = params.hires or HiresParams()
    return SecondPass((masks.round8(width), masks.round8(height)), min(params.strength, hires.denoise),
                      hires.steps or params.steps)


def refine_inpaint(pipe: Any, kwargs: dict[str, Any], generated: list[np.ndarray], crop_rgb: np.ndarray,
                   alpha: np.ndarray, mask: np.ndarray, second: SecondPass) -> list[np.ndarray]:
    """Upscale each first-pass patch to the crop's size, blend it into the crop
    with the final alpha, and inpaint again there at the second pass's strength:
    the detail a first pass at native size cannot have."""
    size = second.size
    known = np.asarray(Image.fromarray(crop_rgb).resize(size, Image.LANCZOS))
    soft = np.asarray(Image.fromarray(masks.to_mask(alpha)).resize(size, Image.LANCZOS), np.float32) / 255.0
    inits = [Image.fromarray(masks.composite(known, np.asarray(Image.fromarray(im[..., :3]).resize(size, Image.LANCZOS)),
                                             soft)) for im in generated]
    reporter = kwargs["callback_on_step_end"]
    reporter.offset = max(1, int(kwargs["num_inference_steps"] * kwargs["strength"]))  # steps the first pass ran
    reporter.stage = "hires"
    steps = second.steps
    out = pipe(**{**kwargs, "image": inits if len(inits) > 1 else inits[0],
                  "mask_image": Image.fromarray(mask, "L").resize(size, Image.LANCZOS), "strength": second.strength,
                  "width": size[0], "height": size[1], "num_inference_steps": steps}).images
    from engine.jobs import _to_rgba

    return _to_rgba(out)


def area_of(params: JobParams, native: int) -> tuple[int, int]:
    """The painter's area: the image's size for refine, else width x height
    (a missing side keeps a square's or the image's aspect)."""
    if params.image is not None:
        h, w = params.image.shape[:2]
    else:
        w = h = native
    if params.width and params.height:
        return params.width, params.height
    if params.width:
        return params.width, max(8, round(params.width * h / w))
    if params.height:
        return max(8, round(params.height * w / h)), params.height
    return w, h


def _resize(images: list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    return [im if im.shape[1::-1] == size else np.asarray(Image.fromarray(im).resize(size, Image.LANCZOS))
            for im in images]


def _record(output: JobOutput, size_plan: SizePlan, infotext: Callable[[dict[str, Any]], str]) -> JobOutput:
    """Both sizes in `parameters` (and the WebUI text) for the painter."""
    p = output.parameters
    p["resolution"] = "auto"
    p["first_pass"] = list(size_plan.first)
    p["final_size"] = list(size_plan.final)
    if size_plan.scaled and not (p.get("hires_resize") and p["kind"] == "txt2img"):
        p["width"], p["height"] = size_plan.final
        p["first_pass_width"], p["first_pass_height"] = size_plan.first
    output.infotext = infotext(p)
    return output


def run_auto(engine: Any, params: JobParams, progress: ProgressFn | None, cancel: CancelFlag | None,
             run: Callable[..., JobOutput]) -> JobOutput:
    """Plan the sizes, run the passes as exact-size jobs, give back the area."""
    from engine.jobs import infotext

    entry = engine.check(params)  # names fail before any work, as for exact jobs
    native = (entry.native_size if entry is not None else 0) or DEFAULT_NATIVE
    exact = replace(params, resolution="exact")
    size_plan = plan(*area_of(params, native), native)
    first_w, first_h = size_plan.first
    if size_plan.mode == HIRES and params.kind == "txt2img":
        hires = params.hires or HiresParams()
        final_w, final_h = size_plan.final
        job = replace(exact, width=first_w, height=first_h,
                      hires=replace(hires, resize_width=masks.round8(final_w), resize_height=masks.round8(final_h)))
        output = run(engine, job, progress, cancel)
        output.images = _resize(output.images, size_plan.final)
        return _record(output, size_plan, infotext)
    output = run(engine, replace(exact, width=first_w, height=first_h, hires=None), progress, cancel)
    if size_plan.mode == HIRES:  # a large refine: upscale and refine again at the area
        output = _second_pass(engine, params, exact, output, size_plan, progress, cancel, run)
    output.images = _resize(output.images, size_plan.final)
    return _record(output, size_plan, infotext)


def _second_pass(engine: Any, params: JobParams, exact: JobParams, first: JobOutput, size_plan: SizePlan,
                 progress: ProgressFn | None, cancel: CancelFlag | None, run: Callable[..., JobOutput]) -> JobOutput:
    hires = params.hires or HiresParams()
    work = (masks.round8(size_plan.final[0]), masks.round8(size_plan.final[1]))
    upscaler = "Lanczos" if hires.upscaler == "Latent" else hires.upscaler  # the first pass is pixels here
    denoise = min(params.strength, hires.denoise)

    def report(step: int, total: int, stage: str, preview: Any, tile: int = 0, tiles: int = 0) -> None:
        if progress is not None:
            progress(step, total, "hires", preview, tile, tiles)

    images = []
    for image, seed in zip(first.images, first.seeds, strict=False):
        upscaled = engine.upscalers.upscale(np.ascontiguousarray(image[..., :3]), work, upscaler)
        job = replace(exact, image=upscaled, width=work[0], height=work[1], strength=denoise, seed=seed,
                      batch_size=1, batch_count=1, steps=hires.steps or params.steps, hires=None,
                      resize_mode="just resize", subseed_strength=0.0)
        images += run(engine, job, report, cancel).images
    first.images = images
    first.parameters.update(hires_resize=True, hires_width=work[0], hires_height=work[1], hires_upscaler=upscaler,
                            hires_upscale=round(work[0] / size_plan.first[0], 3), hires_steps=hires.steps,
                            hires_denoise=denoise)
    return first
