"""Tiled upscale: peak memory and time for outputs of 1x, 4x and 16x the area.

    .venv/bin/python bench/upscale.py [--quick]

Each size runs in its own process (the same demo models, warmed up first),
so peak memory is measured per size: the kernel's high-water mark (VmHWM) is
reset after warm-up and read after the job. Printed as ratios to the 1x run,
because absolute numbers on a shared machine are noise. Expected: memory
ratio near 1 (set by tile size and batch, not image size) and time growing
with the tile count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def vm_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(side: int, scale: float, steps: int, denoise: float) -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from engine.demo.builder import demo_models_dir
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.params import JobParams, UpscaleParams
    from engine.registry import Registry

    engine = Engine(Registry(demo_models_dir()).scan(), ModelManager())
    image = np.random.default_rng(0).integers(0, 256, (side, side, 4), dtype=np.uint8)
    options = UpscaleParams(scale=scale, denoise=denoise, tile=64, overlap=16, tile_batch=4)
    # Warm-up on a small image: loads the models and the kernels.
    engine.run(JobParams(kind="upscale", image=image[:64, :64], steps=steps, seed=1, upscale=options))
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
    baseline = vm_rss_mib()
    tiles = []
    started = time.perf_counter()
    out = engine.run(
        JobParams(kind="upscale", image=image, steps=steps, seed=1, upscale=options),
        lambda step, total, stage, preview, tile=0, n=0: tiles.append(n) if stage == "tiled diffusion" else None,
    )
    seconds = time.perf_counter() - started
    h, w = out.images[0].shape[:2]
    print(json.dumps({"out": f"{w}x{h}", "seconds": seconds, "peak_mib": vm_hwm_mib(), "baseline_mib": baseline,
                      "tiles": max(tiles or [0])}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="outputs of 512..2048 px instead of 1024..4096")
    parser.add_argument("--child", type=int)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--denoise", type=float, default=0.5)
    args = parser.parse_args()
    if args.child:
        child(args.child, 4.0, args.steps, args.denoise)
        return
    base = 128 if args.quick else 256
    rows = []
    for factor in (1, 2, 4):  # side x1, x2, x4 = area x1, x4, x16
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(base * factor), "--steps", str(args.steps),
             "--denoise", str(args.denoise)],
            capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=True,
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first = rows[0]
    first_growth = first["peak_mib"] - first["baseline_mib"]
    print(f"{'output':>10} {'area':>5} {'tiles':>6} {'time':>7} {'time/tile':>10} {'peak RSS':>9} {'job peak over baseline':>23}")
    results = []
    for area, row in zip((1, 4, 16), rows, strict=True):
        growth = row["peak_mib"] - row["baseline_mib"]
        time_ratio = row["seconds"] / first["seconds"]
        per_tile = time_ratio / (row["tiles"] / first["tiles"])
        print(f"{row['out']:>10} {area:>4}x {row['tiles']:>6} {time_ratio:>6.2f}x {per_tile:>9.2f}x "
              f"{row['peak_mib'] / first['peak_mib']:>8.2f}x {growth:>10.0f} MiB ({growth / max(first_growth, 1):.2f}x)")
        results.append({**row, "area_ratio": area, "time_ratio": time_ratio, "time_per_tile_ratio": per_tile,
                        "memory_ratio": row["peak_mib"] / first["peak_mib"]})
    out = ROOT / "bench" / "upscale-results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"(absolute: 1x took {first['seconds']:.1f}s, peak {first['peak_mib']:.0f} MiB; written to {out.name})")


if __name__ == "__main__":
    main()
