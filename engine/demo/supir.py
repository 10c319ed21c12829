"""A tiny random-init SUPIR file for a tiny SDXL-shaped model, in the authors' key layout.

Written the way `SUPIR-v0Q.ckpt` is (sgm names: `model.control_model.*`,
`model.diffusion_model.project_modules.*`, `first_stage_model.denoise_encoder.*`),
as `.safetensors` or as a torch.save pickle of {"state_dict": ...}, so it
loads through the code real files go through. The connectors get random
weights, not the zeros of an untrained model, so tests can see them act.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def supir_state_dict(unet_config: dict[str, Any], vae_config: dict[str, Any], seed: int = 0,
                     nhidden: int = 32) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL

    from engine.demo.ldm_layout import unet_to_ldm, vae_to_ldm
    from engine.supir import CONNECTORS, CONTROL, DENOISE_ENCODER, Adaptor, Connectors, connector_slots

    torch.manual_seed(seed)
    levels = len(unet_config["block_out_channels"])
    depth = unet_config.get("transformer_layers_per_block", 1)
    depths = list(depth) if isinstance(depth, (list, tuple)) else [depth] * levels
    adaptor = Adaptor(unet_config, depths)
    slots = connector_slots(unet_config)
    connectors = Connectors(slots, nhidden, {s.index: max(1, s.channels // 64) for s in slots if s.kind == "cross"})
    with torch.no_grad():  # small random weights where an untrained SUPIR has zeros
        for p in [*connectors.parameters(), *adaptor.hint.parameters()]:
            if p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0.0, 0.05)
    encoder = AutoencoderKL.from_config(vae_config).encoder
    state: dict[str, Any] = {}
    for key, value in unet_to_ldm(adaptor.unet.state_dict(), adaptor.unet.config).items():
        state[CONTROL + key.removeprefix("model.diffusion_model.")] = value
    for key, value in adaptor.hint.state_dict().items():
        state[f"{CONTROL}input_hint_block.0.{key}"] = value
    for key, value in connectors.project_modules.state_dict().items():
        state[CONNECTORS + key] = value
    encoder_state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    for key, value in vae_to_ldm(encoder_state, vae_config).items():
        state[DENOISE_ENCODER + key.removeprefix("first_stage_model.encoder.")] = value
    return {k: v.detach().contiguous() for k, v in state.items()}


def build_supir_file(path: Path, unet_config: dict[str, Any], vae_config: dict[str, Any], seed: int = 0,
                     half: bool = False) -> Path:
    """`.safetensors` (fp16 with `half`, as the users' conversions) or the authors'
    `.ckpt` (a torch.save'd {"state_dict": ...})."""
    import torch

    state = supir_state_dict(unet_config, vae_config, seed)
    if half:
        state = {k: v.half() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return path
