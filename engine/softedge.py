"""Soft edges: HED (Xie & Tu 2015, "Holistically-Nested Edge Detection") as
ControlNet 1.1's `softedge_hed` preprocessor computes them.

ControlNet 1.1 retrained HED under the Apache licence (lllyasviel's
`ControlNetHED.pth` in the Annotators collection, ~29 MB): five VGG-style
stages of 3x3 convolutions + ReLU (2, 2, 3, 3, 3 of them, 64 to 512
channels), each after the first starting with a 2x2 max-pool, and each with
a 1x1 "side output" projection to one channel; a learnt per-channel offset
is subtracted from the 0..255 input first. The edge map is the sigmoid of the
mean of the five side outputs, each resized to the image (eq. 3's fusion,
here an unweighted mean as in that retraining).

Written here (small, shapes read from the file) rather than taken from
controlnet_aux: that package pulls in timm, scikit-image, scipy, einops,
huggingface_hub and a non-headless OpenCV, and fetches weights by name from
the Hub, for a network of five conv stages. The weights are read as a plain
state dict through the weights-only loader (engine/weights.py): a `.pth` with
pickled code is refused; a `.safetensors` copy works too.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError

FILES = ("ControlNetHED.safetensors", "ControlNetHED.pth")  # under annotators/
HINT = ("put lllyasviel's ControlNetHED.pth (from the lllyasviel/Annotators collection, about 29 MB; a "
        ".safetensors copy works too) in {folder}/")

_lock = threading.Lock()
_loaded: dict[tuple, Any] = {}


def weights_file(annotators: Path) -> Path | None:
    for name in FILES:
        path = Path(annotators) / name
        if path.is_file() and not path.is_symlink():
            return path
    return None


def _network(state: dict[str, Any]):
    """The HED network with the stage widths and depths of `state` (loaded strictly)."""
    import torch
    from torch import nn

    class Stage(nn.Module):
        """3x3 conv + ReLU, `depth` times; a 1x1 projection of the result to one channel."""

        def __init__(self, widths: list[tuple[int, int]]) -> None:
            super().__init__()
            self.convs = nn.Sequential(*(nn.Conv2d(i, o, 3, padding=1) for i, o in widths))
            self.projection = nn.Conv2d(widths[-1][1], 1, 1)

        def forward(self, x):
            for conv in self.convs:
                x = torch.relu(conv(x))
            return x, self.projection(x)

    class HED(nn.Module):
        def __init__(self, stages: list[list[tuple[int, int]]]) -> None:
            super().__init__()
            self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))  # the learnt input offset
            for i, widths in enumerate(stages, 1):
                self.add_module(f"block{i}", Stage(widths))
            self.count = len(stages)

        def forward(self, x):
            h = x - self.norm
            sides = []
            for i in range(1, self.count + 1):
                if i > 1:
                    h = nn.functional.max_pool2d(h, 2, 2)
                h, side = getattr(self, f"block{i}")(h)
                sides.append(side)
            return sides

    stages: dict[int, dict[int, tuple[int, int]]] = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"block(\d+)\.convs\.(\d+)\.weight", key)
        if match:
            stages.setdefault(int(match.group(1)), {})[int(match.group(2))] = (tensor.shape[1], tensor.shape[0])
    if not stages or sorted(stages) != list(range(1, len(stages) + 1)):
        raise EngineError("invalid_model", "the soft-edge (HED) weights are not ControlNet 1.1's HED: no block1.. convs",
                          field="preprocess")
    net = HED([[widths[j] for j in sorted(widths)] for _, widths in sorted(stages.items())])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise EngineError("invalid_model", "the soft-edge (HED) weights do not fit ControlNet 1.1's HED: "
                          f"{str(exc).splitlines()[0][:200]}", field="preprocess") from exc
    return net.eval()


def _model(path: Path, device: str):
    from engine.weights import load_failure, load_weights

    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, str(device))  # a replaced file is read again
    with _lock:
        if key not in _loaded:
            try:
                state = load_weights(path)
            except EngineError:
                raise
            except Exception as exc:
                raise load_failure(path, path.name, exc, field="preprocess") from exc
            if not isinstance(state, dict):
                raise EngineError("invalid_model", f"{path.name} holds no state dict", field="preprocess")
            _loaded.clear()  # one resident
            _loaded[key] = _network(state).to(device)
        return _loaded[key]


def softedge(image: np.ndarray, annotators: Path, device: str = "cpu") -> np.ndarray:
    """HxWx3 uint8 -> HxWx3 uint8 soft edge map (edges bright), at the image's size."""
    import torch
    import torch.nn.functional as F

    path = weights_file(annotators)
    if path is None:
        raise EngineError("unknown_model", "softedge preprocessing has no weights: " + HINT.format(folder=annotators),
                          field="preprocess")
    net = _model(path, device)
    h, w = image.shape[:2]
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None].to(device)
    with torch.inference_mode():
        sides = [F.interpolate(s.float(), size=(h, w), mode="bilinear", align_corners=False) for s in net(x)]
        edge = torch.sigmoid(torch.cat(sides, 1).mean(1))[0]
    out = (edge * 255.0).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
    return np.repeat(out[..., None], 3, axis=2)
