"""Preprocessors: turn a picture into a control image, on the server.

- depth: a monocular depth estimator through `transformers` (Depth Anything
  V2 or DPT), weights from the models folder's `annotators/` (never
  downloaded); near is bright, as the WebUI extension's depth maps are.
- canny: OpenCV's Canny (thresholds 100/200, the extension's defaults).
- lineart / scribble: from a painted layer of dark strokes on a light
  ground: inverted (the ControlNets want white lines on black); scribble
  is thresholded to pure black and white as well.
- tile: the image itself (the "tile"/"blur" ControlNets take the picture).
- normal: a normal map from the depth estimate, as the WebUI extension's
  `normal_midas`: the depth's Sobel gradients as x and y, a constant 2*pi as
  z, normalised; where the depth is below 10% of its range (background) the
  normal faces the viewer.
- softedge: HED soft edges (engine/softedge.py), ControlNet 1.1's weights
  from `annotators/ControlNetHED.pth`.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError

KINDS = ("none", "depth", "canny", "lineart", "scribble", "tile", "normal", "softedge")
NORMAL_Z = 2.0 * np.pi  # the extension's `a`: how flat a given depth slope looks
NORMAL_BACKGROUND = 0.1  # the extension's `bg_th`, on the depth normalised to 0..1
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
    folder = Path(root) / ANNOTATORS
    if kind in ("depth", "normal") and depth_folder(root) is None:
        raise EngineError("unknown_model", f"{kind} preprocessing has no weights: " + DEPTH_HINT.format(folder=folder),
                          field=field)
    if kind == "softedge":
        from engine import softedge

        if softedge.weights_file(folder) is None:
            raise EngineError("unknown_model", "softedge preprocessing has no weights: " + softedge.HINT.format(folder=folder),
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
    if kind == "normal":
        return normal(image, root, device)
    if kind == "softedge":
        from engine import softedge

        return softedge.softedge(image, Path(root) / ANNOTATORS, device)
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

    scaled = torch.from_numpy(relative_depth(image, root, device) * 255.0)
    out = scaled.clamp(0, 255).round().to(torch.uint8).numpy()
    return np.repeat(out[..., None], 3, axis=2)


def normal(image: np.ndarray, root: Path, device: str = "cpu") -> np.ndarray:
    """A normal map (x right, y down, z toward the viewer as RGB, 128 = 0) from the
    depth estimate, as the extension's normal_midas: Sobel gradients of the
    depth (here in 0..255 units, so the slope reads the same whatever estimator
    made it) against a constant z, flat where the depth is background."""
    import cv2

    d = relative_depth(image, root, device)
    x = cv2.Sobel(d * 255.0, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(d * 255.0, cv2.CV_32F, 0, 1, ksize=3)
    background = d < NORMAL_BACKGROUND
    x[background] = 0.0
    y[background] = 0.0
    n = np.stack([x, y, np.full_like(x, NORMAL_Z)], axis=2)
    n /= np.sqrt((n**2).sum(axis=2, keepdims=True))
    return np.clip(n * 127.5 + 127.5, 0, 255).round().astype(np.uint8)


def relative_depth(image: np.ndarray, root: Path, device: str = "cpu") -> np.ndarray:
    """The estimator's depth (near = large) at the image's size, min-max
    normalised to 0..1 (float32; all 0 when the picture gives no depth cue)."""
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
    scaled = (predicted - lo) / (hi - lo) if hi > lo else torch.zeros_like(predicted)  # flat: no depth cue
    return scaled.clamp(0, 1).cpu().numpy().astype(np.float32)


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
