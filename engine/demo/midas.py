"""A tiny random-init MiDaS DPT-Hybrid in the original layout SD 2's depth
model carries under `depth_model.model.*` (engine/midas.py reads it)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from engine.midas import _rename

# Small shapes with the structure of DPT-Hybrid: BiT stem + 3 stages (1 block each), 4 ViT layers.
TINY_CONFIG = {
    "model_type": "dpt", "is_hybrid": True,
    "backbone_config": {"model_type": "bit", "layer_type": "bottleneck", "global_padding": "same",
                        "embedding_dynamic_padding": True, "embedding_size": 8, "depths": [1, 2, 1],
                        "hidden_sizes": [16, 32, 64, 128], "num_groups": 4,
                        "out_features": ["stage1", "stage2", "stage3"]},
    "backbone_featmap_shape": [1, 64, 4, 4], "backbone_out_indices": [0, 1, 2, 3], "neck_ignore_stages": [0, 1],
    "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
    "layer_norm_eps": 1e-6, "qkv_bias": True, "image_size": 64, "patch_size": 16, "readout_type": "project",
    "reassemble_factors": [1, 1, 1, 0.5], "neck_hidden_sizes": [16, 32, 32, 32], "fusion_hidden_size": 16,
    "head_in_index": -1, "use_batch_norm_in_fusion_residual": False, "add_projection": False,
}


def tiny_midas_state(seed: int = 0) -> dict[str, Any]:
    """The tiny network's tensors in MiDaS's names (without `depth_model.model.`),
    with timm's ImageNet head the original file also carries."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation

    torch.manual_seed(seed)
    net = DPTForDepthEstimation(DPTConfig.from_dict(TINY_CONFIG)).eval()
    with torch.no_grad():  # random, but not flat: the head ends in a ReLU that would zero a random output
        net.head.head[4].bias.fill_(0.5)
    state = from_transformers(net.state_dict())
    hidden = TINY_CONFIG["hidden_size"]
    state["pretrained.model.head.weight"] = torch.randn(10, hidden)
    state["pretrained.model.head.bias"] = torch.zeros(10)
    return state


def from_transformers(state: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse: a DPTForDepthEstimation state dict in the original MiDaS
    names (for building test checkpoints in the layout users have)."""
    inverse: dict[str, str] = {}
    qkv: dict[str, dict[str, Any]] = {}
    for name in state:
        match = re.fullmatch(r"dpt\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)", name)
        if match:
            qkv.setdefault(f"pretrained.model.blocks.{match.group(1)}.attn.qkv.{match.group(3)}", {})[match.group(2)] = \
                state[name]
    candidates = original_names(state)
    for original in candidates:
        target = _rename(original)
        if target in state:
            inverse[target] = original
    out = {inverse[k]: v for k, v in state.items() if k in inverse}
    for name, parts in qkv.items():
        import torch

        out[name] = torch.cat([parts["query"], parts["key"], parts["value"]])
    missing = set(state) - set(inverse) - {k for k in state if ".attention.attention." in k}
    if missing:
        raise ValueError(f"no original name for {sorted(missing)[:3]}")
    return out


def original_names(state: Mapping[str, Any]) -> list[str]:
    """Every original name a network of this shape could have (for the inverse)."""
    stages = {int(m.group(1)) for k in state if (m := re.search(r"stages\.(\d+)", k))}
    layers = {int(m.group(1)) for k in state if (m := re.search(r"\.layers?\.(\d+)\.", k))}
    n = max(layers | stages | {4}) + 1
    names = ["pretrained.model.cls_token", "pretrained.model.pos_embed"]
    for kind in ("weight", "bias"):
        names += [f"pretrained.model.patch_embed.proj.{kind}", f"pretrained.model.patch_embed.backbone.stem.norm.{kind}",
                  f"pretrained.model.norm.{kind}"]
        for i in range(n):
            for part in ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2"):
                names.append(f"pretrained.model.blocks.{i}.{part}.{kind}")
        for s in range(1, 5):
            names += [f"pretrained.act_postprocess{s}.0.project.0.{kind}", f"pretrained.act_postprocess{s}.3.{kind}",
                      f"pretrained.act_postprocess{s}.4.{kind}", f"scratch.refinenet{s}.out_conv.{kind}"]
            names += [f"scratch.refinenet{s}.resConfUnit{u}.conv{c}.{kind}" for u in (1, 2) for c in (1, 2)]
        names += [f"scratch.output_conv.{i}.{kind}" for i in range(6)]
        for s in range(n):
            for b in range(n):
                for part in ("conv1", "conv2", "conv3", "norm1", "norm2", "norm3", "downsample.conv", "downsample.norm"):
                    names.append(f"pretrained.model.patch_embed.backbone.stages.{s}.blocks.{b}.{part}.{kind}")
    names.append("pretrained.model.patch_embed.backbone.stem.conv.weight")
    names += [f"scratch.layer{s}_rn.weight" for s in range(1, 5)]
    return names
