"""Few-step models on the wire: what a model listing says of LCM, Turbo,
Lightning and Hyper models (engine/fewstep.py recognises them), so a client
can offer their settings (the CLI's `--few-step`, the Krita docker's live mode)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FewStepDefaults:
    kind: str  # lcm | turbo | lightning | hyper
    steps: int  # the step count it was distilled for
    cfg_scale: float  # 1 = no unconditional pass (the guidance is distilled in)
    sampler: str  # a WebUI sampler name
    schedule: str = ""  # a WebUI schedule type, e.g. "SGM Uniform"; "" = the sampler's own
