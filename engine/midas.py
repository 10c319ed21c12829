"""The MiDaS inside SD 2's depth model: depth maps from the checkpoint itself.

Stability's `512-depth-ema` carries the depth estimator it was trained with,
MiDaS v3 "DPT-Hybrid" (Ranftl et al. 2021, "Vision Transformers for Dense
Prediction"): a BiT ResNet-50 stem and three stages feeding a ViT-B/16, and
DPT's reassemble / fusion neck and depth head. In the original checkpoint it
sits under `depth_model.model.*` in the layout of the MiDaS repository (timm's
`vit_base_resnet50_384` as `pretrained.model`, DPT's `pretrained.act_postprocess*`
and `scratch.*`). transformers implements the same network as
DPTForDepthEstimation with `is_hybrid` (a BiT backbone); this module renames
the tensors onto it, splitting timm's fused attention projection into query,
key and value, so the depth that conditions the UNet comes from the very
estimator the model learnt with, as the authors' depth2img does. The rename
table is ours, derived from the two module trees (the one transformers ships
in its DPT-Hybrid conversion script documents the same correspondence).

Without a MiDaS in the file (a pruned conversion) the depth comes from the
estimator in `annotators/` (engine/preprocess.py), as before. A diffusers
folder of the depth model brings its estimator in `depth_estimator/`.

The map is computed as the authors do (ldm's AddMiDaS and LatentDepth2ImageDiffusion):
the image resized keeping its aspect to about 384 pixels a side (the side
nearer its own size, multiples of 32), pixels in -1..1, and the raw predicted
depth handed on; engine/kpipeline.depth_latent resizes it bicubically to the
latent and min-max normalises it to -1..1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError

PREFIX = "depth_model.model."
CONFIG = Path(__file__).parent / "configs" / "dpt-hybrid-midas" / "config.json"
# timm's ImageNet classifier on top of the ViT: MiDaS builds the ViT with it, DPT reads features and never uses it.
IGNORED = ("pretrained.model.head.",)
_BACKBONE = "dpt.embeddings.backbone.bit."

# (original, transformers) with \1.. groups; {n} marks a number that counts the other way
# (MiDaS's refinenet4 fuses first; transformers' fusion layer 0 does).
_RULES: list[tuple[str, str]] = [
    (r"pretrained\.model\.cls_token", "dpt.embeddings.cls_token"),
    (r"pretrained\.model\.pos_embed", "dpt.embeddings.position_embeddings"),
    (r"pretrained\.model\.patch_embed\.proj\.(weight|bias)", r"dpt.embeddings.projection.\1"),
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.conv\.weight", _BACKBONE + "embedder.convolution.weight"),
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.norm\.(weight|bias)", _BACKBONE + r"embedder.norm.\1"),
    (r"pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.((?:downsample\.)?(?:conv|norm)\d?\.(?:weight|bias))",
     _BACKBONE + r"encoder.stages.\1.layers.\2.\3"),
    (r"pretrained\.model\.blocks\.(\d+)\.norm1\.(weight|bias)", r"dpt.encoder.layer.\1.layernorm_before.\2"),
    (r"pretrained\.model\.blocks\.(\d+)\.norm2\.(weight|bias)", r"dpt.encoder.layer.\1.layernorm_after.\2"),
    (r"pretrained\.model\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"dpt.encoder.layer.\1.attention.output.dense.\2"),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"dpt.encoder.layer.\1.intermediate.dense.\2"),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"dpt.encoder.layer.\1.output.dense.\2"),
    (r"pretrained\.model\.norm\.(weight|bias)", r"dpt.layernorm.\1"),
    # Readout ("project") and reassemble of the two ViT stages the neck reads (the first two come from BiT).
    (r"pretrained\.act_postprocess(\d)\.0\.project\.0\.(weight|bias)", r"neck.reassemble_stage.readout_projects.{-1}.0.\2"),
    (r"pretrained\.act_postprocess(\d)\.3\.(weight|bias)", r"neck.reassemble_stage.layers.{-1}.projection.\2"),
    (r"pretrained\.act_postprocess(\d)\.4\.(weight|bias)", r"neck.reassemble_stage.layers.{-1}.resize.\2"),
    (r"scratch\.layer(\d)_rn\.weight", r"neck.convs.{-1}.weight"),
    (r"scratch\.refinenet(\d)\.out_conv\.(weight|bias)", r"neck.fusion_stage.layers.{4-}.projection.\2"),
    (r"scratch\.refinenet(\d)\.resConfUnit(\d)\.conv(\d)\.(weight|bias)",
     r"neck.fusion_stage.layers.{4-}.residual_layer\2.convolution\3.\4"),
    (r"scratch\.output_conv\.(\d)\.(weight|bias)", r"head.head.\1.\2"),
]
_QKV = re.compile(r"pretrained\.model\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)")


def _rename(name: str) -> str | None:
    for pattern, target in _RULES:
        match = re.fullmatch(pattern, name)
        if match:
            first = int(match.group(1)) if match.groups() and match.group(1).isdigit() else 0
            out = target.replace("{-1}", str(first - 1)).replace("{4-}", str(4 - first))
            return match.expand(out)
    return None


def to_transformers(original: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """MiDaS tensors (names without `depth_model.model.`) -> DPTForDepthEstimation's
    names; with the set of original names used. Unknown names raise."""
    out: dict[str, Any] = {}
    used: set[str] = set()
    for name, tensor in original.items():
        if name.startswith(IGNORED):
            continue
        qkv = _QKV.fullmatch(name)
        if qkv:  # timm's fused q, k, v (in that order along the output rows)
            layer, kind = qkv.groups()
            for part, chunk in zip(("query", "key", "value"), tensor.chunk(3, dim=0), strict=True):
                out[f"dpt.encoder.layer.{layer}.attention.attention.{part}.{kind}"] = chunk.contiguous()
        else:
            target = _rename(name)
            if target is None:
                raise EngineError("invalid_model", f"the depth model's MiDaS has a tensor this loader does not know: "
                                  f"{PREFIX}{name}", field="model")
            out[target] = tensor
        used.add(name)
    return out, used


# -- finding and building it --------------------------------------------------------
def _config(entry) -> Any:
    """The DPT-Hybrid config: a test model's `<stem>.config/depth_estimator/`, else the bundled one
    (Intel/dpt-hybrid-midas's, the network in 512-depth-ema)."""
    from transformers import DPTConfig

    sidecar = Path(entry.path).with_suffix(".config") / "depth_estimator" / "config.json"
    path = sidecar if sidecar.is_file() else CONFIG
    return DPTConfig.from_dict(json.loads(path.read_text("utf-8")))


def _read(entry) -> dict[str, Any]:
    """The file's MiDaS tensors (prefix stripped): only those are read from a safetensors file."""
    path = Path(entry.path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k[len(PREFIX) :]: f.get_tensor(k) for k in f.keys() if k.startswith(PREFIX)}
    from engine.weights import load_weights

    state = load_weights(path, mmap=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}


def carries_midas(entry) -> bool:
    """Whether a depth checkpoint holds a whole MiDaS (checked before queueing,
    from the file's header; a .ckpt cannot say without unpickling it, and the
    official one does carry it). A diffusers folder: its depth_estimator/."""
    path = Path(entry.path)
    if entry.format == "diffusers":
        return (path / "depth_estimator" / "config.json").is_file()
    if path.suffix.lower() != ".safetensors":
        return True
    from engine.registry import read_safetensors_shapes

    return any(k.startswith(PREFIX + "pretrained.model.blocks.") for k in read_safetensors_shapes(path))


def build(entry, device, dtype) -> Any | None:
    """DPTForDepthEstimation with the checkpoint's own weights, or None when it has none."""
    import torch
    from transformers import DPTForDepthEstimation

    path = Path(entry.path)
    if entry.format == "diffusers":
        folder = path / "depth_estimator"
        if not (folder / "config.json").is_file():
            return None
        return DPTForDepthEstimation.from_pretrained(str(folder), local_files_only=True).to(device, dtype).eval()
    original = _read(entry)
    if not any(k.startswith("pretrained.model.blocks.") for k in original):
        return None  # pruned: only a stub of it (or nothing) left in the file
    state, _ = to_transformers(original)
    with torch.device("meta"):
        net = DPTForDepthEstimation(_config(entry))
    missing = set(net.state_dict()) - set(state)
    if missing:
        raise EngineError("invalid_model", f"{path.name}: its MiDaS lacks {len(missing)} tensors, e.g. "
                          f"{sorted(missing)[0]}", field="model")
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # shapes that do not fit the config
        raise EngineError("invalid_model", f"{path.name}: its MiDaS does not fit DPT-Hybrid: "
                          f"{str(exc).splitlines()[-1].strip()[:200]}", field="model") from exc
    return net.to(device, dtype).eval()


def processor(config) -> Any:
    """MiDaS's input transform for DPT-Hybrid (ldm.modules.midas.api, "minimal" resize)."""
    from transformers import DPTImageProcessor

    side = int(config.image_size)
    return DPTImageProcessor(do_resize=True, size={"height": side, "width": side}, keep_aspect_ratio=True,
                             ensure_multiple_of=32, resample=3, do_rescale=True, do_normalize=True,
                             image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def depth_map(model, image: np.ndarray, root: Path, device) -> np.ndarray:
    """The depth of an HxWx3 uint8 picture for SD 2's depth model: the raw
    prediction of the checkpoint's own MiDaS (near = large), or the annotators/
    estimator's map when the file has none."""
    import torch
    from PIL import Image

    if "midas" not in model.attached:  # built once per checkpoint load, released with it
        unet = model.base.unet
        model.attached["midas"] = build(model.entry, unet.device, unet.dtype)
    net = model.attached["midas"]
    if net is None:
        from engine import preprocess

        return preprocess.depth(image, root, device)[..., 0]
    pixels = processor(net.config)(images=Image.fromarray(image), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        predicted = net(pixel_values=pixels.to(net.device, net.dtype)).predicted_depth
    return predicted[0].float().cpu().numpy()
