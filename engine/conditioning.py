"""Prompt text -> the UNet's conditioning, with the WebUI's weighting rules.

Each prompt is parsed for emphasis, cut into 75-token chunks, every chunk
encoded as [BOS] + 75 tokens + [EOS] by each text encoder, the hidden states
multiplied by the token weights (keeping their original mean, as the WebUI's
"Original" emphasis does), and the chunks concatenated. So prompts longer
than 75 tokens are not truncated, and `(word:1.3)` means what users expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.prompts import CHUNK, Chunk, chunk_tokens, parse_attention


@dataclass
class Conditioning:
    cond: Any  # 1 x 77n x C
    uncond: Any
    pooled: Any = None  # SDXL: 1 x 1280
    uncond_pooled: Any = None

    def pipeline_kwargs(self, batch: int) -> dict[str, Any]:
        kwargs = {
            "prompt_embeds": self.cond.repeat(batch, 1, 1),
            "negative_prompt_embeds": self.uncond.repeat(batch, 1, 1),
        }
        if self.pooled is not None:
            kwargs["pooled_prompt_embeds"] = self.pooled.repeat(batch, 1)
            kwargs["negative_pooled_prompt_embeds"] = self.uncond_pooled.repeat(batch, 1)
        return kwargs


def _chunks(tokenizer, text: str, pipe=None) -> list[Chunk]:
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    comma = comma if comma != tokenizer.unk_token_id else None

    def tokenize(piece: str) -> list[int]:
        if pipe is not None and hasattr(pipe, "maybe_convert_prompt"):
            piece = pipe.maybe_convert_prompt(piece, tokenizer)  # multi-vector embeddings: name -> name name_1 ...
        return tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    return chunk_tokens(parse_attention(text), tokenize, comma)


def _final_norm(encoder):
    return getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm


def _encode_chunk(tokenizer, encoder, chunk: Chunk, layer: int, final_norm: bool, device):
    """Hidden states of one chunk (1 x 77 x C), weighted; plus the pooled output."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *chunk.tokens, *[pad] * (CHUNK - len(chunk.tokens)), tokenizer.eos_token_id]
    weights = [1.0, *chunk.weights, *[1.0] * (CHUNK - len(chunk.tokens)), 1.0]
    ids_t = torch.tensor([ids], device=device)
    out = encoder(ids_t, output_hidden_states=True)
    if layer == 1 and final_norm:
        z = out.last_hidden_state
    else:
        z = out.hidden_states[-layer]
        if final_norm:
            z = _final_norm(encoder)(z)
    if any(w != 1.0 for w in weights):
        w = torch.tensor(weights, device=device, dtype=z.dtype)[None, :, None]
        mean = z.float().mean()
        z = z * w
        z = z * (mean / z.float().mean()).to(z.dtype)
    pooled = getattr(out, "text_embeds", None)
    return z, pooled


def _encode_text(model, text: str, clip_skip: int, device) -> tuple[Any, Any, int]:
    import torch

    pipe = model.base
    if model.family == "sdxl":
        encoders = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        layer, final_norm = 1 + max(1, clip_skip), False  # SDXL reads the penultimate layer, unnormalised
    else:
        encoders = [(pipe.tokenizer, pipe.text_encoder)]
        layer, final_norm = max(1, clip_skip), True
    per_encoder, pooled = [], None
    count = 0
    for index, (tokenizer, encoder) in enumerate(encoders):
        chunks = _chunks(tokenizer, text, pipe)
        count = len(chunks)
        parts = []
        for i, chunk in enumerate(chunks):
            z, chunk_pooled = _encode_chunk(tokenizer, encoder, chunk, layer, final_norm, device)
            parts.append(z)
            if index == 1 and i == 0:
                pooled = chunk_pooled  # SDXL's pooled text embedding: the first chunk's
        per_encoder.append(torch.cat(parts, dim=1))
    return torch.cat(per_encoder, dim=2) if len(per_encoder) > 1 else per_encoder[0], pooled, count


def encode_prompts(model, prompt: str, negative: str | None, clip_skip: int = 1) -> Conditioning:
    """Conditioning for a prompt and its negative, padded to the same length.
    `negative` None: no unconditional pass will run (CFG 1, few-step models), so
    the text encoders run once and the unconditional half is the prompt's own."""
    import torch

    pipe = model.base
    device = pipe._execution_device
    with torch.inference_mode():
        cond, pooled, n_cond = _encode_text(model, prompt, clip_skip, device)
        if negative is None:
            uncond, uncond_pooled, n_uncond = cond, pooled, n_cond
        else:
            uncond, uncond_pooled, n_uncond = _encode_text(model, negative, clip_skip, device)
        if n_cond != n_uncond:
            # Both must have as many chunks: pad the shorter with empty chunks.
            empty, _, _ = _encode_text(model, "", clip_skip, device)
            if n_cond < n_uncond:
                cond = torch.cat([cond, *[empty] * (n_uncond - n_cond)], dim=1)
            else:
                uncond = torch.cat([uncond, *[empty] * (n_cond - n_uncond)], dim=1)
    dtype = pipe.unet.dtype

    def cast(t):
        return t.to(dtype) if t is not None else None

    return Conditioning(cast(cond), cast(uncond), cast(pooled), cast(uncond_pooled))
