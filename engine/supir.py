"""SUPIR (Yu et al. 2024, arXiv 2401.13627): SDXL restoration with an adaptor.

A SUPIR file (`SUPIR-v0Q.ckpt`, `SUPIR-v0F.ckpt`, or their fp16
`.safetensors` conversions) holds no SDXL weights, only what SUPIR adds to an
SDXL checkpoint (paper Sec. 3.1, Fig. 2):

- `model.control_model.*`: the adaptor ("trimmed ControlNet"): a copy of the
  SDXL UNet's encoder (its down blocks and middle block) that reads the noisy
  latent plus, through a zero-initialised 3x3 conv (`input_hint_block`), the
  low-quality (LQ) image's latent; its features at every resolution steer the
  UNet. Its transformer depth is read from the file, so a trimmed copy loads.
- `model.diffusion_model.project_modules.*`: the connectors that modulate the
  SDXL UNet's decoder with those features: a ZeroSFT per skip connection (and
  one after the middle block) and a ZeroCrossAttn before each upsampler of an
  attention level.
- `first_stage_model.denoise_encoder.*`: the degradation-robust VAE encoder
  (paper Eq. 1: fine-tuned so that D(E_dr(x_LQ)) is close to the clean image),
  used for the LQ latent and for the optional pre-denoise.

The SDXL UNet, VAE and text encoders are the ones of the checkpoint the
request names, as loaded for any job. diffusers has the UNet, its blocks and
the encoder but no way to modulate a UNet's skip connections, so the decoder
pass (`unet_forward`) is written here over diffusers' own blocks, and the two
connector types, which diffusers lacks, are small modules below.

Key names are the authors' (sgm's LDM layout); the maps to diffusers names are
derived from the model config (engine/demo/ldm_layout.py), and loading checks
that every tensor of the file is used and none is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import runtime
from engine.errors import EngineError

CONTROL = "model.control_model."
CONNECTORS = "model.diffusion_model.project_modules."
DENOISE_ENCODER = "first_stage_model.denoise_encoder."
FOLDERS = ("SUPIR", "upscale_models")  # where users keep SUPIR files (ComfyUI: either)
SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


class GroupNorm32(nn.GroupNorm):
    """sgm's `normalization()`: GroupNorm(32) computed in float32 (fp16-safe)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


class ZeroSFT(nn.Module):
    """Spatial feature transform with zero-initialised outputs (paper Sec. 3.1,
    "ZeroSFT"): the adaptor feature c modulates the decoder's input, the skip
    feature h (plus a zero 1x1 conv of c) concatenated with the decoder's own
    hidden state h_ori:

        h' = GN([h_ori, h + conv0(c)]) * (1 + gamma(c)) + beta(c)

    gamma and beta start at zero, so an untrained connector is the identity up
    to the norm; `scale` blends with the unmodulated input (control scale)."""

    def __init__(self, label_nc: int, norm_nc: int, concat_nc: int = 0, nhidden: int = 128) -> None:
        super().__init__()
        total = norm_nc + concat_nc
        self.param_free_norm = GroupNorm32(total)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, nhidden, 3, padding=1), nn.SiLU())
        self.zero_mul = nn.Conv2d(nhidden, total, 3, padding=1)
        self.zero_add = nn.Conv2d(nhidden, total, 3, padding=1)
        self.zero_conv = nn.Conv2d(label_nc, norm_nc, 1)
        self.pre_concat = concat_nc != 0
        for conv in (self.zero_mul, self.zero_add, self.zero_conv):
            _zero(conv)

    def forward(self, c, h, h_ori=None, scale: float = 1.0):
        joined = h_ori is not None and self.pre_concat
        h_raw = torch.cat([h_ori, h], dim=1) if joined else h
        h = h + self.zero_conv(c)
        if joined:
            h = torch.cat([h_ori, h], dim=1)
        actv = self.mlp_shared(c)
        h = self.param_free_norm(h) * (self.zero_mul(actv) + 1) + self.zero_add(actv)
        if h_ori is not None and not self.pre_concat:
            h = torch.cat([h_ori, h], dim=1)
        return h * scale + h_raw * (1 - scale)


class ZeroCrossAttn(nn.Module):
    """Cross-attention from the decoder's hidden state (queries) to the adaptor
    feature (keys/values) at the same resolution, added residually; its output
    projection starts at zero. 64 channels a head, as the authors'."""

    def __init__(self, context_dim: int, query_dim: int, heads: int) -> None:
        from diffusers.models.attention_processor import Attention

        super().__init__()
        self.attn = Attention(query_dim, cross_attention_dim=context_dim, heads=heads, dim_head=64, bias=False,
                              out_bias=True)
        self.norm1 = GroupNorm32(query_dim)
        self.norm2 = GroupNorm32(context_dim)

    def forward(self, context, x, scale: float = 1.0):
        b, c, height, width = x.shape
        query = self.norm1(x).flatten(2).transpose(1, 2)
        keys = self.norm2(context).flatten(2).transpose(1, 2)
        out = self.attn(query, encoder_hidden_states=keys).transpose(1, 2).reshape(b, c, height, width)
        return x + out * scale


def _zero(module: nn.Module) -> nn.Module:
    """sgm's zero_module: a connector starts as no change (ControlNet's trick)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# -- layout: which connector sits where, from the UNet config ---------------------------
@dataclass(frozen=True)
class Slot:
    kind: str  # "sft" | "cross"
    index: int  # the encoder feature (skip connection) it belongs to
    label: int  # adaptor feature channels (= the skip's)
    channels: int  # sft: the skip's channels; cross: the query (decoder hidden) channels
    concat: int = 0  # sft: the decoder hidden state's channels joined to the skip


def encoder_channels(config: dict[str, Any]) -> list[int]:
    """Channels of the encoder's features in order (conv_in, each resnet, each
    downsampler), then the middle block's: the skips plus one."""
    out = [config["block_out_channels"][0]]
    levels = config["block_out_channels"]
    for i, ch in enumerate(levels):
        out += [ch] * config["layers_per_block"]
        if i < len(levels) - 1:
            out.append(ch)
    return [*out, levels[-1]]


def connector_slots(config: dict[str, Any]) -> list[Slot]:
    """The connectors in the authors' `project_modules` order. For SDXL base
    this is their hard-coded XL-base table (10 ZeroSFT, ZeroCrossAttn before
    the 3rd and 6th decoder features); derived here for any channel layout by
    walking the decoder: each resnet pops one skip, and a ZeroCrossAttn sits
    before each upsampler of an attention level."""
    cond = encoder_channels(config)
    skips = len(cond) - 1
    sft: dict[int, Slot] = {skips: Slot("sft", skips, cond[skips], cond[skips], 0)}  # after the middle block
    cross: dict[int, Slot] = {}
    hidden = config["block_out_channels"][-1]
    index = skips
    ups = config["up_block_types"]
    for b, (block, ch) in enumerate(zip(ups, reversed(config["block_out_channels"]), strict=True)):
        for _ in range(config["layers_per_block"] + 1):
            index -= 1
            sft[index] = Slot("sft", index, cond[index], cond[index], hidden)
            hidden = ch
        if b < len(ups) - 1 and block.startswith("CrossAttn"):
            cross[index] = Slot("cross", index, cond[index], hidden)
    slots: list[Slot] = []
    for i in range(skips + 1):
        if i in cross:
            slots.append(cross[i])
        slots.append(sft[i])
    return slots


class Connectors(nn.Module):
    """`project_modules`: the ZeroSFT / ZeroCrossAttn list, in the authors' order."""

    def __init__(self, slots: list[Slot], nhidden: int, heads: dict[int, int]) -> None:
        super().__init__()
        self.slots = slots
        modules: list[nn.Module] = []
        for s in slots:
            if s.kind == "sft":
                modules.append(ZeroSFT(s.label, s.channels, s.concat, nhidden))
            else:
                modules.append(ZeroCrossAttn(s.label, s.channels, heads[s.index]))
        self.project_modules = nn.ModuleList(modules)
        self.sft = {s.index: m for s, m in zip(slots, modules, strict=True) if s.kind == "sft"}
        self.cross = {s.index: m for s, m in zip(slots, modules, strict=True) if s.kind == "cross"}


# -- the adaptor and the modulated UNet ---------------------------------------------------
def _embedding(unet, sample, timestep, context, added: dict[str, Any] | None):
    """The UNet's time (+ SDXL size/pooled-text) embedding, by diffusers' own helpers."""
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=context, added_cond_kwargs=added or {})
    return emb + aug if aug is not None else emb


def _down(unet, h, emb, context) -> tuple[Any, list[Any]]:
    features = [h]
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
        else:
            h, res = block(hidden_states=h, temb=emb)
        features += list(res)
    return h, features


class Adaptor(nn.Module):
    """GLVControl: the encoder half of an SDXL-shaped UNet (diffusers'
    UNet2DConditionModel without its decoder) plus `input_hint_block`, a 3x3
    conv of the LQ latent added after the first conv. Returns the features of
    every encoder level and the middle block."""

    def __init__(self, unet_config: dict[str, Any], depths: list[int]) -> None:
        from diffusers import UNet2DConditionModel

        super().__init__()
        config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
        config["transformer_layers_per_block"] = depths
        self.unet = UNet2DConditionModel.from_config(config)
        self.unet.up_blocks = nn.ModuleList()  # the adaptor has no decoder
        self.unet.conv_norm_out = self.unet.conv_act = self.unet.conv_out = None
        self.hint = _zero(nn.Conv2d(config["in_channels"], config["block_out_channels"][0], 3, padding=1))

    def forward(self, lq, x, timestep, context, added: dict[str, Any] | None = None) -> list[Any]:
        u = self.unet
        emb = _embedding(u, x, timestep, context, added)
        h = u.conv_in(x) + self.hint(lq.to(x.dtype))
        h, features = _down(u, h, emb, context)
        return [*features, u.mid_block(h, emb, encoder_hidden_states=context)]


def unet_forward(unet, connectors: Connectors, control: list[Any], x, timestep, context,
                 added: dict[str, Any] | None = None, scale: float = 1.0):
    """The SDXL UNet with SUPIR's connectors on its decoder (the authors'
    LightGLVUNet.forward): the encoder and middle block as usual; then every
    skip connection is replaced by its ZeroSFT-modulated join with the decoder
    state, and a ZeroCrossAttn looks at the adaptor before each upsampler."""
    emb = _embedding(unet, x, timestep, context, added)
    h, skips = _down(unet, unet.conv_in(x), emb, context)
    h = unet.mid_block(h, emb, encoder_hidden_states=context)
    index = len(skips)
    h = connectors.sft[index](control[index], h, None, scale)
    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            index -= 1
            h = connectors.sft[index](control[index], skips.pop(), h, scale)  # cat([h, skip']) modulated
            h = resnet(h, emb)
            if attentions is not None:
                h = attentions[j](h, encoder_hidden_states=context, return_dict=False)[0]
        if block.upsamplers:
            if index in connectors.cross:
                h = connectors.cross[index](control[index], h, scale)
            for upsampler in block.upsamplers:
                h = upsampler(h)
    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)


# -- the model: load, map, check ---------------------------------------------------------
@dataclass
class SupirModel:
    name: str
    adaptor: Adaptor
    connectors: Connectors
    denoise_encoder: nn.Module  # diffusers' VAE Encoder with the degradation-robust weights

    def to(self, device, dtype) -> SupirModel:
        self.adaptor.to(device, dtype)
        self.connectors.to(device, dtype)
        self.denoise_encoder.to(device)  # the VAE's dtype is set with the VAE
        runtime.cpu_layout(self.denoise_encoder, str(device))  # as the model's own VAE (runtime.cpu_layout)
        return self


def _depths(state: dict[str, Any], levels: int, layers: int) -> list[int]:
    """Transformer blocks per level of the adaptor's encoder, counted in the file."""
    depths = []
    for level in range(levels):
        block = 1 + level * (layers + 1)
        found = {int(m.group(1)) for k in state
                 if (m := re.match(rf"{re.escape(CONTROL)}input_blocks\.{block}\.1\.transformer_blocks\.(\d+)\.", k))}
        depths.append(max(found) + 1 if found else 1)
    return depths


def ldm_names(module_state: dict[str, Any], to_ldm, *args) -> dict[str, str]:
    """diffusers name -> the authors' (LDM) name, through a converter of
    engine/demo/ldm_layout.py (which keeps the order of the keys it is given)."""
    converted = to_ldm(module_state, *args)
    assert len(converted) == len(module_state), "two parameters map to one LDM name"
    return dict(zip(module_state, converted, strict=True))


def read_supir_file(path: Path) -> dict[str, Any]:
    """The file's tensors: safetensors, or a pickle through torch.load(weights_only=True)
    only (engine/weights.py); the authors' .ckpt may nest them under "state_dict"."""
    from engine.weights import load_weights

    try:
        state = load_weights(path)
    except EngineError:
        raise
    except Exception as exc:  # a renamed pickle, a truncated file...
        raise EngineError("invalid_model", f"{path.name} is not a readable SUPIR file ({type(exc).__name__})",
                          field="restore.supir") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(k.startswith(CONTROL) for k in state):
        raise EngineError("invalid_model", f"{path.name} has no SUPIR adaptor ({CONTROL}*)", field="restore.supir")
    return state


def build_supir(name: str, state: dict[str, Any], unet_config: dict[str, Any], vae_config: dict[str, Any]):
    """Modules shaped for this SDXL model and this file, with every tensor of the
    file placed 1:1. Returns the model and the set of file keys used."""
    from diffusers import AutoencoderKL

    from engine.demo.ldm_layout import unet_to_ldm, vae_to_ldm

    adaptor = Adaptor(unet_config, _depths(state, len(unet_config["block_out_channels"]),
                                           unet_config["layers_per_block"]))
    slots = connector_slots(unet_config)
    first_sft = next(i for i, s in enumerate(slots) if s.kind == "sft")
    nhidden = state[f"{CONNECTORS}{first_sft}.mlp_shared.0.weight"].shape[0]
    heads = {s.index: state[f"{CONNECTORS}{i}.attn.to_q.weight"].shape[0] // 64
             for i, s in enumerate(slots) if s.kind == "cross"}
    connectors = Connectors(slots, nhidden, heads)
    vae = AutoencoderKL.from_config(vae_config)
    encoder = vae.encoder

    names: dict[str, tuple[nn.Module, str]] = {}  # file key -> (module, its parameter name)
    unet_state = {k: v for k, v in adaptor.unet.state_dict().items()}
    for diffusers_name, ldm in ldm_names(unet_state, unet_to_ldm, adaptor.unet.config).items():
        names[CONTROL + ldm.removeprefix("model.diffusion_model.")] = (adaptor.unet, diffusers_name)
    for k in adaptor.hint.state_dict():
        names[f"{CONTROL}input_hint_block.0.{k}"] = (adaptor.hint, k)
    for k in connectors.project_modules.state_dict():
        names[CONNECTORS + k] = (connectors.project_modules, k)
    encoder_state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    for diffusers_name, ldm in ldm_names(encoder_state, vae_to_ldm, vae.config).items():
        names[DENOISE_ENCODER + ldm.removeprefix("first_stage_model.encoder.")] = (
            encoder, diffusers_name.removeprefix("encoder."))

    missing = sorted(set(names) - set(state))
    unused = sorted(set(state) - set(names))
    if missing or unused:
        raise EngineError("invalid_model", f"{name} does not fit this SDXL model: {len(missing)} tensors missing "
                          f"(e.g. {missing[:2]}), {len(unused)} unused (e.g. {unused[:2]})", field="restore.supir")
    by_module: dict[int, dict[str, Any]] = {}
    modules: dict[int, nn.Module] = {}
    for key, (module, param) in names.items():
        target = module.state_dict()[param]
        value = state[key]
        if value.numel() != target.numel():
            raise EngineError("invalid_model", f"{name}: {key} has shape {tuple(value.shape)}, expected "
                              f"{tuple(target.shape)}", field="restore.supir")
        by_module.setdefault(id(module), {})[param] = value.reshape(target.shape).to(target.dtype)
        modules[id(module)] = module
    for key, module in modules.items():
        module.load_state_dict(by_module[key], strict=True)
    return SupirModel(name, adaptor, connectors, encoder), set(names)


def find_supir(root: Path, name: str) -> Path:
    """A SUPIR file by name (with or without its suffix) from the models folder's
    SUPIR/ or upscale_models/, by listing those folders: a name is never a path."""
    wanted = name.strip().lower()
    found: list[tuple[Path, str]] = []
    for folder in FOLDERS:
        base = root / folder
        if base.is_dir():
            found += [(p, p.relative_to(base).with_suffix("").as_posix().lower()) for p in sorted(base.rglob("*"))
                      if p.is_file() and p.suffix.lower() in SUFFIXES]
    for path, listed in found:  # `listed`: the name the model list (engine/registry.py) gives it
        if wanted in (path.name.lower(), path.stem.lower(), listed):
            return path
    available = ", ".join(p.stem for p, _ in found if p.stem.lower().startswith("supir")) or "none"
    raise EngineError("unknown_model", f"no SUPIR model {name!r} in {'/ or '.join(FOLDERS)}/ (available: {available})",
                      field="restore.supir")
