"""PaintBridge benchmarks: every figure is a ratio of two things measured
side by side in one run (interleaved, several repetitions, median), because
absolute times on shared machines are noise.

    bench/run [--quick]

Writes bench/results.json and prints a table. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def samples(a: Callable[[], object], b: Callable[[], object], reps: int) -> tuple[list[float], list[float]]:
    """Seconds of each run of a and b, alternately (a, b, a, b, ...): interleaving cancels slow drifts."""
    ta, tb = [], []
    for _ in range(reps):
        for fn, times in ((a, ta), (b, tb)):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return ta, tb


def ratio(name: str, numerator: list[float], denominator: list[float]) -> dict:
    """The median of the per-pair ratios, and their spread (lowest, highest): a
    figure whose spread straddles its goal proves nothing either way."""
    pairs = sorted(n / d for n, d in zip(numerator, denominator, strict=True))
    return {name: statistics.median(pairs), f"{name}_spread": [pairs[0], pairs[-1]], f"{name}_reps": len(pairs)}


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def demo_engine():
    from engine.demo.builder import demo_models_dir
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    return Engine(Registry(demo_models_dir()).scan(), ModelManager())


class InProcessServer:
    """The real server on a free loopback port, its event loop on a thread."""

    def __init__(self, engine) -> None:
        from bridge_server.config import ServerConfig
        from bridge_server.server import PaintBridgeServer

        self.loop = asyncio.new_event_loop()
        config = ServerConfig(models_dir=engine.registry.root, port=0, preload=False)
        self.server = PaintBridgeServer(config, engine)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(30)
        self.url = f"ws://127.0.0.1:{self.server.port}"


def bench_server_overhead(engine, server, reps: int) -> dict:
    from bridge_server.convert import to_params
    from protocol import JobRequest
    from protocol.shell.client import Client

    request = JobRequest(prompt="a cat", width=512, height=512, steps=4, seed=1, preview=False)
    client = Client(server.url)
    client.connect()
    remote, direct = samples(lambda: client.run(request), lambda: engine.run(to_params(request)), reps)
    client.close()
    return {**ratio("server_overhead_ratio", remote, direct), "direct_s": statistics.median(direct)}


def bench_transfer(server, reps: int) -> dict:
    """A 4096x4096 RGBA layer as a job input and back as its result, over
    loopback, against the four msgpack operations such a round trip really does
    (client packs the submit, server unpacks it, server packs the result,
    client unpacks it) with plain msgpack on the same bytes. Protocol 3 (pixels
    out of band) is the figure; a protocol-2 client (pixels inside msgpack) runs
    in the same rounds, interleaved, to show what the old path costs."""
    import msgpack

    from protocol import JobRequest, RawImage
    from protocol.shell.client import Client

    side = 4096
    image = RawImage(side, side, 4, np.random.default_rng(0).integers(0, 256, side * side * 4, np.uint8).tobytes())
    request = JobRequest(kind="img2img", image=image, strength=0.0, steps=1, preview=False)  # strength 0: echo
    client, old = Client(server.url), Client(server.url, protocol=2)
    client.connect()
    old.connect()
    assert client.welcome.protocol == 3 and old.welcome.protocol == 2

    def four_ops() -> None:
        submit = msgpack.packb({"type": "submit", "ref": "r", "request": {
            "kind": "img2img", "image": {"width": side, "height": side, "channels": 4, "data": image.data}}})
        received = msgpack.unpackb(submit)["request"]["image"]["data"]
        result = msgpack.packb({"type": "result", "job_id": "j", "images": [
            {"width": side, "height": side, "channels": 4, "data": received}]})
        assert len(msgpack.unpackb(result)["images"][0]["data"]) == len(image.data)

    def over_loopback(through: Client):
        def run() -> None:
            result = through.run(request)
            assert result.images[0].data == image.data

        return run

    timed: dict[str, list[float]] = {"p3": [], "p2": [], "ops": []}
    for _ in range(reps):  # interleaved: protocol 3, the baseline, protocol 2, ...
        for key, fn in (("p3", over_loopback(client)), ("ops", four_ops), ("p2", over_loopback(old))):
            started = time.perf_counter()
            fn()
            timed[key].append(time.perf_counter() - started)
    client.close()
    old.close()
    megabytes = 2 * len(image.data) / 1e6
    return {**ratio("transfer_ratio", timed["p3"], timed["ops"]),
            **ratio("transfer_protocol2_ratio", timed["p2"], timed["ops"]),
            "transfer_mb_s": megabytes / statistics.median(timed["p3"]),
            "transfer_protocol2_mb_s": megabytes / statistics.median(timed["p2"]),
            "msgpack_mb_s": megabytes / statistics.median(timed["ops"])}


def bench_preview(server, reps: int, steps: int = 12) -> dict:
    """Previews end to end: the engine's latent->RGB, the server's encoding and
    sending, the client's decoding; against the same job without previews."""
    from protocol import JobRequest
    from protocol.shell.client import Client

    client = Client(server.url)
    client.connect()
    seen = []

    def job(preview: bool):
        request = JobRequest(prompt="x", width=512, height=512, steps=steps, seed=1, preview=preview)
        return lambda: client.run(request, on_progress=lambda p: seen.append(p.preview is not None))

    with_preview, without = samples(job(True), job(False), reps)
    client.close()
    return {**ratio("preview_cost_ratio", with_preview, without), "previews_received": sum(seen)}


def bench_engine_vs_diffusers(reps: int, size: int, keep: dict) -> dict:
    """Our engine against a plain diffusers pipeline built independently from
    the same file: the real SD1.5 architecture (UNet 859.5M parameters, random
    init) as a single-file checkpoint in the original layout. The engine loads
    it through its own registry and loader; the baseline through diffusers' own
    `from_single_file` (the bundled config, offline) with its own scheduler
    object. Same prompt, size, steps, seed; interleaved. The baseline's UNet is
    left in `keep` for the control phase."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, StableDiffusionPipeline

    from engine.demo.builder import build_real_architecture_checkpoint
    from engine.families import SD15
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.params import JobParams
    from engine.paths import cache_dir
    from engine.registry import Registry
    from engine.tokenizers import clip_tokenizer

    # Built once into the cache and reused by later runs (2.1 GB; building it is about a minute of a quick run).
    folder = cache_dir() / "bench-models"
    path = folder / "Stable-diffusion" / "sd15-architecture.safetensors"
    if not path.is_file():  # built under another name, then renamed: an interrupted build is never reused
        build_real_architecture_checkpoint(path.with_suffix(".partial.safetensors"), "sd15").rename(path)
    engine = Engine(Registry(folder).scan(), ModelManager(device="cpu", keep_spare=False))
    plain = StableDiffusionPipeline.from_single_file(
        str(path), config=str(SD15.config_dir), local_files_only=True, tokenizer=clip_tokenizer(),
        safety_checker=None, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    steps = 2

    def diffusers_with(scheduler_class):
        scheduler = scheduler_class.from_config(plain.scheduler.config, timestep_spacing="linspace")

        def run() -> None:
            plain.scheduler = scheduler
            plain("a cat", negative_prompt="", num_inference_steps=steps, guidance_scale=7.0, width=size,
                  height=size, generator=torch.Generator("cpu").manual_seed(1), output_type="np")

        return run

    def ours(sampler: str):
        return lambda: engine.run(JobParams(prompt="a cat", width=size, height=size, steps=steps, seed=1,
                                            sampler=sampler, preview=True), lambda *args, **kw: None)

    # Warm both once at a small size (loading, allocator, kernels).
    plain("x", num_inference_steps=1, width=64, height=64, output_type="np")
    engine.run(JobParams(prompt="x", width=64, height=64, steps=1))
    ea, da = samples(ours("Euler a"), diffusers_with(EulerAncestralDiscreteScheduler), reps)
    ee, de = samples(ours("Euler"), diffusers_with(EulerDiscreteScheduler), reps)
    keep["unet"] = plain.unet
    return {**ratio("engine_vs_diffusers_ratio", ea, da), **ratio("engine_euler_vs_diffusers_ratio", ee, de),
            f"sd15_{size}_{steps}steps_s": statistics.median(da)}


def bench_upscale(quick: bool) -> dict:
    """bench/upscale.py's measurement, called in this process (its children fork from their own forkserver)."""
    import upscale  # bench/upscale.py: this script's folder is first on sys.path

    with contextlib.redirect_stdout(io.StringIO()):  # its table; the figures come back in the summary
        summary = upscale.measure(quick, steps=2 if quick else 4)
    return {f"upscale_{k}": v for k, v in summary.items()}


def bench_control(quick: bool, keep: dict) -> dict:
    """One ControlNet unit's cost per step (bench/control.py, the real SD1.5 architecture), in this
    process on the UNet the diffusers phase loaded (or a random-init one when that phase is skipped):
    on the CPU, as that phase runs; `python bench/control.py` measures on the GPU where there is one."""
    import control  # bench/control.py: this script's folder is first on sys.path

    unet = keep.pop("unet", None)
    if unet is None:
        unet = control.random_unet()
    rows = control.measure(unet.eval(), DIFFUSERS_QUICK_SIZE if quick else 512, 3 if quick else 5)
    del unet
    (ROOT / "bench" / "control-results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return {"control_unit_step_ratio": rows["unit_step_ratio"],
            "control_unit_step_ratio_min": rows["unit_step_ratio_spread"][0],
            "control_unit_step_ratio_max": rows["unit_step_ratio_spread"][1],
            "control_vs_diffusers_ratio": rows["ours_vs_diffusers_ratio"]}


# --quick runs the real SD1.5 architecture (diffusers and control) at 128x128 (latent 16x16): the same work on both sides of each
# ratio, a quarter of 256's; the per-job costs besides the UNet (text encoder, scheduler, wrapper) weigh
# more, which is where an engine's overhead over plain diffusers would show.
DIFFUSERS_QUICK_SIZE = 128

GOALS = {
    "server_overhead_ratio": 1.05,
    "engine_vs_diffusers_ratio": 1.02,
    "engine_euler_vs_diffusers_ratio": 1.02,
    "transfer_ratio": 2.0,
    "preview_cost_ratio": 1.05,
    "upscale_memory_ratio_16x": 1.3,
    "upscale_time_per_mp_ratio_16x_4x": 1.15,
    "control_vs_diffusers_ratio": 1.02,
}


def verdict_of(value: float, spread: list[float] | None, goal: float) -> str:
    """"ok" or "over" by the median, and "(spread straddles)" when the repetitions fall on both
    sides of the goal: then the run shows neither (at 128 px one job in ten takes 1.4x as long on
    either side, whichever code runs; more repetitions or the full run settle it)."""
    mark = "ok" if value <= goal else "over"
    if spread is not None and spread[0] <= goal < spread[1]:
        mark += " (spread straddles)"
    return mark


QUICK_WALL_GOAL_S = 300  # issue 20: `bench/run --quick` within 5 minutes on an otherwise idle 2-core machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions of each ratio, smaller sizes "
                        f"(under {QUICK_WALL_GOAL_S // 60} minutes on an idle 2-core machine)")
    parser.add_argument("--skip", action="append", default=[], help="skip a figure group: overhead, transfer, "
                        "preview, diffusers, upscale, control")
    args = parser.parse_args()
    started, cpu_at_start = time.perf_counter(), _cpu_seconds()
    if "upscale" not in args.skip:
        import upscale  # bench/upscale.py

        # Its children's forkserver imports torch, diffusers and the engine (one core, about 5 s) while
        # this process does the same for its own start-up, on the other core.
        upscale.start_forkserver()
    reps = 3 if args.quick else 7
    results: dict = {"quick": args.quick, "python": sys.version.split()[0]}
    import torch

    results["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    results["torch"] = torch.__version__
    results["torch_threads"] = torch.get_num_threads()
    engine = demo_engine()
    engine.run(__import__("engine.params", fromlist=["JobParams"]).JobParams(width=64, height=64, steps=1))  # load
    server = InProcessServer(engine)
    # The start-up (torch, the demo models, the server) is a phase too, so the phases add up to the total.
    results["setup_wall_s"] = time.perf_counter() - started
    results["setup_cpu_s"] = _cpu_seconds() - cpu_at_start
    keep: dict = {}  # what one phase leaves for the next (the SD1.5 UNet)
    groups = [
        ("overhead", lambda: bench_server_overhead(engine, server, reps)),
        ("transfer", lambda: bench_transfer(server, 3 if args.quick else 5)),
        ("preview", lambda: bench_preview(server, reps, 6 if args.quick else 12)),
        ("diffusers", lambda: bench_engine_vs_diffusers(3, DIFFUSERS_QUICK_SIZE if args.quick else 512, keep)),
        ("control", lambda: bench_control(args.quick, keep)),  # right after: it runs on the diffusers phase's UNet
        ("upscale", lambda: bench_upscale(args.quick)),
    ]
    extra_cpu = 0.0
    for name, run in groups:
        if name not in args.skip:
            group_started, cpu_started = time.perf_counter(), _cpu_seconds()
            results.update(run())
            results[f"{name}_wall_s"] = time.perf_counter() - group_started
            # CPU seconds (this process and its benchmark subprocesses): on a loaded machine the wall time
            # says little; the CPU time, over the cores torch uses, bounds what the phase takes when idle.
            # Processes not waited for as this one's children (bench/upscale.py's forkserver) report their own.
            children = results.pop(f"{name}_children_cpu_s", 0.0)
            extra_cpu += children
            results[f"{name}_cpu_s"] = _cpu_seconds() - cpu_started + children
    results["wall_s"] = time.perf_counter() - started
    results["cpu_s"] = _cpu_seconds() - cpu_at_start + extra_cpu
    if args.quick:
        results["wall_s_goal"] = QUICK_WALL_GOAL_S
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'figure':<36} {'value':>9} {'spread':>17} {'goal':>8}")
    for key, value in results.items():
        if isinstance(value, float) and not key.endswith("_s"):
            goal = GOALS.get(key)
            spread = results.get(f"{key}_spread")
            mark = "" if goal is None else "  " + verdict_of(value, spread, goal)
            low_high = f"{spread[0]:.3f}..{spread[1]:.3f}" if spread else ""
            print(f"{key:<36} {value:>9.3f} {low_high:>17} {('<= ' + str(goal)) if goal else '':>8}{mark}")
    threads = results["torch_threads"]
    phases = [k[: -len("_wall_s")] for k in results if k.endswith("_wall_s")]
    print(f"\n{'phase':<10} {'wall s':>7} {'share':>6} {'CPU s':>7}  (idle estimate: CPU s / {threads} threads .. CPU s)")
    for phase in phases:
        wall, cpu = results[phase + "_wall_s"], results[phase + "_cpu_s"]
        print(f"{phase:<10} {wall:>7.1f} {wall / results['wall_s']:>6.0%} {cpu:>7.1f}  ({cpu / threads:.0f}..{cpu:.0f})")
    verdict = ""
    if args.quick:
        verdict = (f" (goal for --quick: <= {QUICK_WALL_GOAL_S} s on an idle machine: "
                   f"{'ok' if results['wall_s'] <= QUICK_WALL_GOAL_S else 'over'})")
    print(f"{'total':<10} {results['wall_s']:>7.1f} {'':>6} {results['cpu_s']:>7.1f}{verdict}")
    print(f"(device {results['device']}, torch {results['torch']}, {threads} threads; written to bench/results.json)")


if __name__ == "__main__":
    main()
