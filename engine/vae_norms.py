"""One set of GroupNorm statistics, and one attention context, for every tile of a tiled VAE pass.

SD's VAE (diffusers' AutoencoderKL) normalises with GroupNorm: each layer's
output depends on the mean and variance of its input over the *whole* image,
and the mid-block's self-attention mixes the whole image too. Cut into tiles,
each tile is normalised by its own statistics and attends to itself only, so
neighbouring tiles come out with different brightness and contrast: steps at
the tile borders that no blend ramp of a few pixels hides.

Three ways to give the tiles one set of statistics:

- exact sync (the WebUI Tiled VAE's default): run every tile up to a
  GroupNorm, sum their statistics, resume. Exact, but every tile's
  activations stay alive from one GroupNorm to the next: the whole image's
  activations (at 4096x4096 one 128-channel float layer of the decoder is
  8 GiB), the memory tiling exists to avoid; or, recomputing instead of
  keeping, one full tiled pass per GroupNorm layer (30 in SD's decoder).
- per-tile statistics (diffusers' tiled decode): flat memory, seams.
- estimated once (the WebUI Tiled VAE's "fast" mode), chosen here: one pass
  of the whole input shrunk to one tile records, per GroupNorm layer, the
  statistics it normalised with, and the keys and values of each attention;
  then every tile is normalised with those and attends to that context.
  Memory and time: one more tile. Tiles then agree with each other exactly
  (tiled = the untiled pass with the same statistics, to a level: no seams);
  what remains is how far the shrunk pass's statistics are from the full
  image's, a smooth, image-wide shift rather than a step at a border.
  Measured against diffusers' plain untiled pass on SD's VAE layout at
  random init (tests/test_vae_seams.py, 128x768, three 384-px tiles): mean
  error 6.6 levels decoding and 2.5 encoding a gradient, against 15.6 and
  9.0 with per-tile statistics, and the step between neighbouring columns
  where tiles hand over 0.02 levels on average (untiled: 0.03; per-tile
  statistics: 1.25). Random weights saturate easily, so these are upper
  marks rather than what a trained VAE gives.

The shrunk input keeps the full input's per-channel mean and spread (shrinking
averages fine detail away, and the first layers' spread with it; the WebUI
extension found the same). Attention attends to the shrunk pass's keys and
values: where the content is smooth, the full image's keys are each shrunk
key repeated, which gives the same softmax weights, so this stands for the
untiled, global attention better than a tile attending to itself.

diffusers' modules are used as they are: each GroupNorm's and each attention
projection's `forward` is replaced on the instance for the length of the
tiled pass, and restored after.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def _modules(net) -> tuple[list[Any], list[Any]]:
    """The GroupNorm layers of a VAE half, and the key and value projections of its attentions."""
    import torch
    from diffusers.models.attention_processor import Attention

    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    projections = [p for m in net.modules() if isinstance(m, Attention) for p in (m.to_k, m.to_v)]
    return norms, projections


def has_group_norm(net) -> bool:
    import torch

    return any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())


def _record_norm(module, forward: Callable, stats: dict, x):
    """GroupNorm as it is, remembering the (mean, 1/std) of each group it normalised with."""
    import torch

    if x.shape[0] != 1:  # the recording pass is one picture: its statistics are the picture's
        raise ValueError("vae_norms: the recording pass takes one image")
    var, mean = torch.var_mean(x.float().reshape(1, module.num_groups, -1), dim=-1, unbiased=False)
    stats[module] = (mean[0], torch.rsqrt(var[0] + module.eps))
    return forward(x)


def _shared_norm(scale, shift, x):
    """GroupNorm with the recorded statistics: one multiply-add per element, folded into a
    per-channel scale and shift (weight / std, bias - mean * weight / std)."""
    import torch

    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))


def _fold(module, mean, rstd):
    """Per-channel (scale, shift) from per-group (mean, 1/std) and the layer's affine weights."""
    per = module.num_channels // module.num_groups
    scale, mean = rstd.repeat_interleave(per), mean.repeat_interleave(per)
    if module.affine:
        scale = scale * module.weight.float()
        return scale, module.bias.float() - mean * scale
    return scale, -mean * scale


def _record_projection(forward: Callable, store: list, x):
    out = forward(x)
    store.append(out)
    return out


def _shared_projection(store: list, x):
    """The recorded keys (or values) for every tile of the batch, whatever the tile's own tokens."""
    recorded = store[0]
    return recorded.to(x.dtype).expand(x.shape[0], *recorded.shape[1:])


@contextmanager
def shared(net, record: Callable[[], Any], attention: bool = True) -> Iterator[bool]:
    """Inside: every GroupNorm of `net` (a VAE's encoder or decoder) normalises with the
    statistics it used while `record()` ran (one pass of the whole input, shrunk), and,
    with `attention`, every attention attends to that pass's keys and values. Yields
    False, recording nothing, for a VAE without GroupNorm (TAESD)."""
    norms, projections = _modules(net)
    if not norms:
        yield False
        return
    if not attention:
        projections = []
    patched = norms + projections
    saved = {m: m.__dict__.get("forward") for m in patched}  # an instance-level forward (a hook) stays
    try:
        stats: dict = {}
        stores: dict = {p: [] for p in projections}
        for m in norms:
            m.forward = functools.partial(_record_norm, m, saved[m] or type(m).forward.__get__(m), stats)
        for p in projections:
            p.forward = functools.partial(_record_projection, saved[p] or type(p).forward.__get__(p), stores[p])
        record()
        missing = [m for m in norms if m not in stats]
        if missing or any(len(s) != 1 for s in stores.values()):
            raise RuntimeError("vae_norms: the recording pass did not run every layer exactly once")
        for m in norms:
            m.forward = functools.partial(_shared_norm, *_fold(m, *stats[m]))
        for p in projections:
            p.forward = functools.partial(_shared_projection, stores[p])
        yield True
    finally:
        for m in patched:
            if saved[m] is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = saved[m]
