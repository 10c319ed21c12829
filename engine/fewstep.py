"""Few-step models: LCM, Turbo, Lightning and Hyper-SD, recognised as users have them.

Distilled checkpoints and LoRAs draw a picture in 1 to 8 steps, but only with
the settings they were distilled for: CFG 1 (no unconditional pass; the
guidance is baked in), few steps, and a schedule whose first step starts at
the last training timestep ("trailing" spacing, which ComfyUI calls
sgm_uniform and the WebUI "SGM Uniform"). Users get these files from Civitai
and Hugging Face with the names their makers gave them, so the file name is
the strongest sign (`lcm-lora-sdv1-5`, `sd_xl_turbo_1.0_fp16`,
`sdxl_lightning_4step_lora`, `Hyper-SD15-8steps-lora`,
`dreamshaperXL_lightningDPMSDE`); kohya and modelspec metadata in the
safetensors header (what trainers write: `ss_output_name`, `modelspec.title`)
comes next; a diffusers UNet config with `time_cond_proj_dim` is an LCM
(a guidance-embedding UNet, as LCM-Dreamshaper ships). The defaults are those
of the makers' model cards:

- LCM / LCM-LoRA (Luo et al. 2023): the `LCM` sampler, 4 steps (4-8), CFG 1.
- SDXL-Turbo / SD-Turbo (ADD): 1 step at CFG 1 for the base models (4 for
  community "turbo" merges, which the makers tune for 4-8), Euler a, trailing.
- SDXL-Lightning: the step count in its name (1, 2, 4, 8), CFG 1, Euler with
  sgm_uniform, as its model card says for ComfyUI.
- Hyper-SD: the step count in its name (1, 2, 4, 8, 12), CFG 1, or 5 for the
  "CFG" variants that keep guidance; Euler with sgm_uniform (trailing, as its
  card asks of DDIM); its 1-step "unified" LoRA is meant for TCD, which
  Euler a at the same single step approximates.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

LCM, TURBO, LIGHTNING, HYPER = "lcm", "turbo", "lightning", "hyper"
KINDS = (LCM, TURBO, LIGHTNING, HYPER)
SGM_UNIFORM = "SGM Uniform"  # the WebUI's name for trailing timesteps
METADATA_KEYS = ("ss_output_name", "modelspec.title", "modelspec.description", "name", "description",
                 "ss_training_comment", "modelspec.tags")
MAX_METADATA_HEADER = 16 * 1024 * 1024


@dataclass(frozen=True)
class FewStep:
    """What a few-step model needs: its kind and the settings it was distilled for."""

    kind: str  # lcm | turbo | lightning | hyper
    steps: int
    cfg_scale: float
    sampler: str  # a WebUI sampler name
    schedule: str = ""  # a WebUI schedule type ("" = the sampler's own)


_WORDS = [  # (kind, pattern) in order: "hyper" before "lcm" (Hyper-SD names mention neither else)
    (HYPER, re.compile(r"hyper[-_ ]?sd|hyper[-_ ]?(?:xl|sdxl|sd15)|\bhyper\b|hyper(?=[-_ ]?\d+[-_ ]?steps?)", re.I)),
    (LIGHTNING, re.compile(r"lightning", re.I)),
    (LCM, re.compile(r"(?<![a-z])lcm(?![a-z])|latent[-_ ]?consistency", re.I)),
    (TURBO, re.compile(r"turbo", re.I)),
]
_STEPS = re.compile(r"(?<!\d)(\d{1,2})[-_ ]?steps?(?![a-z])", re.I)


def profile(kind: str, steps: int = 0, cfg: bool = False, base_turbo: bool = False) -> FewStep:
    """The defaults for a kind; `steps` from the name where it gives one."""
    if kind == LCM:
        return FewStep(LCM, steps or 4, 1.0, "LCM")
    if kind == TURBO:
        return FewStep(TURBO, steps or (1 if base_turbo else 4), 1.0, "Euler a", SGM_UNIFORM)
    if kind == LIGHTNING:
        return FewStep(LIGHTNING, steps or 4, 1.0, "Euler", SGM_UNIFORM)
    if kind == HYPER:
        return FewStep(HYPER, steps or 8, 5.0 if cfg else 1.0, "Euler a" if steps == 1 else "Euler", SGM_UNIFORM)
    raise ValueError(f"unknown few-step kind {kind!r}; one of {', '.join(KINDS)}")


def from_text(text: str) -> FewStep | None:
    """A few-step profile from a name or description, or None."""
    for kind, pattern in _WORDS:
        if pattern.search(text):
            steps = _STEPS.search(text)
            n = int(steps.group(1)) if steps else 0
            base_turbo = kind == TURBO and bool(re.search(r"(?:sd|sdxl|sd_xl)[-_ ]?turbo", text, re.I))
            cfg = kind == HYPER and bool(re.search(r"cfg", text, re.I))
            return profile(kind, n if 1 <= n <= 16 else 0, cfg, base_turbo)
    return None


def detect(name: str, metadata: dict[str, str] | None = None, unet_config: dict | None = None) -> FewStep | None:
    """A model's few-step profile from its file name, then its metadata, then its UNet config."""
    found = from_text(Path(name).name)
    if found is None and metadata:
        found = from_text(" ".join(str(metadata[k])[:2000] for k in METADATA_KEYS if k in metadata))
    if found is None and unet_config and unet_config.get("time_cond_proj_dim"):
        found = profile(LCM)
    return found


def read_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` map of a safetensors header (strings only); {} when absent or unreadable."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                return {}
            (length,) = struct.unpack("<Q", raw)
            if length > MAX_METADATA_HEADER:
                return {}
            header = json.loads(f.read(length))
    except (OSError, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {k: v for k, v in meta.items() if isinstance(v, str)} if isinstance(meta, dict) else {}
