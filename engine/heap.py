"""glibc's heap: give freed tensor memory back to the system.

torch's CPU tensors come from malloc. glibc serves big blocks with mmap and
returns them on free, but the threshold for "big" moves up (to 32 MiB) each
time such a block is freed, so after the first few activations every block
of a VAE tile or an upscaler tile comes from the heap, where free memory is
kept and fragments: measured on the tiled upscale at 2048x2048, the process
held 140-270 MiB of freed memory between stages and the job's working memory
grew 1.9x from 512x512 to 2048x2048 (BENCHMARKS.md, tiled upscale). A fixed
threshold keeps blocks of 1 MiB and more on mmap (a page fault per page when
first touched: small beside the convolution that fills it); `trim()` hands
back what the heap still holds after a stage.

Plain glibc calls through ctypes: no library wraps them, and a different
allocator (jemalloc) would be a process-wide dependency the server's users
would have to preload.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20  # bytes


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc only: musl and others have no mallopt)
        return libc
    except (OSError, AttributeError):
        return None


def cap_retention(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (and so stop its upward drift); False where
    the C library is not glibc and nothing was changed."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 * threshold))


def trim() -> None:
    """Return the heap's free memory to the system (after a stage of a big job)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
