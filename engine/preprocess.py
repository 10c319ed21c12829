"""Preprocessors: turn a picture into a control image, on the server.

- depth: a monocular depth estimator through `transformers` (Depth Anything
  V2 or DPT), weights from the models folder's `annotators/` (never
  downloaded); near is bright, as the WebUI extension's depth maps are.
- canny: OpenCV's Canny (thresholds 100/200, the extension's defaults).
- lineart / scribble: from a painted layer of dark strokes on a light
  ground: inverted (the ControlNets want white lines on black); scribble
  is thresholded to pure black and white as well.
- tile: the image itself (the "tile"/"blur" ControlNets take the picture).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError

KINDS = ("none", "depth", "canny", "lineart", "scribble", "tile")
ANNOTATORS = "annotators"
DEPTH_TYPES = ("depth_anything", "dpt")  # transformers model_type of a depth estimator
CANNY_LOW, CANNY_HIGH = 100, 200  # the extension's canny defaults
SCRIBBLE_THRESHOLD = 128
DEPTH_HINT = (
    "put a depth estimator in transformers format (config.json, model.safetensors, preprocessor_config.json), "
    "e.g. the files of depth-anything/Depth-Anything-V2-Small-hf, in {folder}/depth-anything-v2-small/"
)

_lock = threading.Lock()
_estimators: dict[tuple[str, str], tuple[Any, Any]] = {}


def depth_folder(root: Path) -> Path | None:
    """The first folder under annotators/ holding a transformers depth estimator
    (Depth Anything preferred), with its weights as safetensors."""
    base = Path(root) / ANNOTATORS
    if not base.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink()):
        try:
            kind = json.loads((folder / "config.json").read_text("utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            continue
        if kind in DEPTH_TYPES and (folder / "model.safetensors").is_file():
            found.append((DEPTH_TYPES.index(kind), folder))
    return min(found)[1] if found else None


def check(kind: str, root: Path, field: str = "preprocess") -> None:
    """Refuse an unknown preprocessor or one whose weights are absent, before any work."""
    if kind not in KINDS:
        raise EngineError("invalid_request", f"{field} must be one of {', '.join(KINDS)}, got {kind!r}", field=field)
    if kind == "depth" and depth_folder(root) is None:
        folder = Path(root) / ANNOTATORS
        raise EngineError("unknown_model", "depth preprocessing has no weights: " + DEPTH_HINT.format(folder=folder),
                          field=field)


def run(kind: str, image: np.ndarray, root: Path, device: str = "cpu") -> np.ndarray:
    """HxWx3 uint8 -> the control image, HxWx3 uint8 of the same size."""
    check(kind, root)
    if kind in ("none", "tile"):
        return image
    if kind == "canny":
        import cv2

        edges = cv2.Canny(np.ascontiguousarray(image), CANNY_LOW, CANNY_HIGH)
        return np.repeat(edges[..., None], 3, axis=2)
    if kind in ("lineart", "scribble"):
        gray = np.asarray(image, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma
        inverted = 255.0 - gray
        if kind == "scribble":
            inverted = np.where(inverted >= SCRIBBLE_THRESHOLD, 255.0, 0.0)
        out = np.clip(inverted, 0, 255).round().astype(np.uint8)
        return np.repeat(out[..., None], 3, axis=2)
    return depth(image, root, device)


def _estimator(folder: Path, device: str):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    key = (str(folder), device)
    with _lock:
        if key not in _estimators:
            model = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True,
                                                                use_safetensors=True)
            processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
            _estimators.clear()  # one estimator resident
            _estimators[key] = (model.to(device).eval(), processor)
        return _estimators[key]


def depth(image: np.ndarray, root: Path, device: str = "cpu") -> np.ndarray:
    """Relative depth (near = bright), min-max normalised to 0..255, at the image's size."""
    import torch
    from PIL import Image

    check("depth", root, "model")
    folder = depth_folder(root)
    assert folder is not None
    try:
        model, processor = _estimator(folder, device)
    except Exception as exc:
        raise EngineError("model_load_failed", f"could not load the depth estimator in {folder.name}: "
                          f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}") from exc
    inputs = processor(images=Image.fromarray(image), return_tensors="pt")
    with torch.inference_mode():
        predicted = model(pixel_values=inputs["pixel_values"].to(device, model.dtype)).predicted_depth
        predicted = torch.nn.functional.interpolate(predicted[:, None].float(), size=image.shape[:2], mode="bicubic",
                                                    align_corners=False)[0, 0]
    lo, hi = float(predicted.min()), float(predicted.max())
    scaled = (predicted - lo) / (hi - lo) * 255.0 if hi > lo else torch.zeros_like(predicted)  # flat: no depth cue
    out = scaled.clamp(0, 255).round().to(torch.uint8).cpu().numpy()
    return np.repeat(out[..., None], 3, axis=2)


def preprocess_job(engine, params):
    """The `preprocess` job: the control image alone (so a painter can see and
    paint over it), at the image's size or fitted to width x height."""
    from engine.control import fit, rgb
    from engine.params import JobOutput

    unit = params.controls[0]
    source = rgb(unit.image if unit.image is not None else params.image)
    out = run(unit.preprocess, source, engine.registry.root, engine.models.device)
    if params.width and params.height:
        out = fit(out, params.width, params.height, unit.resize_mode)
    rgba = np.dstack([out, np.full(out.shape[:2], 255, np.uint8)])
    h, w = out.shape[:2]
    parameters = {"kind": "preprocess", "preprocess": unit.preprocess, "width": w, "height": h}
    return JobOutput([rgba], [0], parameters, f"Preprocessor: {unit.preprocess}, Size: {w}x{h}")
