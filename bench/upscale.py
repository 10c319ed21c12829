"""Tiled upscale: the job's own working memory and its time per output
megapixel, for outputs of 1x, 4x and 16x the area.

    .venv/bin/python bench/upscale.py [--quick] [--reps N]

Each run is its own process (the same demo models, loaded and warmed up
first; the processes fork from one that has imported torch and the engine,
so each pays for loading the models but not for the imports). Working
memory = the kernel's high-water mark during the job (VmHWM, reset after
warm-up) minus the idle process's RSS with the model loaded: what
the job itself costs, not torch and the weights. The sizes run interleaved
(1x, 4x, 16x, 1x, 4x, 16x, ...), so a slow spell of the machine touches every
size alike; each ratio is printed with its spread over the repetitions.
Goals: working memory at 16x within 1.3x of 1x; time per output megapixel at
16x within 1.15x of 4x.

--quick: outputs of 512, 1024 and 2048 px (the full run: 1024..4096) with the
engine's default tiles, and 2 sampling steps instead of 3 (`--steps 2`,
denoise 0.5): a stage's memory peak does not depend on the step count, and the
time per megapixel still covers every stage. The same layout at half the scale
(every tile halved, outputs of 256..1024) was tried for speed and rejected: its
working memory grew 1.41x (1.29..1.51) from 1x to 16x where the default tiles
give 1.09x, because part of the job's memory does not shrink with the tiles;
it would have read "over" on a goal the real configuration meets.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
import warnings
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


# diffusers and transformers import their pipelines lazily, on the first model load: named here, the
# forkserver imports them once (about 3 s per child otherwise, a tenth of the phase).
PRELOAD = ["numpy", "torch", "diffusers", "engine.jobs", "engine.tiled", "engine.upscalers", "engine.models",
           "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
           "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img",
           "diffusers.loaders.single_file", "transformers.models.clip.modeling_clip", "spandrel"]


def child(side: int, scale: float, steps: int, denoise: float, pipe=None) -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from engine import runtime
    from engine.demo.builder import demo_models_dir
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.params import JobParams, UpscaleParams
    from engine.registry import Registry

    manager = ModelManager()
    runtime.configure(manager.device)  # as `serve` does: threads, heap (engine/heap.py)
    engine = Engine(Registry(demo_models_dir()).scan(), manager)
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
    usage = resource.getrusage(resource.RUSAGE_SELF)  # forkserver children are not the parent's os.times() children
    row = {"out": f"{w}x{h}", "seconds": seconds, "peak_mib": vm_hwm_mib(), "baseline_mib": baseline,
           "tiles": max(tiles or [0]), "cpu_s": usage.ru_utime + usage.ru_stime}
    if pipe is None:
        print(json.dumps(row))
    else:
        pipe.send(row)


def run_child(side: int, steps: int, denoise: float) -> dict:
    """One measurement in a fresh process, forked from the forkserver (imports done, no model loaded)."""
    ctx = multiprocessing.get_context("forkserver")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=child, args=(side, 4.0, steps, denoise, send))
    process.start()
    send.close()
    try:
        row = receive.recv()
    except EOFError:
        row = None
    process.join()
    if row is None or process.exitcode != 0:
        raise RuntimeError(f"the upscale child for {side} px exited {process.exitcode} without a result")
    w, h = (int(v) for v in row["out"].split("x"))
    row["working_mib"] = row["peak_mib"] - row["baseline_mib"]
    row["s_per_mp"] = row["seconds"] / (w * h / 1e6)
    return row


def spread(values: list[float]) -> list[float]:
    return [min(values), max(values)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="outputs of 512..2048 px instead of 1024..4096, 2 steps")
    parser.add_argument("--reps", type=int, default=0, help="repetitions of each size (default 3: a median and a spread need three)")
    parser.add_argument("--child", type=int)
    parser.add_argument("--steps", type=int, default=0, help="sampling steps before the denoise (default 4, quick 2)")
    parser.add_argument("--denoise", type=float, default=0.5)
    args = parser.parse_args()
    args.steps = args.steps or (2 if args.quick else 4)
    if args.child:  # one run by hand, in this process
        child(args.child, 4.0, args.steps, args.denoise)
        return
    summary = measure(args.quick, args.reps or 3, args.steps, args.denoise)
    print(f"memory 16x/1x {summary['memory_ratio_16x']:.2f} (spread {summary['memory_ratio_16x_spread']}), "
          f"time per MP 16x/4x {summary['time_per_mp_ratio_16x_4x']:.2f}; written to upscale-results.json")


def start_forkserver() -> None:
    """Start the children's forkserver now: its imports (PRELOAD) then run beside whatever the
    caller does next (bench/run: its own start-up) instead of before the first child."""
    from multiprocessing import forkserver

    warnings.filterwarnings("ignore")
    os.environ["PYTHONWARNINGS"] = "ignore"
    sys.path.insert(0, str(ROOT))
    multiprocessing.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()


def measure(quick: bool, reps: int = 3, steps: int = 2, denoise: float = 0.5) -> dict:
    """The interleaved runs and their table; returns the summary (also in bench/upscale-results.json).
    bench/run calls this in its own process (the children still fork from their own forkserver)."""
    # The children fork from a server process that has imported these (a few seconds each otherwise)
    # and has run nothing: torch's thread pools start in each child, never before a fork.
    start_forkserver()  # if not yet running
    base = 128 if quick else 256
    runs: dict[int, list[dict]] = {1: [], 4: [], 16: []}
    for _ in range(reps):
        for area, factor in ((1, 1), (4, 2), (16, 4)):  # side x1, x2, x4 = area x1, x4, x16 (interleaved)
            runs[area].append(run_child(base * factor, steps, denoise))
    print(f"{'output':>10} {'area':>5} {'tiles':>6} {'working MiB':>12} {'vs 1x':>6} {'s/MP':>7} {'vs 4x':>6}")
    memory = {a: [r["working_mib"] for r in rows] for a, rows in runs.items()}
    per_mp = {a: [r["s_per_mp"] for r in rows] for a, rows in runs.items()}
    # Per repetition: the ratio within one interleaved round, then the median and spread over rounds.
    mem_ratios = {a: [m / max(one, 1.0) for m, one in zip(memory[a], memory[1], strict=True)] for a in runs}
    time_ratios = {a: [t / four for t, four in zip(per_mp[a], per_mp[4], strict=True)] for a in runs}
    for area, rows in runs.items():
        print(f"{rows[0]['out']:>10} {area:>4}x {rows[0]['tiles']:>6} {statistics.median(memory[area]):>12.0f} "
              f"{statistics.median(mem_ratios[area]):>5.2f}x {statistics.median(per_mp[area]):>7.2f} "
              f"{statistics.median(time_ratios[area]):>5.2f}x")
    summary = {
        "memory_ratio_16x": statistics.median(mem_ratios[16]),
        "memory_ratio_16x_spread": spread(mem_ratios[16]),
        "memory_ratio_4x": statistics.median(mem_ratios[4]),
        "time_per_mp_ratio_16x_4x": statistics.median(time_ratios[16]),
        "time_per_mp_ratio_16x_4x_spread": spread(time_ratios[16]),
        "working_mib_1x": statistics.median(memory[1]),
        "working_mib_16x": statistics.median(memory[16]),
        "sizes": [rows[0]["out"] for rows in runs.values()],
        "steps": steps,
        "reps": reps,
        "children_cpu_s": sum(r.get("cpu_s", 0.0) for rows in runs.values() for r in rows),
    }
    out = ROOT / "bench" / "upscale-results.json"
    out.write_text(json.dumps({"summary": summary, "runs": {str(a): r for a, r in runs.items()}}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
