"""Tiled VAE: encode and decode any size in memory set by the tile, not the image.

Tiles are equal (so they batch), spread evenly with overlaps sized to the
VAE's receptive field rather than a fraction of the tile, and summed with
partition-of-unity weights straight into their destination: the latent
(tiny) for the encoder, one preallocated float band a tile high for the
decoder, whose finished rows go to the uint8 result.

Tiles of a VAE with GroupNorm (SD's AutoencoderKL) each normalise by their
own statistics, so tiled and untiled results differ by more than rounding;
the encoder's colour fix matches the tiled latent's per-channel statistics
to a whole-image encode at tile size, and the blend ramps hide the rest.
(Sharing one set of GroupNorm statistics from a shrunk whole-image pass, the
WebUI Tiled VAE's "fast" estimate, was tried: on the random-weight demo VAE
it was further from the untiled result than per-tile statistics.) TAESD
(diffusers' AutoencoderTiny) has no GroupNorm and no attention: tiled with
these overlaps it equals the untiled result to one level.
"""

from __future__ import annotations

import math

import numpy as np

from engine import heap
from engine.models import free_memory, is_out_of_memory
from engine.vae_precision import full_precision

MIN_VAE_TILE = 128

# Overlaps between VAE tiles, each side. The decoder's 3x3 convolutions see
# about 8 latent pixels (64 image pixels) of context that matters, the encoder
# about 32 image pixels; the seam guard (tests/test_tiled_perf.py: a smooth
# gradient tiled vs untiled, within 1 level) holds at these. diffusers' own
# tiling overlaps a quarter of the tile (128 px at 512), 1.78x the work.
ENCODE_OVERLAP = 32  # image pixels
DECODE_OVERLAP = 8  # latent pixels


def _with_vae_tiles(vae, tile: int, fn):
    """Run fn() with diffusers' VAE tiling at `tile` pixels; halve on OOM (SUPIR's encoder)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    while True:
        vae.enable_tiling()
        vae.tile_sample_min_size = tile
        vae.tile_latent_min_size = tile // factor
        try:
            return fn()
        except Exception as exc:
            if not is_out_of_memory(exc) or tile // 2 < MIN_VAE_TILE:
                raise
            free_memory()
            tile //= 2
        finally:
            vae.disable_tiling()


def spread(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, list[int]]:
    """Equal tiles covering `length` with at least `overlap` between neighbours,
    as few and as small as that allows: (tile size, starts).

    Fixed-stride tiles with the last one pushed back to the edge can overlap
    by most of a tile (at 1024 px, 512-px tiles of stride 448 make three tiles
    whose last overlap is 384 px); spreading n tiles evenly and shrinking them
    to what covers the length keeps every overlap near `overlap`. Equal sizes
    let the tiles run as one batch. Sizes and starts are multiples of
    `multiple` (the UNet's downsampling; 8 image pixels per latent pixel)."""
    if length <= tile:
        return length, [0]
    overlap = min(overlap, tile // 2)
    count = math.ceil((length - overlap) / (tile - overlap))
    size = min(tile, -(-math.ceil((length + (count - 1) * overlap) / count) // multiple) * multiple)
    last = length - size
    starts = sorted({min(last, round(i * last / (count - 1) / multiple) * multiple) for i in range(count)})
    return size, starts


def _partition(length: int, size: int, starts: list[int]) -> list[np.ndarray]:
    """Per tile, blend weights along one axis that sum to exactly 1 everywhere:
    linear ramps across each overlap, flat at the image's edges. With them the
    tiles are summed straight into the output, no weight buffer to divide by."""
    ramps = []
    for i, s in enumerate(starts):
        w = np.ones(size, np.float64)
        if i > 0:  # rising across the overlap with the previous tile
            n = starts[i - 1] + size - s
            if n > 0:
                w[:n] = np.minimum(w[:n], (np.arange(n) + 0.5) / n)
        if i + 1 < len(starts):
            n = s + size - starts[i + 1]
            if n > 0:
                w[size - n :] = np.minimum(w[size - n :], ((np.arange(n) + 0.5) / n)[::-1])
        ramps.append(w)
    total = np.zeros(length, np.float64)
    for s, w in zip(starts, ramps, strict=True):
        total[s : s + size] += w
    return [(w / total[s : s + size]).astype(np.float32) for s, w in zip(starts, ramps, strict=True)]


def _is_tiny(vae) -> bool:
    """TAESD-class approximate VAE (diffusers' AutoencoderTiny): latents directly, no distribution."""
    return type(vae).__name__ == "AutoencoderTiny"


def _vae_factor(vae) -> int:
    """Image pixels per latent pixel."""
    if _is_tiny(vae):
        return vae.config.upsampling_scaling_factor ** (len(vae.config.decoder_block_out_channels) - 1)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode(vae, image: np.ndarray, tile: int, generator, device, dtype, batch: int = 1):
    """HxWx3 uint8 -> scaled latent (1x4xh/8xw/8), tiled, with the colour fix.

    Written here rather than with diffusers' tiled encode, which converts the
    whole image to float first (200 MiB at 4096x4096) and overlaps a quarter
    of each tile: tiles are cut from the uint8 image and converted one batch
    at a time, `batch` equal tiles per encoder call (as the UNet's tiles run),
    and their latent moments are summed with partition-of-unity weights into
    one latent-sized buffer. The tile is halved on out-of-memory.
    """
    image = np.asarray(image)
    with full_precision(vae):  # SDXL's VAE overflows in float16
        while True:
            try:
                return _encode(vae, image, tile, generator, device, dtype, batch)
            except Exception as exc:
                tile, batch = _smaller(exc, tile, batch)
            finally:
                heap.trim()


def _smaller(exc: Exception, tile: int, batch: int) -> tuple[int, int]:
    """After out-of-memory: half the batch, then half the tile; anything else is raised."""
    if not is_out_of_memory(exc) or (batch <= 1 and tile // 2 < MIN_VAE_TILE):
        raise exc
    free_memory()
    return (tile, batch // 2) if batch > 1 else (tile // 2, 1)


def _pixels(image: np.ndarray, y: int, x: int, th: int, tw: int, device, dtype):
    """A crop of the uint8 image as the VAE's -1..1 input (1x3xhxw)."""
    import torch

    crop = torch.from_numpy(np.array(image[y : y + th, x : x + tw, :3])).permute(2, 0, 1)[None]
    return crop.to(device=device, dtype=dtype).div_(127.5).sub_(1.0)


def _encode(vae, image: np.ndarray, tile: int, generator, device, dtype, batch: int):
    import torch
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    height, width = image.shape[:2]
    vae_dtype = next(vae.parameters()).dtype
    tiny = _is_tiny(vae)
    th, ys = spread(height, tile, ENCODE_OVERLAP, 8)
    tw, xs = spread(width, tile, ENCODE_OVERLAP, 8)
    wy, wx = _partition(height // 8, th // 8, [y // 8 for y in ys]), _partition(width // 8, tw // 8, [x // 8 for x in xs])
    cells = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    moments = None
    with torch.inference_mode():
        for k in range(0, len(cells), max(1, batch)):
            group = cells[k : k + max(1, batch)]
            x = torch.cat([_pixels(image, ys[i], xs[j], th, tw, device, vae_dtype) for i, j in group])
            out = vae.encode(x).latents if tiny else vae.encode(x).latent_dist.parameters
            if moments is None:
                moments = torch.zeros((1, out.shape[1], height // 8, width // 8), device=device, dtype=torch.float32)
            for n, (i, j) in enumerate(group):
                w = torch.from_numpy(wy[i][:, None] * wx[j][None, :]).to(device)
                y, x0 = ys[i] // 8, xs[j] // 8
                moments[:, :, y : y + th // 8, x0 : x0 + tw // 8] += out[n : n + 1].float() * w
            del x, out
        assert moments is not None
        latent = moments if tiny else DiagonalGaussianDistribution(moments.to(vae_dtype)).sample(generator)
        if len(cells) > 1 and not tiny:
            # Colour fix: GroupNorm normalises each tile by its own statistics, so the tiled
            # latent's per-channel mean and spread are matched to a whole-image encode at tile size.
            small = _area_small(image, tile, device, vae_dtype)
            reference = vae.encode(small).latent_dist.mean
            mean, std = latent.mean(dim=(2, 3), keepdim=True), latent.std(dim=(2, 3), keepdim=True)
            ref_mean, ref_std = reference.mean(dim=(2, 3), keepdim=True), reference.std(dim=(2, 3), keepdim=True)
            latent = (latent - mean) / std.clamp_min(1e-6) * ref_std + ref_mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latent - shift) * vae.config.scaling_factor).to(dtype)


def _area_small(image: np.ndarray, tile: int, device, dtype):
    """The whole image shrunk to fit one tile (area average), as the VAE's input."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = tile / max(height, width)
    size = (max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8))
    small = np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3])).resize(size, Image.BOX))
    return _pixels(small, 0, 0, size[1], size[0], device, dtype)


def decode(vae, latent, tile: int, batch: int = 1) -> np.ndarray:
    """Scaled latent -> HxWx3 uint8, decoded in overlapping tiles.

    Written here rather than using diffusers' tiled decode, which keeps every
    decoded tile in float32 until the end (about 3x the image at 4096x4096):
    one row of tiles is summed (partition-of-unity weights, `batch` equal
    tiles per decoder call) into one preallocated float band a tile high, and
    the rows no later tile touches go straight into the uint8 result, so the
    working memory is set by the tile, not the image. The tile is halved on
    out-of-memory.
    """
    with full_precision(vae):  # SDXL's VAE overflows in float16
        vae_dtype = next(vae.parameters()).dtype
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        z = (latent / vae.config.scaling_factor + shift).to(vae_dtype)
        factor = _vae_factor(vae)
        while True:
            try:
                return _decode_rows(vae, z, max(1, tile // factor), factor, batch)
            except Exception as exc:
                tile, batch = _smaller(exc, tile, batch)
            finally:
                heap.trim()


def _decode_rows(vae, z, tile: int, factor: int, batch: int) -> np.ndarray:
    import torch

    _, _, lh, lw = z.shape
    th, ys = spread(lh, tile, DECODE_OVERLAP)
    tw, xs = spread(lw, tile, DECODE_OVERLAP)
    wy = _partition(lh * factor, th * factor, [y * factor for y in ys])
    wx = _partition(lw * factor, tw * factor, [x * factor for x in xs])
    height, width, band_h = lh * factor, lw * factor, th * factor
    out = np.empty((height, width, 3), np.uint8)
    band = np.zeros((band_h, width, 3), np.float32)  # image rows [top, top + band_h), summed in place
    top = 0
    for row, y in enumerate(ys):
        y0 = y * factor
        for k in range(0, len(xs), max(1, batch)):
            cols = range(k, min(len(xs), k + max(1, batch)))
            with torch.inference_mode():
                tiles = torch.cat([z[:, :, y : y + th, xs[c] : xs[c] + tw] for c in cols])
                pixels = vae.decode(tiles).sample.float().clamp_(-1, 1).add_(1.0).mul_(127.5)
                for n, c in enumerate(cols):
                    w = torch.from_numpy(wy[row][:, None] * wx[c][None, :])
                    part = (pixels[n] * w.to(pixels.device)).permute(1, 2, 0).cpu().numpy()
                    x0 = xs[c] * factor
                    band[y0 - top : y0 - top + band_h, x0 : x0 + tw * factor] += part
                del tiles, pixels
        nxt = ys[row + 1] * factor if row + 1 < len(ys) else height  # rows before it are final
        done = nxt - top
        np.rint(band[:done], out=band[:done])
        out[top:nxt] = band[:done]
        keep = band_h - done
        if keep > 0:
            band[:keep] = band[done:].copy()
        band[max(0, keep):] = 0.0
        top = nxt
    return out


