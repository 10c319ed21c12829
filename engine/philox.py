"""NVIDIA's CUDA normal generator (Philox 4x32-10 + Box-Muller), on the CPU.

torch.randn on a CUDA device draws from curand's Philox; the same seed gives
other numbers on the CPU. The WebUI's "NV" RNG source emulates the CUDA draw
in numpy so a picture made on an NVIDIA GPU can be made again anywhere; this is
that emulation (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2,
3", for Philox; torch's CUDA kernels for how counter, key and offset are laid
out: element i of a draw uses counter (offset, 0, i, 0) and key = the seed, and
keeps the first of Box-Muller's two outputs). No library offers it.
"""

from __future__ import annotations

import numpy as np

PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # key schedule (Weyl) increments
TWO_POW32_INV = np.float32(2.3283064e-10)
TWO_POW32_INV_2PI = np.float32(2.3283064e-10 * 6.2831855)


def _mulhilo(a: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    product = a.astype(np.uint64) * np.uint64(m)
    return (product >> np.uint64(32)).astype(np.uint32), (product & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def philox4x32(counter: list[np.ndarray], key: list[np.ndarray], rounds: int = 10) -> list[np.ndarray]:
    """Philox 4x32: `counter` four uint32 arrays, `key` two; returns four uint32 arrays."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        hi0, lo0 = _mulhilo(c0, PHILOX_M[0])
        hi1, lo1 = _mulhilo(c2, PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if r < rounds - 1:
            k0 = (k0 + np.uint32(PHILOX_W[0])).astype(np.uint32)
            k1 = (k1 + np.uint32(PHILOX_W[1])).astype(np.uint32)
    return [c0, c1, c2, c3]


def _box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The first of the two normals Box-Muller makes of two uniform uint32s (curand's
    float32 scale constants; the arithmetic in float64, rounded once at the end)."""
    scale, scale_2pi = np.float64(TWO_POW32_INV), np.float64(TWO_POW32_INV_2PI)
    u = x.astype(np.float64) * scale + scale / 2
    v = y.astype(np.float64) * scale_2pi + scale_2pi / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """Draws as torch.randn(shape, device="cuda", generator=seeded) does, call after call."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.offset = 0  # one per draw, as torch advances it for a small tensor

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        zeros = np.zeros(n, dtype=np.uint32)
        counter = [np.full(n, self.offset, dtype=np.uint32), zeros, np.arange(n, dtype=np.uint32), zeros]
        self.offset += 1
        key = [np.full(n, self.seed & 0xFFFFFFFF, dtype=np.uint32), np.full(n, self.seed >> 32, dtype=np.uint32)]
        c = philox4x32(counter, key)
        return _box_muller(c[0], c[1]).reshape(shape)
