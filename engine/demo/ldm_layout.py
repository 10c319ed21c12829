"""diffusers state dicts -> the original (LDM / WebUI) single-file key layout.

diffusers ships only the other direction (original -> diffusers, used by
`from_single_file`); its reverse lives in an unshipped script hard-wired to
SD's block counts. The demo and test models are tiny, so the mapping is
derived from the model config instead. Writing checkpoints in the layout
users actually have makes the demo load through the same code as real models.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _unet_prefix_map(config: Mapping) -> dict[str, str]:
    """diffusers module prefix -> LDM module prefix, for one UNet config."""
    layers = config["layers_per_block"]
    down, up = config["down_block_types"], config["up_block_types"]
    pairs = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
        "add_embedding.linear_1": "label_emb.0.0",  # SDXL's size/pooled-text embedding
        "add_embedding.linear_2": "label_emb.0.2",
    }
    for i, block in enumerate(down):
        for j in range(layers):
            k = 1 + i * (layers + 1) + j
            pairs[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{k}.0"
            if block.startswith("CrossAttn"):
                pairs[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{k}.1"
        if i < len(down) - 1:
            pairs[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{1 + i * (layers + 1) + layers}.0.op"
    for i, block in enumerate(up):
        attention = block.startswith("CrossAttn")
        for j in range(layers + 1):
            k = i * (layers + 1) + j
            pairs[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{k}.0"
            if attention:
                pairs[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{k}.1"
        if i < len(up) - 1:
            last = i * (layers + 1) + layers
            pairs[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{last}.{2 if attention else 1}.conv"
    return pairs


def _rename(key: str, prefixes: Mapping[str, str]) -> tuple[str, str] | None:
    for src, dst in prefixes.items():
        if key.startswith(src + "."):
            return dst, key[len(src) + 1 :]
    return None


def unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefix_map(config)
    out = {}
    for key, value in state.items():
        hit = _rename(key, prefixes)
        if hit is None:
            raise KeyError(f"no LDM name for UNet key {key}")
        dst, rest = hit
        if "resnets" in key.split(".")[:4] or key.startswith("mid_block.resnets"):
            head, _, tail = rest.partition(".")
            rest = f"{_RESNET.get(head, head)}.{tail}"
        out[f"model.diffusion_model.{dst}.{rest}"] = value
    return out


_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    blocks = len(config["down_block_types"])
    prefixes = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for side in ("encoder", "decoder"):
        prefixes[f"{side}.mid_block.resnets.0"] = f"{side}.mid.block_1"
        prefixes[f"{side}.mid_block.resnets.1"] = f"{side}.mid.block_2"
        prefixes[f"{side}.mid_block.attentions.0"] = f"{side}.mid.attn_1"
    for i in range(blocks):
        for j in range(config["layers_per_block"] + 1):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
            # The LDM decoder numbers its up blocks from the bottom.
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{blocks - 1 - i}.block.{j}"
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{blocks - 1 - i}.upsample.conv"
    out = {}
    for key, value in state.items():
        hit = _rename(key, prefixes)
        dst, rest = hit if hit else (None, key)
        if dst and ".attn_1" in dst:
            head = rest.rsplit(".", 1)[0]
            rest = f"{_VAE_ATTENTION[head]}.{rest.rsplit('.', 1)[1]}"
            if value.ndim == 2:  # LDM keeps the attention projections as 1x1 convs
                value = value[:, :, None, None]
        elif rest.startswith("conv_shortcut."):
            rest = "nin_shortcut." + rest.split(".", 1)[1]
        name = f"{dst}.{rest}" if dst else rest
        out[f"first_stage_model.{name}"] = value
    return out


def text_encoder_to_ldm(
    state: Mapping[str, torch.Tensor], prefix: str = "cond_stage_model.transformer.text_model."
) -> dict[str, torch.Tensor]:
    """CLIP-L text model keys (SD1.x; SDXL's first encoder) in the HF layout under `prefix`."""
    out = {}
    for key, value in state.items():
        if key.startswith("text_projection."):
            continue
        key = key.removeprefix("text_model.")
        out[f"{prefix}{key}"] = value
    return out


_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def open_clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """An HF CLIP text model -> OpenCLIP's layout (SD2's and SDXL's second encoder):
    fused q/k/v `in_proj`, `resblocks`, and a transposed `text_projection`."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {
        f"{prefix}token_embedding.weight": state["embeddings.token_embedding.weight"],
        f"{prefix}positional_embedding": state["embeddings.position_embedding.weight"],
        f"{prefix}ln_final.weight": state["final_layer_norm.weight"],
        f"{prefix}ln_final.bias": state["final_layer_norm.bias"],
    }
    if "text_projection.weight" in state:
        out[f"{prefix}text_projection"] = state["text_projection.weight"].T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
            for hf, oc in _OPENCLIP_LAYER.items():
                out[f"{dst}{oc}.{kind}"] = state[f"{src}{hf}.{kind}"]
    return out


def controlnet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel -> lllyasviel's original `control_model.*` layout
    (the control_v11*_sd15_*.pth files): the UNet encoder's names, `zero_convs`,
    `middle_block_out` and the `input_hint_block` (convs at even indices, 0 to 14)."""
    unet_like = {**config, "up_block_types": []}
    blocks = len(config.get("conditioning_embedding_out_channels", (16, 32, 96, 256))) * 2 - 2
    out: dict[str, torch.Tensor] = {}
    encoder = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if key.startswith("controlnet_cond_embedding."):
            part = key.split(".")
            if part[1] == "conv_in":
                index = 0
            elif part[1] == "conv_out":
                index = 2 * (blocks + 1)
            else:
                index = 2 * (int(part[2]) + 1)
            out[f"{_CONTROL}input_hint_block.{index}.{part[-1]}"] = value
        elif head == "controlnet_down_blocks":
            index, kind = rest.split(".")
            out[f"{_CONTROL}zero_convs.{index}.0.{kind}"] = value
        elif head == "controlnet_mid_block":
            out[f"{_CONTROL}middle_block_out.0.{rest}"] = value
        else:
            encoder[key] = value
    for key, value in unet_to_ldm(encoder, unet_like).items():
        out[_CONTROL + key.removeprefix("model.diffusion_model.")] = value
    return out


_CONTROL = "control_model."
