"""Tiled VAE: encode and decode any size in memory set by the tile, not the image.

Tiles are equal (so they batch), spread evenly with overlaps sized to the
VAE's receptive field rather than a fraction of the tile, and summed with
partition-of-unity weights straight into their destination: the latent
(tiny) for the encoder, one preallocated float band a tile high for the
decoder, whose finished rows go to the uint8 result.

Tiles of a VAE with GroupNorm (SD's AutoencoderKL) would each normalise by
their own statistics, and differ from tile to tile: they share one set,
recorded on the whole input shrunk to one tile (engine/vae_norms.py, where
the choice is argued), so the tiled pass equals the untiled pass with those
statistics to one level on the seam guard's gradient. TAESD (diffusers'
AutoencoderTiny) has no GroupNorm and no attention and tiles as it is.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np

from engine import heap, vae_norms
from engine.models import free_memory, is_out_of_memory
from engine.vae_precision import full_precision

MIN_VAE_TILE = 128

# Overlaps between VAE tiles (each side), sized by the seam guard: on a smooth
# gradient the tiled pass equals the untiled one (with the same GroupNorm
# statistics, engine/vae_norms.py) to 1 level (tests/test_tiled_perf.py for
# TAESD, tests/test_vae_seams.py for SD's VAE layout). What the overlap has to
# cover is how far the missing context beyond a tile's edge (the convolutions'
# zero padding) reaches into it. TAESD: about 8 latent pixels for the decoder,
# 32 image pixels for the encoder, hidden by ramps across the whole overlap.
# SD's AutoencoderKL reaches further (3 ResNets per level, 17 latent pixels of
# receptive field): measured on its layout at random init, an error above 1
# level reaches 9 latent pixels into a decoder tile and about 50 image pixels
# into an encoder tile, so each tile's outer part is given no weight (a ramp
# of KL_RAMP in the overlap's middle) and the overlaps are 24 latent pixels
# (11 either side of the ramp: the WebUI Tiled VAE's decoder padding too) and
# 128 image pixels. diffusers' own tiling overlaps a quarter of the tile
# (16 latent pixels at 512 px) with ramps across it all: seams of the size
# measured here.
ENCODE_OVERLAP = 32  # image pixels
DECODE_OVERLAP = 8  # latent pixels
KL_ENCODE_OVERLAP = 128  # image pixels
KL_DECODE_OVERLAP = 24  # latent pixels
KL_RAMP = 2  # latent pixels


def _overlaps(vae) -> tuple[int, int, int]:
    """(encoder overlap in image pixels, decoder overlap in latent pixels, blend ramp in
    latent pixels, 0 = across the whole overlap) for this VAE."""
    if _is_tiny(vae):
        return ENCODE_OVERLAP, DECODE_OVERLAP, 0
    return KL_ENCODE_OVERLAP, KL_DECODE_OVERLAP, KL_RAMP


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


def _partition(length: int, size: int, starts: list[int], ramp: int = 0) -> list[np.ndarray]:
    """Per tile, blend weights along one axis that sum to exactly 1 everywhere,
    flat at the image's edges. With them the tiles are summed straight into the
    output, no weight buffer to divide by. Across each overlap the weight passes
    from one tile to the next by a linear ramp over the whole overlap, or, with
    `ramp`, over at most that many pixels in the overlap's middle: each tile's
    outer part, where the missing context beyond its edge (the convolutions'
    zero padding) reaches, then counts for nothing."""
    ramps = []

    def rise(n: int) -> np.ndarray:  # the later tile's weight across an overlap of n
        width = min(n, ramp) if ramp > 0 else n
        w = np.zeros(n, np.float64)
        lead = (n - width) // 2
        w[lead : lead + width] = (np.arange(width) + 0.5) / width
        w[lead + width :] = 1.0
        return w

    for i, s in enumerate(starts):
        w = np.ones(size, np.float64)
        if i > 0:  # rising across the overlap with the previous tile
            n = starts[i - 1] + size - s
            if n > 0:
                w[:n] = np.minimum(w[:n], rise(n))
        if i + 1 < len(starts):
            n = s + size - starts[i + 1]
            if n > 0:
                w[size - n :] = np.minimum(w[size - n :], 1.0 - rise(n))
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
    overlap, _, ramp = _overlaps(vae)
    th, ys = spread(height, tile, overlap, 8)
    tw, xs = spread(width, tile, overlap, 8)
    wy = _partition(height // 8, th // 8, [y // 8 for y in ys], ramp)
    wx = _partition(width // 8, tw // 8, [x // 8 for x in xs], ramp)
    cells = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    moments = None
    # One set of GroupNorm statistics for every tile (engine/vae_norms.py): recorded on the whole
    # image shrunk to one tile (so it costs one tile more, in time and memory). A VAE without
    # GroupNorm (TAESD) tiles exactly as it is.
    record = lambda: vae.encode(shrink_image(image, max(th, tw), device, vae_dtype))  # noqa: E731
    with torch.inference_mode(), (vae_norms.shared(vae.encoder, record) if len(cells) > 1 else nullcontext()):
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
    with torch.inference_mode():
        latent = moments if tiny else DiagonalGaussianDistribution(moments.to(vae_dtype)).sample(generator)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latent - shift) * vae.config.scaling_factor).to(dtype)


def shrink_image(image: np.ndarray, tile: int, device, dtype):
    """The whole image shrunk to fit one tile (area average), as the VAE's input, with the
    full image's per-channel mean and spread: the input of the GroupNorm statistics' pass."""
    import torch
    from PIL import Image

    height, width = image.shape[:2]
    scale = min(1.0, tile / max(height, width))
    size = (max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8))
    small = np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3])).resize(size, Image.BOX))
    x = _pixels(small, 0, 0, size[1], size[0], device, torch.float32)
    mean, std = _channel_moments(image)
    return _match(x, torch.tensor(mean / 127.5 - 1.0), torch.tensor(std / 127.5)).clamp_(-1.0, 1.0).to(dtype)


def _channel_moments(image: np.ndarray, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of a uint8 image, a band of rows at a time
    (a float copy of a 4096x4096 image would be 400 MiB)."""
    total, square, count = np.zeros(3), np.zeros(3), 0
    for top in range(0, image.shape[0], rows):
        band = image[top : top + rows, :, :3].reshape(-1, 3).astype(np.float64)
        total += band.sum(0)
        square += np.square(band).sum(0)
        count += band.shape[0]
    mean = total / max(1, count)
    return mean, np.sqrt(np.maximum(square / max(1, count) - mean**2, 0.0))


def _match(x, mean, std):
    """x (1xCxhxw) with the given per-channel mean and standard deviation."""
    shape = (1, -1, 1, 1)
    own_std, own_mean = x.std(dim=(0, 2, 3), unbiased=False, keepdim=True), x.mean(dim=(0, 2, 3), keepdim=True)
    gain = std.to(x).view(shape) / own_std.clamp_min(1e-6)
    return (x - own_mean) * gain + mean.to(x).view(shape)


def shrink_latent(z, tile: int):
    """The whole (unscaled) latent shrunk to fit one tile of `tile` latent pixels, with the
    full latent's per-channel mean and spread and within its range: the input of the
    decoder's GroupNorm statistics' pass."""
    import torch.nn.functional as F

    h, w = z.shape[-2:]
    scale = min(1.0, tile / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    full = z.float()
    small = F.interpolate(full, size=size, mode="area")
    std, mean = full.std(dim=(0, 2, 3), unbiased=False), full.mean(dim=(0, 2, 3))
    return _match(small, mean, std).clamp_(float(full.min()), float(full.max())).to(z.dtype)


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
    _, overlap, ramp = _overlaps(vae)
    th, ys = spread(lh, tile, overlap)
    tw, xs = spread(lw, tile, overlap)
    wy = _partition(lh * factor, th * factor, [y * factor for y in ys], ramp * factor)
    wx = _partition(lw * factor, tw * factor, [x * factor for x in xs], ramp * factor)
    out = np.empty((lh * factor, lw * factor, 3), np.uint8)
    band = np.zeros((th * factor, lw * factor, 3), np.float32)  # image rows [top, top + band_h), summed in place
    # One set of GroupNorm statistics for every tile (engine/vae_norms.py), from the whole latent
    # shrunk to one tile; nothing for a VAE without GroupNorm (TAESD).
    record = lambda: vae.decode(shrink_latent(z, max(th, tw)))  # noqa: E731
    with torch.inference_mode(), (vae_norms.shared(vae.decoder, record) if len(ys) * len(xs) > 1 else nullcontext()):
        _decode_bands(vae, z, out, band, ys, xs, th, tw, wy, wx, factor, batch)
    return out


def _decode_bands(vae, z, out, band, ys, xs, th, tw, wy, wx, factor, batch) -> None:
    import torch

    height, band_h, top = out.shape[0], band.shape[0], 0
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


