"""CPU knobs, measured: bf16 autocast against float32 for the real SD1.5 UNet
(859.5M parameters, random init from the bundled config; speed does not
depend on the weights' values), one denoising step (batch 2: cond + uncond),
interleaved repetitions, the ratio's spread, and how far bf16's output drifts.

    .venv/bin/python bench/cpu_knobs.py [--size 256] [--reps 3]

bf16 only pays where the CPU has bf16 dot products (AVX512_BF16, AMX-BF16);
elsewhere oneDNN emulates it. The script prints which the CPU has. Writes
bench/cpu-knobs-results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    import torch
    from diffusers import UNet2DConditionModel

    from engine import runtime
    from engine.families import SD15

    runtime.configure("cpu")
    config = json.loads((SD15.config_dir / "unet" / "config.json").read_text())
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).eval()
    side = args.size // 8
    latent = torch.randn(2, 4, side, side)
    context = torch.randn(2, 77, config["cross_attention_dim"])

    def step(bf16: bool) -> torch.Tensor:
        with torch.inference_mode(), runtime.cpu_autocast(bf16):
            return unet(latent, 500, encoder_hidden_states=context).sample.float()

    reference, lowered = step(False), step(True)  # warm both (oneDNN primitives, allocator)
    drift = ((lowered - reference).abs().max() / reference.abs().max()).item()
    # Wall seconds, and CPU seconds of this process (all its threads): on a machine shared with other work
    # the CPU time is the steadier of the two (it does not count the time others hold the cores).
    times: dict[str, list[float]] = {"fp32": [], "bf16": [], "fp32_cpu": [], "bf16_cpu": []}
    for _ in range(args.reps):
        for name in ("fp32", "bf16"):
            started, cpu = time.perf_counter(), time.process_time()
            step(name == "bf16")
            times[name].append(time.perf_counter() - started)
            times[name + "_cpu"].append(time.process_time() - cpu)
    pairs = sorted(b / f for b, f in zip(times["bf16"], times["fp32"], strict=True))
    cpu_pairs = sorted(b / f for b, f in zip(times["bf16_cpu"], times["fp32_cpu"], strict=True))
    results = {
        "cpu_bf16_flags": cpu_flags(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "fp32_step_s": statistics.median(times["fp32"]),
        "bf16_step_s": statistics.median(times["bf16"]),
        "bf16_vs_fp32_time_ratio": statistics.median(pairs),
        "bf16_vs_fp32_time_ratio_spread": [pairs[0], pairs[-1]],
        "bf16_vs_fp32_cpu_time_ratio": statistics.median(cpu_pairs),
        "bf16_vs_fp32_cpu_time_ratio_spread": [cpu_pairs[0], cpu_pairs[-1]],
        "bf16_max_rel_drift": drift,
    }
    (ROOT / "bench" / "cpu-knobs-results.json").write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key:<34} {value}")


if __name__ == "__main__":
    main()
