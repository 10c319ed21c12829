"""Prompt editing, alternation and composable prompts, as the WebUI runs them.

- `[from:to:when]` is `from` until step `when`, then `to`; `[to:when]` and
  `[from::when]` leave the other side empty. `when` is a step number, or with a
  decimal point a fraction of the steps (in a hires pass, 1.0-2.0 is the
  fraction of the hires steps, whole numbers count on from the first pass).
- `[a|b|c]` alternates a, b, c, a... step by step.
- `A AND B :0.5` guides towards each part, with its weight (Liu et al. 2022,
  "Compositional Visual Generation with Composable Diffusion Models", eq. 9).

The WebUI parses these with an Earley grammar (lark); this module does too,
with a grammar written for the syntax above, so ambiguous and malformed
prompts resolve as they do there (an unparsable prompt is taken literally).
The conditioning changes only at the steps where the text does; it is looked
up per model call, as the WebUI counts steps (a second-order sampler moves on
twice a step). `ScheduledGuidance` is the hook: engine/kpipeline.py asks it
for the conditioning of each call of the denoiser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

GRAMMAR = r"""
start: (text | STRAY+)*
text: (weighted | edit | alternation | literal | SPACE)*
!weighted: "(" text ")" | "(" text ":" text ")" | "[" text "]"
edit: "[" [text ":"] text ":" [SPACE] NUMBER [SPACE] "]"
alternation: "[" text ("|" [text])+ "]"
literal: /([^\\\[\]():|]|\\.)+/
STRAY: /[][():]/
SPACE: /\s+/
%import common.SIGNED_NUMBER -> NUMBER
"""

AND = re.compile(r"\bAND\b")
# "text :0.7" at the end of a composable part; the weight is optional.
PART_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


@lru_cache(maxsize=1)
def _parser():
    import lark

    return lark.Lark(GRAMMAR)


def _text(node: Any, step: int, whens: dict[int, int]) -> str:
    """The prompt's text at `step` (1-based)."""
    import lark

    if isinstance(node, lark.Token):
        return str(node)
    if node is None:
        return ""
    if node.data == "edit":
        before, after = node.children[0], node.children[1]
        return _text(before if step <= whens[id(node)] else after, step, whens)
    if node.data == "alternation":
        options = node.children
        return _text(options[(step - 1) % len(options)], step, whens)
    return "".join(_text(child, step, whens) for child in node.children)


def schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """[(last step, text)...] covering steps 1..steps (the hires steps for a hires pass)."""
    import lark

    if hires_steps is None:
        int_offset, float_offset, total = 0, 0.0, steps
    else:
        int_offset, float_offset, total = steps, 1.0, hires_steps
    try:
        tree = _parser().parse(prompt)
    except lark.exceptions.LarkError:
        return [(total, prompt)]
    changes = {total}
    whens: dict[int, int] = {}
    for node in tree.iter_subtrees():
        if node.data == "edit":
            number = str(node.children[-2])
            value = float(number)
            value = (value - float_offset) * total if "." in number else value - int_offset
            whens[id(node)] = min(total, int(value))
            if whens[id(node)] >= 1:
                changes.add(whens[id(node)])
        elif node.data == "alternation":
            changes.update(range(1, total + 1))
    return [(step, _text(tree, step, whens)) for step in sorted(changes)]


def composable_parts(prompt: str) -> list[tuple[str, float]]:
    """'a cat AND a hat :0.5' -> [('a cat', 1.0), ('a hat', 0.5)]."""
    parts = []
    for part in AND.split(prompt):
        match = PART_WEIGHT.search(part)
        text, weight = match.groups() if match is not None else (part, None)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


def is_plain(prompt: str, negative: str = "") -> bool:
    """No editing, alternation, AND or trailing ":weight" (the WebUI weighs even a
    single part): one conditioning for every step."""
    return all(schedule(p, 2) == [(2, p)] and composable_parts(p) == [(p.rstrip(), 1.0)] for p in (prompt, negative))


@dataclass
class ScheduledGuidance:
    """Per model call, the conditioning of the step the WebUI would be at.

    `cond` is a list of (last step, [(embeddings, weight) per AND part]); `uncond`
    a list of (last step, embeddings); `pooled` / `uncond_pooled` likewise for
    SDXL (the pooled text embedding of each)."""

    cond: list[tuple[int, list[tuple[Any, float]]]]
    uncond: list[tuple[int, Any]]
    pooled: list[tuple[int, list[Any]]] | None = None
    uncond_pooled: list[tuple[int, Any]] | None = None
    calls: int = 0
    used: list[int] = field(default_factory=list)  # per call: which entry of `cond` served it

    @staticmethod
    def _index(entries: list, step: int) -> int:
        """The first entry lasting to `step`; past the last one the WebUI falls back
        to the first entry (its reconstruct_cond_batch), and so does this."""
        return next((i for i, (last, _) in enumerate(entries) if step <= last), 0)

    @classmethod
    def _at(cls, entries: list, step: int):
        return entries[cls._index(entries, step)][1]

    def first(self) -> Any:
        """The conditioning of the first step (engine/conditioning.py's Conditioning),
        for the pipeline's call arguments."""
        from engine.conditioning import Conditioning

        pooled = self.pooled[0][1][0] if self.pooled else None
        uncond_pooled = self.uncond_pooled[0][1] if self.uncond_pooled else None
        return Conditioning(self.cond[0][1][0][0], self.uncond[0][1], pooled, uncond_pooled)

    def apply(self, guidance: Any) -> None:
        """Set `guidance` (engine/denoiser.py's Guidance) for the next model call."""
        step = self.calls  # the WebUI compares its model-call counter (from 0) with each entry's last step
        self.calls += 1
        self.used.append(self._index(self.cond, step))
        parts = self._at(self.cond, step)
        batch = guidance.cond.shape[0]
        guidance.cond = parts[0][0].expand(batch, -1, -1)
        guidance.uncond = self._at(self.uncond, step).expand(batch, -1, -1)
        composable = len(parts) > 1 or parts[0][1] != 1.0
        guidance.parts = [(p.expand(batch, -1, -1), w) for p, w in parts] if composable else None
        if self.pooled is not None and self.uncond_pooled is not None:
            pooled = self._at(self.pooled, step)
            guidance.pooled = pooled[0].expand(batch, -1)
            guidance.uncond_pooled = self._at(self.uncond_pooled, step).expand(batch, -1)
            guidance.parts_pooled = [p.expand(batch, -1) for p in pooled] if composable else None


def composable_unet(unet, x_in, t, g: Any):
    """One UNet call for every AND part and the negative prompt, combined as
    uncond + sum of weight * CFG * (cond_i - uncond) (Liu et al. 2022, eq. 9)."""
    import torch

    parts = g.parts
    k = len(parts)
    hidden = torch.cat([*(p for p, _ in parts), g.uncond])
    added = None
    if g.pooled is not None:
        text = torch.cat([*g.parts_pooled, g.uncond_pooled])
        added = {"text_embeds": text, "time_ids": torch.cat([g.time_ids] * (k + 1))}
    kwargs = g.unet_kwargs(x_in.shape[0] * (k + 1)) if hasattr(g, "unet_kwargs") else {}
    out = unet(torch.cat([x_in] * (k + 1)), t, encoder_hidden_states=hidden, added_cond_kwargs=added, **kwargs).sample
    chunks = out.chunk(k + 1)
    uncond = chunks[-1]
    result = uncond.clone()
    for (_, weight), cond in zip(parts, chunks[:-1], strict=True):
        result = result + (cond - uncond) * (weight * g.cfg_scale)
    return result


def build(model: Any, prompt: str, negative: str, steps: int, clip_skip: int = 1,
          hires_steps: int | None = None) -> ScheduledGuidance:
    """Encode every distinct text of the prompt's schedule once (engine/conditioning.py),
    all padded to the same number of 75-token chunks."""
    import torch

    from engine.conditioning import encode_prompts

    parts = composable_parts(prompt)
    part_schedules = [schedule(text, steps, hires_steps) for text, _ in parts]
    negative_schedule = schedule(negative, steps, hires_steps)
    texts = {t for s in part_schedules for _, t in s} | {t for _, t in negative_schedule}
    encoded = {}
    for text in texts:
        c = encode_prompts(model, text, "", clip_skip)
        encoded[text] = (c.cond, c.pooled)
    longest = max(e.shape[1] for e, _ in encoded.values())
    empty = encoded.get("") or (encode_prompts(model, "", "", clip_skip).cond, None)

    def padded(e):
        if e.shape[1] == longest:
            return e
        chunks = (longest - e.shape[1]) // empty[0].shape[1]
        return torch.cat([e, *[empty[0]] * chunks], dim=1)

    boundaries = sorted({last for s in part_schedules for last, _ in s})
    cond, pooled = [], []
    for last in boundaries:
        at = [ScheduledGuidance._at(s, last) for s in part_schedules]
        cond.append((last, [(padded(encoded[t][0]), w) for t, (_, w) in zip(at, parts, strict=True)]))
        pooled.append((last, [encoded[t][1] for t in at]))
    uncond = [(last, padded(encoded[t][0])) for last, t in negative_schedule]
    sdxl = encoded[next(iter(texts))][1] is not None
    uncond_pooled = [(last, encoded[t][1]) for last, t in negative_schedule] if sdxl else None
    return ScheduledGuidance(cond, uncond, pooled if sdxl else None, uncond_pooled)
