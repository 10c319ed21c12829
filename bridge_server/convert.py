"""Protocol <-> engine: the only place the two vocabularies meet."""

from __future__ import annotations

from dataclasses import asdict, fields

import numpy as np

from engine.params import ControlParams, HiresParams, JobOutput, JobParams, RegionParams, RestoreParams, UpscaleParams
from protocol import RawImage, Result
from protocol.fewstep import FewStepDefaults
from protocol.requests import JobRequest

_SHARED = [f.name for f in fields(JobParams)
           if f.name not in ("image", "mask", "hires", "upscale", "controls", "regions", "restore")]


def array_view(image: RawImage) -> np.ndarray:
    """A read-only numpy view over the received bytes (no copy)."""
    shape = (image.height, image.width) if image.channels == 1 else (image.height, image.width, image.channels)
    return np.frombuffer(image.data, dtype=np.uint8).reshape(shape)


def to_params(request: JobRequest) -> JobParams:
    params = JobParams(**{name: getattr(request, name) for name in _SHARED})
    params.image = array_view(request.image) if request.image is not None else None
    params.mask = array_view(request.mask) if request.mask is not None else None
    if request.hires is not None:
        params.hires = HiresParams(**asdict(request.hires))
    params.regions = [RegionParams(array_view(r.mask), r.prompt, r.negative_prompt, r.weight) for r in request.regions]
    if request.kind == "upscale":
        params.upscale = UpscaleParams(**asdict(request.upscale)) if request.upscale else UpscaleParams()
    params.controls = [
        ControlParams(**{f.name: getattr(unit, f.name) for f in fields(ControlParams) if f.name != "image"},
                      image=array_view(unit.image) if unit.image is not None else None)
        for unit in request.controls
    ]
    if request.restore is not None:
        params.restore = RestoreParams(**asdict(request.restore))
    return params


def few_step_defaults(profile) -> FewStepDefaults | None:
    """engine/fewstep.py's FewStep as the model listing sends it."""
    return FewStepDefaults(**asdict(profile)) if profile is not None else None


def to_raw(array: np.ndarray) -> RawImage:
    h, w = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    return RawImage(w, h, channels, np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def raw_view(array: np.ndarray) -> RawImage:
    """Like to_raw, without copying a contiguous uint8 array: its bytes are shared
    (a result's images are encoded once and never written to again)."""
    h, w = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    contiguous = np.ascontiguousarray(array, dtype=np.uint8)
    return RawImage(w, h, channels, memoryview(contiguous).cast("B"))


def infotexts(output: JobOutput) -> list[str]:
    """Each image's own WebUI text: a batch's images differ only by their seed."""
    if not output.seeds or f"Seed: {output.seeds[0]}," not in output.infotext:
        return [output.infotext] * len(output.images)
    first = f"Seed: {output.seeds[0]},"
    return [output.infotext.replace(first, f"Seed: {seed},", 1) for seed in output.seeds[: len(output.images)]]


def to_result(job_id: str, output: JobOutput) -> Result:
    return Result(
        job_id=job_id,
        images=[raw_view(im) for im in output.images],
        seeds=list(output.seeds),
        parameters=dict(output.parameters),
        infotext=output.infotext,
        infotexts=infotexts(output),
    )


def plot_result(job_id: str, cells: list[tuple[JobOutput, list[str]]]) -> Result:
    """A plot's outputs as one result: every image with its cell's labels."""
    result = to_result(job_id, cells[0][0])
    result.labels = [cells[0][1]] * len(result.images)
    for output, labels in cells[1:]:
        more = to_result(job_id, output)
        result.images += more.images
        result.seeds += more.seeds
        result.infotexts += more.infotexts
        result.labels += [labels] * len(more.images)
    return result
