"""torch's process-wide knobs, set once where the engine starts.

- Threads: torch's default is the machine's physical cores, even when this
  process may only use some of them (a container's CPU set, `taskset`) or
  when several workers share the machine; each would then run as many
  threads as cores and they would thrash. The default here is the CPUs this
  process may run on, and `--threads` (serve, worker) divides a machine.
- CUDA: TF32 matmuls and convolutions (Ampere and later; the precision loss is
  below fp16's, which the UNet runs in anyway) and cuDNN's autotuner, which
  picks the fastest convolution for each shape once and reuses it.
- CPU bf16 autocast (`serve/worker --cpu-bf16`, off by default): the UNet's
  matmuls and convolutions in bfloat16, its output back in the model's dtype.
  It pays only where the CPU computes bf16 natively (AVX512_BF16, AMX): 0.68x
  the step time at 512x512 on this machine's AVX512_BF16 CPU, idle (BENCHMARKS.md);
  off by default because the pictures then drift ~1% from float32's, which is
  what the WebUI computes on the CPU.
- CPU convolution layout: the VAEs and the upscaler models keep their weights
  channels-last on the CPU (`cpu_layout`); the UNet stays as it is (measured
  no faster that way, bench/cpu_knobs.py).
- Memory: glibc's mmap threshold fixed, so freed tensors leave the process
  (engine/heap.py).
"""

from __future__ import annotations

import contextlib
import functools
import os


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def configure(device: str, threads: int = 0) -> int:
    """Set the knobs for `device`; returns the CPU thread count in use."""
    import torch

    from engine import heap

    heap.cap_retention()  # freed tensors go back to the system (engine/heap.py)
    count = threads if threads > 0 else usable_cpus()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return count


def cpu_layout(module, device: str):
    """Channels-last weights for a convolution network that runs on the CPU; `module` back.

    oneDNN's CPU convolutions and PyTorch's CPU GroupNorm are fastest in a
    channels-last layout; with NCHW weights and activations each convolution
    reorders its input and output. With the weights channels-last the
    activations follow (a convolution's output takes its weight's layout).
    Measured side by side (2 threads, float32, random init of the real
    layouts; bench/cpu_knobs.py --knob layout, 512 px): SD's VAE decoding a
    64x64 latent in one pass 0.85-0.89x the time (spread 0.79..0.91),
    encoding 512x512 0.90x (0.89..0.92); TAESD 0.67-0.80x (decode) and
    0.71-0.74x (encode); an ESRGAN x4 (64 filters, 23 blocks) 0.66x
    (0.60..0.72). Neutral (0.98-1.01x) for SD's VAE in the tiled upscale,
    where the recorded statistics replace GroupNorm (engine/vae_norms.py),
    and for SD1.5's UNet (1.007, 0.98..1.02), which is left as it is. The
    results are the same to float32 rounding (1e-5). On CUDA the
    UNet is made channels-last where the model is placed (engine/models.py)."""
    import torch

    if str(device).startswith("cpu"):  # measured there only (not on MPS, say)
        module.to(memory_format=torch.channels_last)
    return module


def compile_unet(unet):
    """torch.compile with dynamic shapes: a new picture size, or the last, shorter
    batch of tiles, reuses the compiled graph instead of compiling again (the
    default specialises on every shape). No CUDA graphs ("reduce-overhead"):
    they need static shapes too."""
    import torch

    return torch.compile(unet, dynamic=True)


def cpu_autocast(enabled: bool):
    """bf16 autocast on the CPU when `enabled`, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16)


def autocast_unet(unet):
    """Run `unet` under CPU bf16 autocast; what it returns comes back in its own
    dtype (the samplers' arithmetic stays float32). Wraps the instance's forward:
    every caller (pipelines, the denoiser, tiles, ControlNet residual paths)
    goes through it unchanged."""
    import torch

    forward = unet.forward
    dtype = unet.dtype

    @functools.wraps(forward)
    def run(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(t.to(dtype) if torch.is_tensor(t) else t for t in out)
        if hasattr(out, "sample"):
            out.sample = out.sample.to(dtype)
        return out

    unet.forward = run
    return unet
