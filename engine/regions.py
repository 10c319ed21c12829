"""Regions: a prompt per area of the picture, by MultiDiffusion region control.

Each region is a mask (soft edges allowed), a prompt, an optional negative
prompt and a weight; the base prompt covers what no region covers. At every
step the UNet predicts the noise once per distinct prompt, and the guided
predictions are blended pixel by pixel with the masks as weights. This is the
closed form of the MultiDiffusion step (Bar-Tal et al. 2023, §3.1, eq. 5):

    Psi(J_t | z) = sum_i  F_i^-1(W_i) (x) F_i^-1(Phi(I_t^i | y_i))  /  sum_j F_j^-1(W_j)

with every F_i the identity (each region sees the whole latent), W_i =
weight_i * mask_i, y_i the region's prompt, and the background "region" the
base prompt with W_0 = clip(1 - sum_i mask_i, 0, 1). The blend is taken on the
guided model output (eps or v); the denoiser turns it into x0 linearly with
the same x, so blending there equals blending the x0 estimates.

Why MultiDiffusion and not attention masking (restricting each prompt's
cross-attention to its mask): it needs no change inside the UNet (its
attention processors, PEFT LoRA layers and a compiled UNet stay as they are,
for SD1.5, SD2 and SDXL alike); soft masks mean exactly what they say (a
weight in a weighted mean); each region gets its own CFG with its own
negative prompt; and it composes with the tiled upscale, which is already
MultiDiffusion over tiles: a tile uses its crop of the region weights. The
cost is one UNet evaluation per distinct prompt per step, batched together
(halved on out-of-memory), where attention masking needs one.

Prompt editing and alternation ([from:to:when], [a|b]) work in the base and
the region prompts: each distinct text is encoded once, and at every model
call the blend takes each entry's conditioning for the step the WebUI would
be at (counted as engine/prompt_schedule.py counts). Composable prompts
(AND) are refused with regions: a region is already one weighted prompt.

LoRAs stay global: a LoRA changes the UNet's weights for every image in the
batch, so a per-region LoRA would need the UNet run once per LoRA set with the
adapters switched between runs; that is not done, and a `<lora:...>` in a
region's prompt is refused (put it in the base prompt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from engine.conditioning import encode_prompts
from engine.denoiser import Guidance, guided_unet
from engine.errors import EngineError
from engine.models import free_memory, is_out_of_memory
from engine.params import RegionParams
from engine.prompt_schedule import ScheduledGuidance, is_plain
from engine.prompt_schedule import schedule as _schedule
from engine.prompts import extract_loras

Fit = Callable[[Image.Image], Image.Image]  # a full-size mask -> the work area's frame


def check_regions(regions: list[RegionParams]) -> None:
    """What the engine refuses before any model work."""
    for i, region in enumerate(regions):
        for name, text in (("prompt", region.prompt), ("negative_prompt", region.negative_prompt or "")):
            if extract_loras(text)[1]:
                raise EngineError("invalid_request", "LoRAs apply to the whole picture: put <lora:...> in the base "
                                  "prompt, not in a region's", field=f"regions[{i}].{name}")


@dataclass
class _Prompt:
    """One distinct text's conditioning (1 x L x C), the unit of a UNet batch entry."""

    hidden: Any
    pooled: Any = None


class RegionControl:
    """The encoded prompts of a job's regions and their masks in the work area.

    Built once per job (`prepare`); `predictor` gives the denoiser's predict
    function for a latent of a given size, `weights` the per-prompt blend
    weights at that size (cropped for tiles)."""

    def __init__(self, prompts: list[_Prompt], pairs: list[tuple[int, int]], masks: list[np.ndarray],
                 region_weights: list[float], cfg_scale: float,
                 schedule: list[tuple[int, list[tuple[int, int]]]] | None = None) -> None:
        self.prompts = prompts  # distinct conditionings
        self.pairs = pairs  # per blend entry (0 = the base prompt): (cond index, uncond index) into prompts
        # Scheduled prompts: [(last step, pairs)...] as engine/prompt_schedule.py counts steps; None = fixed.
        self.schedule = schedule
        self.calls = 0  # model calls of the current pass (reset by `predictor` / the tiled upscale)
        self.masks = masks  # per region: uint8 in the work area's frame, at latent resolution (1/8) once fitted
        self.region_weights = region_weights
        self.cfg_scale = cfg_scale
        self.batch = len(prompts)  # conditionings per UNet call; halved on out-of-memory

    def fitted(self, fit: Fit) -> RegionControl:
        """The same prompts with masks moved into another frame (a crop, a
        resize) and kept at the latent's resolution (area-averaged, so soft
        edges and thin strokes keep their share): what is held per region is
        1/64 of the work area, however small the mask that was stretched onto it."""
        masks = []
        for m in self.masks:  # one full-size mask at a time
            work = fit(Image.fromarray(m, "L")).convert("L")
            masks.append(np.asarray(work.resize((max(1, work.width // 8), max(1, work.height // 8)), Image.BOX)))
        return RegionControl(self.prompts, self.pairs, masks, self.region_weights, self.cfg_scale, self.schedule)

    def advance(self) -> None:
        """Before each model call: the entries' conditionings for this step."""
        if self.schedule is not None:
            from engine.prompt_schedule import ScheduledGuidance

            self.pairs = ScheduledGuidance._at(self.schedule, self.calls)
        self.calls += 1

    def weights(self, lh: int, lw: int, device) -> Any:
        """(1 + regions) x 1 x 1 x lh x lw blend weights summing to 1 per pixel:
        the base prompt first. Same size as the fitted masks, except in hires
        fix's second pass (bilinear up) or in a resize elsewhere (area down)."""
        import torch

        def sized(m: np.ndarray) -> np.ndarray:
            image = Image.fromarray(m, "L")
            if image.size != (lw, lh):
                image = image.resize((lw, lh), Image.BILINEAR if lw > image.width else Image.BOX)
            return np.asarray(image, np.float32) / 255.0

        small = [sized(m) for m in self.masks]
        masks = torch.from_numpy(np.stack(small)) if small else torch.zeros((0, lh, lw))
        strength = torch.tensor(self.region_weights, dtype=torch.float32)[:, None, None] * masks
        base = (1.0 - masks.sum(0)).clamp(0.0, 1.0)
        total = base + strength.sum(0)
        base = base + (total <= 1e-6).float()  # covered only by weight-0 regions: the base prompt paints it
        w = torch.cat([base[None], strength])
        w = w / w.sum(0, keepdim=True)
        return w[:, None, None].to(device)

    def predictor(self, unet, guidance: Guidance, extra: Any, weights: Any, control: Any = None
                  ) -> Callable[[Any, Any], Any]:
        """predict(x, t) for engine/denoiser.py: the masks' blend of every
        prompt's guided prediction. `guidance` supplies the batch size, the
        SDXL size conditioning and whether CFG runs; its texts are replaced.
        `control` (engine.control.Control): ControlNet units, whose residuals
        each prompt's batch entries get under that prompt's conditioning."""
        self.calls = 0

        def predict(x, t):
            self.advance()
            return self.blend(unet, x, t, guidance, extra, weights, control)

        return predict

    def blend(self, unet, x, t, guidance: Guidance, extra: Any, weights: Any, control: Any = None, crops: Any = None):
        """Eq. 5: sum_i W_i * guided_i, W normalised per pixel. `weights` is
        (1 + regions) x B' x 1 x h x w with B' 1 or the batch (tiles);
        `control` and `crops` as in engine.denoiser.guided_unet."""

        flat = weights.flatten(1)
        active = [i for i in range(len(self.pairs)) if bool(flat[i].max() > 0)]
        if active == [0]:  # only the base prompt here: exactly the plain call, with this step's base prompt
            return guided_unet(unet, x, t, self._base(guidance, x.shape[0]), extra, control, crops)
        guided = guidance.guided
        wanted = sorted({k for i in active for k in (self.pairs[i] if guided else self.pairs[i][:1])})
        # A ControlNet's residuals depend on the text it is given, so each entry gets its own; the
        # "control matters more" mode gives them to conditional entries only (engine/control.py).
        conditional = {cond for cond, _ in self.pairs}
        outputs = self._run(unet, x, t, guidance, extra, wanted, control, crops, conditional)
        result = None
        for i in active:
            cond, uncond = self.pairs[i]
            out = outputs[cond].float()
            if guided:
                base = outputs[uncond].float()
                out = base + guidance.cfg_scale * (out - base)
            part = out * weights[i]
            result = part if result is None else result + part
        assert result is not None
        return result.to(x.dtype)

    def _base(self, guidance: Guidance, n: int) -> Guidance:
        """`guidance` with the base prompt's conditioning of this step (scheduled prompts)."""
        if self.schedule is None:
            return guidance
        cond, uncond = self.prompts[self.pairs[0][0]], self.prompts[self.pairs[0][1]]
        base = replace(guidance, cond=cond.hidden.expand(n, -1, -1), uncond=uncond.hidden.expand(n, -1, -1))
        if guidance.pooled is not None:
            base.pooled, base.uncond_pooled = cond.pooled.expand(n, -1), uncond.pooled.expand(n, -1)
        return base

    def _run(self, unet, x, t, guidance: Guidance, extra: Any, wanted: list[int], control: Any = None,
             crops: Any = None, conditional: set[int] | None = None) -> dict[int, Any]:
        """The model output for x under each wanted conditioning: conditionings
        of one token length batched together, `self.batch` at a time."""
        import torch

        if not torch.is_tensor(t):
            t = torch.tensor(float(t), device=x.device)
        x_in = torch.cat([x, extra.to(x.dtype)], dim=1) if extra is not None else x
        n = x.shape[0]
        groups: dict[int, list[int]] = {}
        for k in wanted:
            groups.setdefault(self.prompts[k].hidden.shape[1], []).append(k)
        outputs: dict[int, Any] = {}
        for keys in groups.values():
            start = 0
            while start < len(keys):
                chunk = keys[start : start + self.batch]
                try:
                    out = self._call(unet, x, x_in, t, guidance, chunk, control, crops, conditional or set())
                except Exception as exc:
                    if not is_out_of_memory(exc) or self.batch == 1:
                        raise
                    free_memory()
                    self.batch = max(1, self.batch // 2)
                    continue
                for j, k in enumerate(chunk):
                    outputs[k] = out[j * n : (j + 1) * n]
                start += len(chunk)
        return outputs

    def _call(self, unet, x, x_in, t, guidance: Guidance, keys: list[int], control: Any, crops: Any,
              conditional: set[int]):
        import torch

        n = x_in.shape[0]
        hidden = torch.cat([self.prompts[k].hidden.expand(n, -1, -1) for k in keys])
        added = None
        if guidance.time_ids is not None:
            pooled = torch.cat([self.prompts[k].pooled.expand(n, -1) for k in keys])
            added = {"text_embeds": pooled, "time_ids": guidance.time_ids.repeat(len(keys), 1)}
        batch = x_in.repeat(len(keys), 1, 1, 1)
        residuals = {}
        if control:  # ControlNets see the latent alone, without an inpainting model's extra channels
            residuals = control.residuals(x.repeat(len(keys), 1, 1, 1), t, hidden, added, guidance.guided, crops,
                                          [k in conditional for k in keys])
        return unet(batch, t, encoder_hidden_states=hidden, added_cond_kwargs=added, **residuals,
                    **guidance.unet_kwargs(batch.shape[0])).sample


def prepare(model, prompt: str, negative: str, regions: list[RegionParams], cfg_scale: float, clip_skip: int,
            fit: Fit | None = None, steps: int = 0, hires_steps: int | None = None) -> RegionControl | None:
    """Encode the base and region prompts (each distinct text once) and fit
    the masks into the work area; None when the job has no regions. With
    `steps` (and a hires pass's `hires_steps`), prompt editing and alternation
    are scheduled over them."""
    if not regions:
        return None
    check_regions(regions)
    prompts: list[_Prompt] = []
    index: dict[tuple[str, int], int] = {}

    def add(text: str, hidden, pooled) -> int:
        key = (text, hidden.shape[1])  # the same text padded to another length is another conditioning
        if key not in index:
            index[key] = len(prompts)
            prompts.append(_Prompt(hidden, pooled))
        return index[key]

    encoded: dict[tuple[str, str], tuple[int, int]] = {}

    def pair(text: str, neg: str) -> tuple[int, int]:
        if (text, neg) not in encoded:
            c = encode_prompts(model, text, neg if cfg_scale > 1 else None, clip_skip)  # CFG 1: no unconditional pass
            encoded[text, neg] = (add("+" + text, c.cond, c.pooled), add("-" + neg, c.uncond, c.uncond_pooled))
        return encoded[text, neg]

    entries = [(extract_loras(prompt)[0], negative)] + [
        (extract_loras(r.prompt)[0], negative if r.negative_prompt is None else r.negative_prompt) for r in regions]
    schedule = None
    if steps and not all(is_plain(text, neg) for text, neg in entries):
        texts = [(_schedule(text, steps, hires_steps), _schedule(neg, steps, hires_steps)) for text, neg in entries]
        lasts = sorted({last for t, n in texts for last, _ in (*t, *n)})
        schedule = [(last, [pair(ScheduledGuidance._at(t, last), ScheduledGuidance._at(n, last)) for t, n in texts])
                    for last in lasts]
        pairs = schedule[0][1]
    else:
        pairs = [pair(text, neg) for text, neg in entries]
    masks = [np.ascontiguousarray(r.mask) for r in regions]
    control = RegionControl(prompts, pairs, masks, [r.weight for r in regions], cfg_scale, schedule)
    return control.fitted(fit) if fit is not None else control


def infotext_fields(regions: list[RegionParams]) -> dict[str, Any]:
    """What a job's parameters record of its regions (masks cannot be text)."""
    out: dict[str, Any] = {}
    for i, r in enumerate(regions, 1):
        out[f"region_{i}_prompt"] = r.prompt
        if r.negative_prompt is not None:
            out[f"region_{i}_negative_prompt"] = r.negative_prompt
        if r.weight != 1.0:
            out[f"region_{i}_weight"] = r.weight
    return out
