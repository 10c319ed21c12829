"""The jobs: request + models -> images, with progress and cancel.

One entry point, `run_job`. Everything below it is a small step: resolve the
model and sampler (cheap checks first, so bad input fails before any model
work), prepare seeds and sizes, run a diffusers pipeline with a per-step
callback, and format the WebUI-style record of what was done.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from engine import (
    autosize,
    colorfix,
    control,
    embeddings,
    inpainting,
    loras,
    masks,
    midas,
    preprocess,
    prompt_schedule,
    regions,
    restore,
    schedules,
    taesd,
    tiled,
    vaes,
)
from engine.conditioning import encode_prompts
from engine.errors import EngineError, JobCancelled
from engine.kpipeline import KPipeline, NoiseOptions, decode_images
from engine.models import LoadedModel, ModelManager, is_out_of_memory
from engine.noise import DEFAULT_RNG, INFOTEXT_RNG, check_source
from engine.params import CancelFlag, JobOutput, JobParams, ProgressFn, UpscaleParams
from engine.preview import Previewer
from engine.prompts import extract_loras
from engine.registry import CHECKPOINT, LORA, VAE, ModelEntry, Registry
from engine.samplers import lookup, recorded_options, resolve
from engine.supir_upscale import supir_entry, supir_restore
from engine.upscalers import Upscalers
from protocol import sampler_options

log = logging.getLogger("paintbridge")
PREVIEW_INTERVAL_S = 0.25  # at most four previews a second
NOTHING_TO_REPAINT = "the mask is all black: nothing to repaint (white = repaint)"


@dataclass
class Engine:
    """Registry + resident model; the server owns one and calls it from one thread."""

    registry: Registry
    models: ModelManager
    upscalers: Upscalers | None = None
    default_vae: str = ""  # the WebUI's "SD VAE" setting: for requests that name none
    controlnets: control.ControlNets | None = None

    def __post_init__(self) -> None:
        if self.upscalers is None:
            cuda = self.models.device.startswith("cuda")
            self.upscalers = Upscalers(self.registry, self.models.device, half=cuda)
        if self.controlnets is None:
            self.controlnets = control.ControlNets(self.models.device, self.models.dtype)

    def run(self, params: JobParams, progress: ProgressFn | None = None, cancel: CancelFlag | None = None) -> JobOutput:
        return run_job(self, params, progress, cancel)

    def check(self, params: JobParams) -> ModelEntry | None:
        return check_job(self, params)

    def load_default(self) -> LoadedModel | None:
        """Load the default checkpoint (the server's preload); None if there is none."""
        entry = self.registry.default_checkpoint()
        return load_checkpoint(self, entry, by_default=True) if entry is not None else None


def load_checkpoint(engine: Engine, entry: ModelEntry, by_default: bool) -> LoadedModel:
    """Load `entry`. A checkpoint chosen as the default that does not load is
    remembered as broken (with why) and the next one is tried: the default is
    the first checkpoint that loads, not the first name in the folder. One a
    request named fails as it is."""
    while True:
        try:
            return engine.models.get(entry)
        except EngineError as exc:
            if not by_default or exc.code not in ("model_load_failed", "unsafe_file"):
                raise
            engine.registry.mark_broken(entry, f"{exc.code}: {exc.message}")
            log.warning("default checkpoint %s does not load (%s); trying the next", entry.name, exc)
            following = engine.registry.default_checkpoint()
            if following is None:
                reasons = "; ".join(f"{name}: {why}" for name, (_, why) in engine.registry.broken.items())
                raise EngineError(exc.code, f"no checkpoint in the models folder loads ({reasons})",
                                  field="model") from exc
            entry = following


def check_job(engine: Engine, params: JobParams) -> ModelEntry | None:
    """Every check that needs no model work: names (sampler, checkpoint,
    upscaler, VAE, LoRAs) and their combination. The server runs it before
    queueing, so bad input fails at once. Returns the checkpoint to load, or
    None for an upscaler-only job."""
    if params.kind == "preprocess":  # the control image alone: no checkpoint
        if len(params.controls) != 1:
            raise EngineError("invalid_request", "a preprocess job takes one unit", field="controls")
        preprocess.check(params.controls[0].preprocess, engine.registry.root, "controls[0].preprocess")
        return None
    spec, _ = resolve(params.sampler, params.schedule_type)
    check_source(params.rng)
    if spec.cfgpp and params.kind == "upscale":
        raise EngineError("invalid_request", "DDIM CFG++ is not available for tiled upscaling", field="sampler")
    assert engine.upscalers is not None
    if params.hires is not None and params.hires.upscaler != "Latent":
        engine.upscalers.resolve(params.hires.upscaler, "hires.upscaler")
    if params.vae or engine.default_vae:
        engine.registry.get(params.vae or engine.default_vae, VAE, field="vae")
    for name, _ in extract_loras(params.prompt)[1]:
        engine.registry.get(name, LORA, field="prompt")
    if params.regions:
        regions.check_regions(params.regions)
        texts = [(extract_loras(params.prompt)[0], "prompt"), (params.negative_prompt, "negative_prompt")]
        texts += [(r.prompt, f"regions[{i}].prompt") for i, r in enumerate(params.regions)]
        texts += [(r.negative_prompt or "", f"regions[{i}].negative_prompt") for i, r in enumerate(params.regions)]
        for text, where in texts:  # a region is one weighted prompt already
            if len(prompt_schedule.composable_parts(text)) > 1 or prompt_schedule.composable_parts(text)[0][1] != 1.0:
                raise EngineError("invalid_request", "AND (composable prompts) does not combine with regions: give "
                                  "each part its own region", field=where)
    entry = engine.registry.get(params.model, CHECKPOINT) if params.model else None
    if params.restore is not None:
        if params.restore.supir:
            return supir_entry(engine, params, entry)
        restore.check(params.kind, lookup(params.sampler), (params.upscale or UpscaleParams()).denoise)
    if params.kind == "upscale":
        options = params.upscale or UpscaleParams()
        engine.upscalers.resolve(options.upscaler, "upscale.upscaler")
        if options.denoise == 0:  # the upscaler alone: no checkpoint needed
            control.check(engine.registry, params, None)  # units here are refused: nothing to steer
            return None
    entry = entry or inpainting.inpainting_checkpoint(engine.registry, params) or engine.registry.default_checkpoint()
    if entry is None:
        raise EngineError("unknown_model", f"the models folder {engine.registry.root} has no checkpoint", field="model")
    if params.kind == "inpaint" and params.mask is not None and not params.mask.any():
        raise EngineError("invalid_request", NOTHING_TO_REPAINT, field="mask")
    if params.kind == "upscale" and (params.upscale or UpscaleParams()).vae == "taesd" and entry.family is not None:
        _taesd_files(engine, entry.family.name)  # refused before queueing, not mid-job
    if entry.inpainting and params.kind != "inpaint":
        raise EngineError("invalid_request", f"{entry.name} is an inpainting model; use it for inpaint jobs", field="model")
    if entry.depth:  # SD 2's depth model: img2img (depth-to-image), its depth from its own MiDaS (engine/midas.py)
        if params.kind != "img2img" or params.hires is not None:
            raise EngineError("invalid_request", f"{entry.name} is a depth-to-image model; use it for img2img jobs",
                              field="model")
        if not midas.carries_midas(entry):  # a pruned file: the depth comes from annotators/
            preprocess.check("depth", engine.registry.root, "model")
    control.check(engine.registry, params, entry)
    return entry


def run_job(
    engine: Engine, params: JobParams, progress: ProgressFn | None = None, cancel: CancelFlag | None = None
) -> JobOutput:
    if params.resolution == "auto" and params.kind in ("txt2img", "img2img"):  # inpaint: in _inpaint
        return autosize.run_auto(engine, params, progress, cancel, run_job)
    if params.subseed < 0 and params.subseed_strength > 0:
        params = replace(params, subseed=resolve_seeds(-1, 1)[0])  # one random variation seed, reported
    entry = check_job(engine, params)  # bad input fails before loading anything
    if any(not r.mask.any() for r in params.regions):
        # An empty region paints nowhere: dropped, so the job runs exactly as it would without it.
        params = replace(params, regions=[r for r in params.regions if r.mask.any()])
    if entry is not None and not params.vae:
        # The request's VAE, else the server's default, else the checkpoint's own VAE file, else its baked-in one.
        own = engine.registry.vae_for(entry)
        params = replace(params, vae=engine.default_vae or (own.name if own else ""))
    if entry is None and params.kind == "preprocess":
        return _guarded(engine, lambda: preprocess.preprocess_job(engine, params))
    if entry is None:
        return _guarded(engine, lambda: _upscale(engine, None, params, progress, cancel))
    _check_cancel(cancel)
    wanted_loras = extract_loras(params.prompt)[1]

    def batch(model: LoadedModel, job: JobParams, report: ProgressFn | None = progress) -> JobOutput:
        _check_cancel(cancel)
        units = control.prepare(engine, model, job)  # ControlNets loaded, images preprocessed
        if job.kind == "inpaint":
            out = _inpaint(model, job, report, cancel, units)
        elif job.kind == "upscale":
            out = _upscale(engine, model, job, report, cancel, units)
        else:
            out = _generate(engine, model, job, report, cancel, units)
        if job.controls:
            out.parameters["controlnet"] = control.infotext_fields(job.controls)
            out.infotext = infotext(out.parameters)
        return out

    def work() -> JobOutput:
        model = load_checkpoint(engine, entry, by_default=not params.model)
        loras.activate(model, engine.registry, wanted_loras)
        vaes.activate(model, engine.models, engine.registry, params.vae)
        model.approx_decoder = _preview_decoder(engine, model) if params.preview else None
        embeddings.activate(model, engine.registry, " ".join([params.prompt, *(r.prompt for r in params.regions)]),
                            " ".join([params.negative_prompt, *(r.negative_prompt or "" for r in params.regions)]))
        if params.batch_count == 1 or params.kind == "upscale":
            return batch(model, params)
        # WebUI "Batch count": batches one after another, seeds continuing.
        first_seed = resolve_seeds(params.seed, 1)[0]
        first_subseed = max(0, params.subseed)
        outputs = []
        for b in range(params.batch_count):
            offset = b * params.batch_size
            job = replace(params, batch_count=1, seed=(first_seed + offset) % 2**32,
                          subseed=(first_subseed + offset) % 2**32)
            outputs.append(batch(model, job) if progress is None else
                           _in_batch(batch, model, job, progress, b + 1, params.batch_count))
        merged = outputs[0]
        for out in outputs[1:]:
            merged.images += out.images
            merged.seeds += out.seeds
        merged.parameters["batch_count"] = params.batch_count
        return merged

    return _guarded(engine, work)


def _in_batch(batch, model: LoadedModel, job: JobParams, progress: ProgressFn, number: int, count: int) -> JobOutput:
    """One batch of a batch count, its progress stages saying which ("sampling, batch 2/3")."""

    def report(step: int, total: int, stage: str, preview, *tiles: int) -> None:
        progress(step, total, f"{stage}, batch {number}/{count}", preview, *tiles)

    return batch(model, job, report)


def _guarded(engine: Engine, work) -> JobOutput:
    """Typed out-of-memory errors; caches freed so the next job can run."""
    try:
        return work()
    except (EngineError, JobCancelled):
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            engine.models.unload()  # drop everything; the next job reloads
            if engine.controlnets is not None:
                engine.controlnets.clear()
            raise EngineError("out_of_memory", "out of memory: try a smaller size or batch") from exc
        raise


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


def _opaque(image: np.ndarray) -> np.ndarray:
    """An HxWx3/4 image as RGBA with its alpha kept (or opaque)."""
    if image.shape[2] == 4:
        return image.copy()
    return np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])


def _to_rgba(images: np.ndarray) -> list[np.ndarray]:
    """Pipeline output (N x H x W x 3 floats in 0..1) -> opaque RGBA uint8."""
    rgb = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    alpha = np.full((*rgb.shape[:3], 1), 255, np.uint8)
    return list(np.concatenate([rgb, alpha], axis=3))


class _StepReporter:
    """diffusers `callback_on_step_end`: progress, cancel and cheap previews."""

    def __init__(self, family: str, params: JobParams, progress: ProgressFn | None, cancel: CancelFlag | None,
                 approx_decoder: Any = None):
        self.family = family
        self.want_preview = params.preview
        self.previewer = Previewer(family, approx_decoder, PREVIEW_INTERVAL_S)  # TAESD where the models folder has it
        self.progress = progress
        self.cancel = cancel
        self.last_preview = 0.0
        # Two-pass jobs (hires fix) count both passes in one progress bar.
        self.stage = "sampling"
        self.offset = 0
        self.grand_total = 0

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        _check_cancel(self.cancel)
        if self.progress is not None:
            total = getattr(pipe, "num_timesteps", 0) or step + 1
            preview = None
            now = time.monotonic()
            if self.want_preview and step + 1 < total and self.previewer.due():
                self.last_preview = now
                preview = self.previewer(kwargs["latents"][0])
            grand = max(self.grand_total, self.offset + total)
            self.progress(self.offset + step + 1, grand, self.stage, preview)
            if self.offset + step + 1 >= grand:
                self.progress(grand, grand, "decoding", None)  # the last step: the VAE runs next, say so
        return {}


def _common(model: LoadedModel, params: JobParams, seeds: list[int], progress, cancel) -> dict[str, Any]:
    import torch

    text, _ = extract_loras(params.prompt)
    schedule = None
    if not prompt_schedule.is_plain(text, params.negative_prompt):
        # [from:to:when], [a|b], AND: conditioning per step (engine/prompt_schedule.py), KPipeline only.
        schedule = prompt_schedule.build(model, text, params.negative_prompt, params.steps, params.clip_skip)
        conditioning = schedule.first()
    else:
        # CFG 1 or below runs no unconditional pass (Guidance.guided), so the negative prompt is not encoded.
        negative = params.negative_prompt if params.cfg_scale > 1 else None
        conditioning = encode_prompts(model, text, negative, params.clip_skip)
    pipe_kwargs: dict[str, Any] = {
        **conditioning.pipeline_kwargs(len(seeds)),
        "num_inference_steps": params.steps,
        "guidance_scale": params.cfg_scale,
        # Noise is drawn on the CPU, so a seed gives the same image on any device.
        "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds],
        "output_type": "np",
        "callback_on_step_end": _StepReporter(model.family, params, progress, cancel, model.approx_decoder),
        "callback_on_step_end_tensor_inputs": ["latents"],
    }
    if schedule is not None:
        pipe_kwargs["prompt_schedule"] = schedule
    return pipe_kwargs


def _prepare(model: LoadedModel, task: str, params: JobParams, seed: int, cancel: CancelFlag | None,
             region_control: regions.RegionControl | None = None):
    """The pipeline for a task: KPipeline, every sampler written in
    engine/ksampling.py, which is also where the per-step features act, inside
    its denoiser: ControlNet units (engine/control.py), regions
    (engine/regions.py), restore guidance (engine/restore.py) and SD 2's depth
    channel."""
    spec, schedule = resolve(params.sampler, params.schedule_type)
    if model.depth and (task != "img2img" or params.hires is not None):  # a .ckpt known only once loaded
        raise EngineError("invalid_request", f"{model.entry.name} is a depth-to-image model; use it for img2img jobs",
                          field="model")
    return KPipeline(model, spec, eta=spec.eta_for(params.eta), check=lambda: _check_cancel(cancel),
                     schedule=schedule, noise=noise_options(params, params.batch_size), regions=region_control,
                     restoring=params.restore if task != "txt2img" else None,  # restore guidance: engine/restore.py
                     options=params.sampler_options)


def noise_options(params: JobParams, count: int) -> NoiseOptions:
    """The request's variation seed, resize seed, RNG source and ENSD for KPipeline."""
    subseeds = resolve_seeds(params.subseed, count) if params.subseed_strength > 0 else None
    return NoiseOptions(subseeds, params.subseed_strength, (params.seed_resize_from_w, params.seed_resize_from_h),
                        params.rng, params.eta_noise_seed_delta)


def _generate(engine: Engine, model: LoadedModel, params: JobParams, progress, cancel,
              units: list[control.Prepared] | None = None) -> JobOutput:
    width, height = _size(params, model.native_size)
    seeds = resolve_seeds(params.seed, params.batch_size)
    if params.kind == "img2img" and params.strength == 0 and params.hires is None and params.image is not None:
        # Nothing to denoise: the layer comes back as it is, before any prompt is encoded. An RGBA
        # layer is returned as the very array it came in (read-only when it is the received bytes).
        images = [params.image if params.image.shape[2] == 4 else _opaque(params.image)] * len(seeds)
        return _output(model, params, images, seeds, *params.image.shape[1::-1])
    kwargs = _common(model, params, seeds, progress, cancel)
    region_control = _regions(model, params, lambda mask: _fit(mask, params.resize_mode, width, height, Image.BILINEAR))
    if params.hires is not None:
        return _hires(engine, model, params, seeds, kwargs, width, height, units or [], region_control)
    if units:
        kwargs["control"] = control.control_for(units, width, height)
    if params.kind == "img2img":
        assert params.image is not None
        pipe = _prepare(model, "img2img", params, seeds[0], cancel, region_control)
        kwargs.update(image=_init_image(model, params, width, height), strength=params.strength)
        if model.depth:  # depth-to-image: the depth of the picture at the working size
            source = np.asarray(_rgb(params.image).resize((width, height), Image.LANCZOS))
            kwargs["depth_map"] = midas.depth_map(model, source, engine.registry.root, engine.models.device)
    else:
        pipe = _prepare(model, "txt2img", params, seeds[0], cancel, region_control)
        kwargs.update(width=width, height=height)
    images = _to_rgba(pipe(**kwargs).images)
    if params.kind == "img2img" and params.image is not None and not (params.width or params.height):
        # Worked at a multiple of 8; give the painter back the layer's exact size.
        h, w = params.image.shape[:2]
        if (w, h) != (width, height):
            images = [np.asarray(Image.fromarray(im).resize((w, h), Image.LANCZOS)) for im in images]
    return _output(model, params, images, seeds, width, height)


def _regions(model: LoadedModel, params: JobParams, fit: regions.Fit,
             hires_steps: int | None = None) -> regions.RegionControl | None:
    """The job's regions, prompts encoded (scheduled over the job's steps, or a
    hires pass's) and masks fitted into the work area."""
    return regions.prepare(model, extract_loras(params.prompt)[0], params.negative_prompt, params.regions,
                           params.cfg_scale, params.clip_skip, fit, params.steps, hires_steps)


def _fit(source: Image.Image, mode: str, width: int, height: int, resample=Image.LANCZOS) -> Image.Image:
    """An image (the layer, or a region's mask) at the working size, by the WebUI's resize modes."""
    if mode == "crop and resize":  # cover the target, cut the overflow
        scale = max(width / source.width, height / source.height)
        w, h = round(source.width * scale), round(source.height * scale)
        big = source.resize((w, h), resample)
        return big.crop(((w - width) // 2, (h - height) // 2, (w - width) // 2 + width, (h - height) // 2 + height))
    if mode == "resize and fill":  # fit inside; the stretched image fills the margins
        scale = min(width / source.width, height / source.height)
        w, h = max(1, round(source.width * scale)), max(1, round(source.height * scale))
        canvas = source.resize((width, height), resample)
        canvas.paste(source.resize((w, h), resample), ((width - w) // 2, (height - h) // 2))
        return canvas
    return source.resize((width, height), resample)


def _init_image(model: LoadedModel, params: JobParams, width: int, height: int) -> Any:
    """img2img input at the working size, by the WebUI's resize modes."""
    assert params.image is not None
    source = _rgb(params.image)
    mode = params.resize_mode
    if mode in ("crop and resize", "resize and fill"):
        return _fit(source, mode, width, height)
    if mode == "latent upscale" and (source.width, source.height) != (width, height):
        import torch

        own = source.resize((masks.round8(source.width), masks.round8(source.height)), Image.LANCZOS)
        latent = tiled.encode(model.base.vae, np.asarray(own), 4096, torch.Generator("cpu").manual_seed(0),
                              model.base._execution_device, model.base.unet.dtype)
        return torch.nn.functional.interpolate(latent, size=(height // 8, width // 8), mode="bilinear")
    return source.resize((width, height), Image.LANCZOS)


def _hires(engine: Engine, model: LoadedModel, params: JobParams, seeds: list[int], kwargs: dict[str, Any],
           width: int, height: int, units: list[control.Prepared],
           region_control: regions.RegionControl | None = None) -> JobOutput:
    """WebUI hires fix: txt2img at the base size, upscale, img2img at the target size."""
    import torch

    hires = params.hires
    assert hires is not None and engine.upscalers is not None
    target_w, target_h = autosize.hires_target(hires, width, height)
    # The WebUI's hires pass: exactly its steps, of a schedule stretched by 1 / denoise.
    hires_steps = hires.steps or params.steps
    second = hires_steps if hires.denoise > 0 else 0
    reporter: _StepReporter = kwargs["callback_on_step_end"]
    reporter.grand_total = params.steps + second
    latent = hires.upscaler == "Latent"
    first = _prepare(model, "txt2img", params, seeds[0], reporter.cancel, region_control)(
        **{**kwargs, "output_type": "latent" if latent else "np"}, width=width, height=height,
        **({"control": control.control_for(units, width, height)} if units else {}),
    ).images
    reporter.offset, reporter.stage = params.steps, "hires"
    if latent:
        # "Latent" upscales the latent itself (bilinear, as the WebUI's default).
        init: Any = torch.nn.functional.interpolate(first, size=(target_h // 8, target_w // 8), mode="bilinear")
    else:
        if reporter.progress is not None:  # the upscaler model can take a while: say what runs
            reporter.progress(params.steps, reporter.grand_total, "hires upscaling", None)
        images = [engine.upscalers.upscale(im[..., :3], (target_w, target_h), hires.upscaler) for im in _to_rgba(first)]
        init = [Image.fromarray(im) for im in images]
    if second == 0:  # denoise 0: the upscaled first pass is the result
        out = _to_rgba(decode_images(model.base.vae, init)) if latent else [np.asarray(im.convert("RGBA")) for im in init]
    else:
        if region_control is not None and region_control.schedule is not None:  # the prompts over the hires steps
            region_control = _regions(model, params, lambda mask: _fit(mask, params.resize_mode, width, height,
                                                                       Image.BILINEAR), hires_steps)
        pipe = _prepare(model, "img2img", params, seeds[0], reporter.cancel, region_control)  # masks scale with the latent
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]  # the WebUI reuses the seed
        if units:  # the second pass sees the control image at the target size
            kwargs = {**kwargs, "control": control.control_for(units, target_w, target_h, hires=True)}
        if "prompt_schedule" in kwargs:  # the hires pass schedules the prompt over its own steps
            text = extract_loras(params.prompt)[0]
            kwargs = {**kwargs, "prompt_schedule": prompt_schedule.build(
                model, text, params.negative_prompt, params.steps, params.clip_skip, hires_steps=hires_steps)}
        out = _to_rgba(pipe(**{**kwargs, "generator": generators, "num_inference_steps": hires_steps},
                            image=init, strength=hires.denoise, fixed_steps=True).images)
    result = _output(model, params, out, seeds, width, height)
    result.parameters.update(hires_upscale=hires.scale, hires_upscaler=hires.upscaler, hires_steps=hires.steps,
                             hires_width=target_w, hires_height=target_h, denoising_strength=hires.denoise)
    if hires.resize_width or hires.resize_height:
        result.parameters["hires_resize"] = True  # the WebUI writes "Hires resize: WxH" then
    result.infotext = infotext(result.parameters)
    return result


def _upscale(engine: Engine, model: LoadedModel | None, params: JobParams, progress, cancel,
             units: list[control.Prepared] | None = None) -> JobOutput:
    """Upscaler model to the exact target, then optional tiled img2img (MultiDiffusion)."""
    assert params.image is not None and engine.upscalers is not None
    options = params.upscale or UpscaleParams()
    h, w = params.image.shape[:2]
    base_w, base_h = (w, h) if options.keep_size or not params.width else (params.width, params.height or h)
    target = (max(1, round(base_w * options.scale)), max(1, round(base_h * options.scale)))
    rgb = np.asarray(_rgb(params.image))

    def tiles_done(done: int, total: int) -> None:
        if progress is not None:
            progress(done, total, "upscaling", None, done, total)

    upscaled = engine.upscalers.upscale(rgb, target, options.upscaler, progress=tiles_done, cancel=cancel)
    seeds = resolve_seeds(params.seed, 1)
    supir = params.restore.supir if params.restore is not None else ""
    extra: dict[str, Any] = {}
    color_fix = "none"
    vae_fields: dict[str, str] = {}
    if supir:
        assert model is not None
        upscaled, extra = supir_restore(engine, model, params, upscaled, seeds[0], progress, cancel)
    elif options.denoise > 0:
        assert model is not None
        work = (max(64, target[0] // 8 * 8), max(64, target[1] // 8 * 8))
        source = upscaled if work == target else np.asarray(Image.fromarray(upscaled).resize(work, Image.LANCZOS))

        def report(step: int, steps: int, tile: int, tiles: int) -> None:
            if progress is not None:
                progress(step, steps, "tiled diffusion", None, tile, tiles)

        vaes = approx_vaes(engine, model, options.vae)
        if vaes is not None:  # another VAE than the model's: as the WebUI records its "VAE type for decode/encode"
            vae_fields = {"vae_decoder": "TAESD", **({"vae_encoder": "TAESD"} if vaes[0] is not model.base.vae else {})}
        upscaled = tiled.tiled_img2img(
            model, params.sampler, source, params.prompt, params.negative_prompt, params.steps, options.denoise,
            params.cfg_scale, seeds[0], options.tile, options.overlap, options.tile_batch, options.vae_tile, report,
            cancel, params.clip_skip, params.eta, params.schedule_type,
            control.control_for(units, *work) if units else None,
            _regions(model, params, lambda mask: mask.resize(work, Image.BILINEAR)),
            params.restore, params.sampler_options, vaes,
        )
        color_fix = colorfix.resolve(options.color_fix, supir=False)
        # The upscaler's colours under the new detail (engine/colorfix.py).
        upscaled = colorfix.apply(color_fix, upscaled, source, model.base._execution_device)
        if work != target:
            upscaled = np.asarray(Image.fromarray(upscaled).resize(target, Image.LANCZOS))
    alpha = None
    if params.image.shape[2] == 4:
        alpha = np.asarray(Image.fromarray(np.ascontiguousarray(params.image[..., 3])).resize(target, Image.LANCZOS))
    rgba = np.dstack([upscaled, alpha if alpha is not None else np.full(upscaled.shape[:2], 255, np.uint8)])
    parameters: dict[str, Any] = {
        "kind": "upscale", "prompt": params.prompt, "negative_prompt": params.negative_prompt,
        "steps": params.steps, "sampler": lookup(params.sampler).name, "cfg_scale": params.cfg_scale,
        "seed": seeds[0], "width": target[0], "height": target[1],
        "model": model.entry.name if model else "", "upscale_by": options.scale,
        "upscaler": options.upscaler or _default_upscaler(engine), "denoising_strength": options.denoise,
        "tile": options.tile, "overlap": options.overlap, "tile_batch": options.tile_batch,
        **regions.infotext_fields(params.regions),
        **(extra if supir else restore.parameters(params.restore)),
        **({"color_fix": color_fix} if color_fix != "none" else {}), **vae_fields,
        **(_recorded_options(params, False) if options.denoise > 0 and not supir else {}),
    }
    return JobOutput([rgba], seeds, parameters, infotext(parameters))


def _preview_decoder(engine: Engine, model: LoadedModel) -> Any:
    """TAESD for previews, where the models folder has one for the family (engine/preview.py)."""
    files = taesd.find(engine.registry.root, model.family)
    if files is None:
        return None
    try:
        return taesd.load(files, model.base._execution_device, model.base.vae.dtype)
    except EngineError as exc:  # a broken file costs the previews their detail, not the job
        log.warning("TAESD previews off: %s", exc)
        return None


def _taesd_files(engine: Engine, family: str) -> taesd.TaesdFiles:
    files = taesd.find(engine.registry.root, family)
    if files is None:
        raise EngineError("invalid_request", f"upscale.vae 'taesd': no {taesd.PREFIX.get(family, 'taesd')}_decoder "
                          f"in {engine.registry.root}/VAE-approx (or vae_approx/, taesd/)", field="upscale.vae")
    return files


def approx_vaes(engine: Engine, model: LoadedModel, which: str) -> tuple[Any, Any] | None:
    """`upscale.vae: "taesd"`: TAESD from the models folder decodes (and encodes, where its
    encoder is there too; else the checkpoint's VAE encodes)."""
    if which != "taesd":
        return None
    files = _taesd_files(engine, model.family)
    pipe = model.base
    approx = taesd.load(files, pipe._execution_device, pipe.vae.dtype)
    return (approx if files.can_encode else pipe.vae), approx


def _default_upscaler(engine: Engine) -> str:
    assert engine.upscalers is not None
    which = engine.upscalers.resolve("")
    return which if isinstance(which, str) else which.name


def _inpaint(model: LoadedModel, params: JobParams, progress, cancel,
             units: list[control.Prepared] | None = None) -> JobOutput:
    assert params.image is not None and params.mask is not None
    image, mask = params.image, params.mask
    h, w = image.shape[:2]
    # Soft masks (issue 13): the selection grown and feathered; it is both what is repainted and the blend.
    soft = params.mask_grow != 0 or params.mask_feather != 0
    blend = None
    if soft:
        grow, feather = masks.resolve_grow_feather(mask, params.mask_grow, params.mask_feather, params.strength)
        blend = masks.soft_mask(mask, grow, feather)
        mask = masks.to_mask(blend)
        params = replace(params, mask_grow=grow, mask_feather=feather)
    if params.inpaint_mode == "remove" and not extract_loras(params.prompt)[0].strip():
        params = replace(params, prompt=f"{inpainting.REMOVE_PROMPT} {params.prompt}".strip())
    box = masks.mask_box(mask)
    seeds = resolve_seeds(params.seed, params.batch_size)
    if box is None:  # Engine.check refuses this before queueing; a direct caller gets the same answer
        raise EngineError("invalid_request", NOTHING_TO_REPAINT, field="mask")
    x0, y0, x1, y1 = masks.expand_box(box, params.inpaint_padding, w, h)
    work_w, work_h = autosize.inpaint_work_size(params, x1 - x0, y1 - y0, model.native_size)
    crop_rgba = np.ascontiguousarray(image[y0:y1, x0:x1])
    crop_rgb = np.asarray(_rgb(crop_rgba))
    unknown = crop_rgba[..., 3] == 0 if crop_rgba.shape[2] == 4 else None
    crop_rgb = inpainting.prefill(crop_rgb, mask[y0:y1, x0:x1], params.inpaint_mode, unknown, params.strength)
    crop = Image.fromarray(crop_rgb).resize((work_w, work_h), Image.LANCZOS)
    crop_mask = Image.fromarray(np.ascontiguousarray(mask[y0:y1, x0:x1]), "L").resize((work_w, work_h), Image.LANCZOS)
    region_control = _regions(model, params, lambda m: m.crop((x0, y0, x1, y1)).resize((work_w, work_h), Image.BILINEAR))
    pipe = _prepare(model, "inpaint", params, seeds[0], cancel, region_control)
    kwargs = _common(model, params, seeds, progress, cancel)
    if params.strength == 0:  # nothing to repaint
        images = [np.zeros_like(_opaque(image)) if params.result_alpha == "mask" else _opaque(image) for _ in seeds]
        return _output(model, params, images, seeds, w, h)
    kwargs.update(image=crop, mask_image=crop_mask, strength=params.strength, width=work_w, height=work_h)
    if units:  # the control image fitted to the whole image, then the same crop as the image's
        kwargs["control"] = control.control_for(units, work_w, work_h, box=(x0, y0, x1, y1), frame=(w, h))
    generated = _to_rgba(pipe(**kwargs).images)
    if blend is not None:
        alpha = blend[y0:y1, x0:x1]
    else:
        # Feather only around the repainted box (with the blur's reach), not the whole layer: three float32
        # copies of a 16384^2 mask would be 3 GiB for a selection of a few hundred pixels.
        fx0, fy0, fx1, fy1 = masks.expand_box((x0, y0, x1, y1), 3 * params.mask_blur + 2, w, h)
        near = masks.feather(np.ascontiguousarray(mask[fy0:fy1, fx0:fx1]), params.mask_blur)
        alpha = near[y0 - fy0:y1 - fy0, x0 - fx0:x1 - fx0]
    second = autosize.inpaint_second_pass(params, x1 - x0, y1 - y0, model.native_size)
    if second is not None:  # a large selection, auto resolution: refine again at the crop's own size
        generated = autosize.refine_inpaint(pipe, kwargs, generated, crop_rgb, alpha, mask[y0:y1, x0:x1], second)
    original = image if image.shape[2] == 4 else np.dstack([image, np.full((h, w), 255, np.uint8)])
    results = []
    for patch in generated:
        patch = np.asarray(Image.fromarray(patch).resize((x1 - x0, y1 - y0), Image.LANCZOS))
        if params.result_alpha == "mask":  # layer-ready: the new pixels, alpha = the blend mask
            canvas = np.zeros_like(original)
            canvas[y0:y1, x0:x1] = masks.layer(patch, alpha)
            results.append(canvas)
            continue
        canvas = original.copy()
        if original[..., 3].min() < 255:
            patch = patch.copy()
            patch[..., 3] = 255  # repainted pixels are opaque
        canvas[y0:y1, x0:x1] = masks.composite(original[y0:y1, x0:x1], patch, alpha)
        results.append(canvas)
    output = _output(model, params, results, seeds, w, h)  # Size: the result's, so --from-png makes the same
    if params.resolution == "auto":  # both sizes for the painter: the crop's working size, the image's
        output.parameters.update(first_pass=[work_w, work_h], final_size=[w, h])
        if second is not None:
            output.parameters.update(hires_resize=True, hires_width=second.size[0], hires_height=second.size[1],
                                     hires_upscale=round(second.size[0] / work_w, 3), hires_steps=second.steps,
                                     hires_upscaler="Lanczos", hires_denoise=second.strength)
            output.infotext = infotext(output.parameters)
    return output


def _output(model: LoadedModel, params: JobParams, images: list[np.ndarray], seeds: list[int], w: int, h: int) -> JobOutput:
    spec, schedule = resolve(params.sampler, params.schedule_type)
    parameters: dict[str, Any] = {
        "kind": params.kind,
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "steps": params.steps,
        "sampler": spec.name,
        "cfg_scale": params.cfg_scale,
        "seed": seeds[0],
        "width": w,
        "height": h,
        "model": model.entry.name,
        "model_family": model.family,
        "batch_size": len(seeds),
        "clip_skip": params.clip_skip,
    }
    if params.vae:
        parameters["vae"] = params.vae
    if params.resolution == "auto":
        parameters["resolution"] = "auto"
    if params.eta is not None and spec.eta is not None and params.eta != spec.eta:
        parameters["eta"] = params.eta  # as the WebUI: only when not the sampler's default
    if spec.function and not spec.timesteps and spec.function not in ("sample_dpm_fast", "sample_dpm_adaptive"):
        parameters["schedule_type"] = schedule  # as the WebUI 1.9+ writes it, never "Automatic"
    if params.subseed_strength > 0:
        parameters.update(subseed=params.subseed, subseed_strength=params.subseed_strength)
    if params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0:
        parameters["seed_resize_from"] = (params.seed_resize_from_w, params.seed_resize_from_h)
    if params.rng != DEFAULT_RNG:
        parameters["rng"] = params.rng
    if params.eta_noise_seed_delta and spec.uses_ensd and spec.eta_for(params.eta) != 0:
        parameters["ensd"] = params.eta_noise_seed_delta
    if params.kind == "img2img" and params.resize_mode != "just resize":
        parameters["resize_mode"] = params.resize_mode
    if params.kind != "txt2img":
        parameters["denoising_strength"] = params.strength
    if params.kind == "inpaint":
        parameters.update(mask_blur=params.mask_blur, inpaint_padding=params.inpaint_padding)
        if params.mask_grow or params.mask_feather:
            parameters.update(mask_grow=params.mask_grow, mask_feather=params.mask_feather)
        if params.inpaint_mode != "original":
            parameters["inpaint_mode"] = params.inpaint_mode
    parameters.update(regions.infotext_fields(params.regions))
    parameters.update(restore.parameters(params.restore))
    parameters.update(_recorded_options(params, params.kind == "txt2img"))
    return JobOutput(images, seeds, parameters, infotext(parameters))


def _recorded_options(params: JobParams, txt2img: bool) -> dict[str, Any]:
    """The WebUI's sampler parameters this job used away from their defaults, for its record."""
    spec, schedule = resolve(params.sampler, params.schedule_type)
    automatic = schedules.canonical(params.schedule_type or "Automatic") == "Automatic"
    recorded = recorded_options(spec, schedule, automatic, params.sampler_options, txt2img)
    return {"sampler_options": recorded} if recorded else {}


def _quote(value: str) -> str:
    """As the WebUI: values with separators are written as JSON strings."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:"\n') else value


def infotext(p: dict[str, Any]) -> str:
    """The WebUI's `parameters` text, so PNGs read back in WebUI tools."""
    if p["kind"] == "upscale" and not p["denoising_strength"]:
        return f"Size: {p['width']}x{p['height']}, Upscale by: {p['upscale_by']:g}, Upscaler: {p['upscaler']}"
    fields = [
        f"Steps: {p['steps']}",
        f"Sampler: {p['sampler']}",
        f"CFG scale: {p['cfg_scale']:g}",
        f"Seed: {p['seed']}",
        f"Size: {p['width']}x{p['height']}",
        f"Model: {_quote(p['model'])}",
    ]
    if "eta" in p:
        fields.append(f"{'Eta DDIM' if p['sampler'] == 'DDIM' else 'Eta'}: {p['eta']:g}")
    if p.get("schedule_type"):
        fields.insert(2, f"Schedule type: {p['schedule_type']}")
    if p.get("subseed_strength"):
        fields += [f"Variation seed: {p['subseed']}", f"Variation seed strength: {p['subseed_strength']:g}"]
    if p.get("seed_resize_from"):
        fields.append("Seed resize from: {}x{}".format(*p["seed_resize_from"]))
    if p.get("rng"):
        fields.append(f"RNG: {INFOTEXT_RNG[p['rng']]}")
    if p.get("ensd"):
        fields.append(f"ENSD: {p['ensd']}")
    if p.get("vae"):
        fields.append(f"VAE: {_quote(p['vae'])}")
    # The WebUI's "VAE type for encode/decode" (Full | TAESD), written where it is not Full.
    fields += [f"{label}: {p[key]}" for key, label in (("vae_encoder", "VAE Encoder"), ("vae_decoder", "VAE Decoder"))
               if p.get(key)]
    if p.get("clip_skip", 1) > 1:
        fields.append(f"Clip skip: {p['clip_skip']}")
    if "denoising_strength" in p:
        fields.append(f"Denoising strength: {p['denoising_strength']:g}")
    if "mask_blur" in p:
        fields.append(f"Mask blur: {p['mask_blur']}")
    if "first_pass_width" in p:
        fields.append(f"First pass size: {p['first_pass_width']}x{p['first_pass_height']}")
    if p.get("hires_resize"):
        fields.append(f"Hires resize: {p['hires_width']}x{p['hires_height']}")
    elif "hires_upscale" in p:
        fields.append(f"Hires upscale: {p['hires_upscale']:g}")
    if "hires_upscale" in p:
        if p["hires_steps"]:
            fields.append(f"Hires steps: {p['hires_steps']}")
        fields.append(f"Hires upscaler: {_quote(p['hires_upscaler'])}")
    if "upscale_by" in p:
        fields += [f"Upscale by: {p['upscale_by']:g}", f"Upscaler: {p['upscaler']}"]
        if p["denoising_strength"] and "supir" not in p:
            tiled_text = f"MultiDiffusion, tile {p['tile']}, overlap {p['overlap']}"
            fields.append(f"Tiled Diffusion: {_quote(tiled_text)}")  # quoted (commas), as the WebUI writes such values
        if p.get("color_fix", "none") != "none":
            fields.append(f"Color fix: {colorfix.LABELS[p['color_fix']]}")
    for key, value in p.get("controlnet", {}).items():  # as the WebUI's ControlNet extension writes them
        fields.append(f"{key}: {_quote(value)}")
    i = 1
    while f"region_{i}_prompt" in p:  # regions' prompts (their masks are pixels: not in the text)
        fields.append(f"Region {i} prompt: {_quote(p[f'region_{i}_prompt'])}")
        if f"region_{i}_negative_prompt" in p:
            fields.append(f"Region {i} negative prompt: {_quote(p[f'region_{i}_negative_prompt'])}")
        if f"region_{i}_weight" in p:
            fields.append(f"Region {i} weight: {p[f'region_{i}_weight']:g}")
        i += 1
    fields += restore.infotext_fields(p)
    fields += sampler_options.infotext_fields(p.get("sampler_options", {}))
    lines = [p["prompt"]]
    if p["negative_prompt"]:
        lines.append(f"Negative prompt: {p['negative_prompt']}")
    lines.append(", ".join(fields))
    return "\n".join(lines)
