"""PaintBridge benchmarks: every figure is a ratio of two things measured
side by side in one run (interleaved, several repetitions, median), because
absolute times on shared machines are noise.

    bench/run [--quick]

Writes bench/results.json and prints a table. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def interleaved(a: Callable[[], object], b: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median seconds of a and b, run alternately (a, b, a, b, ...)."""
    ta, tb = [], []
    for _ in range(reps):
        for fn, times in ((a, ta), (b, tb)):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return statistics.median(ta), statistics.median(tb)


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
    from bridge_server.client import Client
    from bridge_server.convert import to_params
    from protocol import JobRequest

    request = JobRequest(prompt="a cat", width=512, height=512, steps=4, seed=1, preview=False)
    client = Client(server.url)
    client.connect()
    direct, remote = interleaved(lambda: engine.run(to_params(request)), lambda: client.run(request), reps)
    client.close()
    return {"server_overhead_ratio": remote / direct, "direct_s": direct, "server_s": remote}


def bench_transfer(server, reps: int) -> dict:
    import msgpack

    from bridge_server.client import Client
    from protocol import JobRequest, RawImage, encode

    side = 4096
    image = RawImage(side, side, 4, np.random.default_rng(0).integers(0, 256, side * side * 4, np.uint8).tobytes())
    request = JobRequest(kind="img2img", image=image, strength=0.0, steps=1, preview=False)  # strength 0: echo
    client = Client(server.url)
    client.connect()
    frame = encode(__import__("protocol").Submit(request=request))

    def in_process() -> None:  # the same bytes packed and unpacked twice: there and back
        for _ in range(2):
            msgpack.unpackb(msgpack.packb(msgpack.unpackb(frame)))

    def over_loopback() -> None:
        result = client.run(request)
        assert result.images[0].data == image.data

    local, remote = interleaved(in_process, over_loopback, reps)
    client.close()
    megabytes = 2 * len(image.data) / 1e6
    return {"transfer_ratio": remote / local, "transfer_mb_s": megabytes / remote, "msgpack_mb_s": megabytes / local}


def bench_preview(engine, reps: int) -> dict:
    from engine.params import JobParams

    def job(preview: bool):
        return lambda: engine.run(JobParams(prompt="x", width=512, height=512, steps=12, seed=1, preview=preview),
                                  lambda *args, **kw: None)

    with_preview, without = interleaved(job(True), job(False), reps)
    return {"preview_cost_ratio": with_preview / without}


def real_sd15_pipeline():
    """The real SD1.5 architecture (UNet 859.5M, VAE, CLIP-L text), random init, offline."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.families import SD15
    from engine.tokenizers import clip_tokenizer

    config = SD15.config_dir
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(json.loads((config / "vae" / "config.json").read_text())),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(str(config / "text_encoder"))),
        tokenizer=clip_tokenizer(),
        unet=UNet2DConditionModel.from_config(json.loads((config / "unet" / "config.json").read_text())),
        scheduler=DDIMScheduler.from_config(json.loads((config / "scheduler" / "scheduler_config.json").read_text())),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_engine_vs_diffusers(reps: int) -> dict:
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    from engine.families import SD15
    from engine.jobs import Engine
    from engine.models import LoadedModel, ModelManager
    from engine.params import JobParams
    from engine.registry import CHECKPOINT, ModelEntry, Registry

    pipe = real_sd15_pipeline()
    entry = ModelEntry("sd15-architecture", CHECKPOINT, ROOT, "diffusers", SD15)
    registry = Registry(ROOT)
    registry.entries = {(CHECKPOINT, entry.name): entry}
    manager = ModelManager(device="cpu")
    manager.loaded = LoadedModel(entry, "sd15", pipe)  # resident, as after the first job
    engine = Engine(registry, manager)
    size, steps = 512, 2

    def plain_with(scheduler_class):
        def plain() -> None:
            pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, timestep_spacing="linspace")
            pipe("a cat", negative_prompt="", num_inference_steps=steps, guidance_scale=7.0, width=size, height=size,
                 generator=torch.Generator("cpu").manual_seed(1), output_type="np")

        return plain

    def ours() -> None:
        engine.run(JobParams(prompt="a cat", width=size, height=size, steps=steps, seed=1, sampler="Euler a",
                             preview=True), lambda *args, **kw: None)

    # The samplers written here run their own loop (engine/kpipeline.py): "Euler a"
    # at eta 0 takes that path and is plain Euler, so it races diffusers' Euler.
    def k_path() -> None:
        engine.run(JobParams(prompt="a cat", width=size, height=size, steps=steps, seed=1, sampler="Euler a",
                             eta=0.0, preview=True), lambda *args, **kw: None)

    # Warm both paths once at a small size (allocator, kernels).
    pipe("x", num_inference_steps=1, width=64, height=64, output_type="np")
    engine.run(JobParams(prompt="x", width=64, height=64, steps=1))
    engine_s, diffusers_s = interleaved(ours, plain_with(EulerAncestralDiscreteScheduler), reps)
    k_s, euler_s = interleaved(k_path, plain_with(EulerDiscreteScheduler), reps)
    return {"engine_vs_diffusers_ratio": engine_s / diffusers_s, "kpath_vs_diffusers_ratio": k_s / euler_s,
            "sd15_512_2steps_s": diffusers_s}


def bench_upscale(quick: bool) -> dict:
    args = [sys.executable, str(ROOT / "bench" / "upscale.py")] + (["--quick"] if quick else [])
    subprocess.run(args, check=True, capture_output=True, text=True)
    rows = json.loads((ROOT / "bench" / "upscale-results.json").read_text())
    first, last = rows[0], rows[-1]
    return {
        "upscale_memory_growth_mib": (last["peak_mib"] - last["baseline_mib"]) - (first["peak_mib"] - first["baseline_mib"]),
        "upscale_memory_ratio_16x": last["memory_ratio"],
        "upscale_time_per_tile_ratio": last["time_per_tile_ratio"],
        "upscale_sizes": [r["out"] for r in rows],
    }


def bench_control(quick: bool) -> dict:
    """One ControlNet unit's cost per step (bench/control.py, the real SD1.5 architecture)."""
    args = [sys.executable, str(ROOT / "bench" / "control.py"), "--size", "256" if quick else "512",
            "--reps", "3" if quick else "5"]
    subprocess.run(args, check=True, capture_output=True, text=True)
    rows = json.loads((ROOT / "bench" / "control-results.json").read_text())
    return {"control_unit_step_ratio": rows["unit_step_ratio"],
            "control_unit_step_ratio_min": rows["unit_step_ratio_spread"][0],
            "control_unit_step_ratio_max": rows["unit_step_ratio_spread"][1],
            "control_vs_diffusers_ratio": rows["ours_vs_diffusers_ratio"]}


GOALS = {
    "server_overhead_ratio": 1.05,
    "engine_vs_diffusers_ratio": 1.02,
    "kpath_vs_diffusers_ratio": 1.02,
    "transfer_ratio": 3.0,
    "preview_cost_ratio": 1.05,
    "control_vs_diffusers_ratio": 1.02,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes (under 3 minutes)")
    parser.add_argument("--skip", action="append", default=[], help="skip a figure group: overhead, transfer, "
                        "preview, diffusers, upscale, control")
    args = parser.parse_args()
    reps = 3 if args.quick else 7
    results: dict = {"quick": args.quick, "python": sys.version.split()[0]}
    import torch

    results["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    results["torch"] = torch.__version__
    started = time.perf_counter()
    engine = demo_engine()
    engine.run(__import__("engine.params", fromlist=["JobParams"]).JobParams(width=64, height=64, steps=1))  # load
    server = InProcessServer(engine)
    if "overhead" not in args.skip:
        results.update(bench_server_overhead(engine, server, reps))
    if "transfer" not in args.skip:
        results.update(bench_transfer(server, max(2, reps // 2)))
    if "preview" not in args.skip:
        results.update(bench_preview(engine, reps))
    if "diffusers" not in args.skip:
        results.update(bench_engine_vs_diffusers(1 if args.quick else 3))
    if "upscale" not in args.skip:
        results.update(bench_upscale(args.quick))
    if "control" not in args.skip:
        results.update(bench_control(args.quick))
    results["wall_s"] = time.perf_counter() - started
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'figure':<30} {'value':>10} {'goal':>8}")
    for key, value in results.items():
        if isinstance(value, float):
            goal = GOALS.get(key)
            mark = "" if goal is None else ("  ok" if value <= goal else "  over")
            print(f"{key:<30} {value:>10.3f} {('<= ' + str(goal)) if goal else '':>8}{mark}")
    print(f"(device {results['device']}, torch {results['torch']}; written to bench/results.json)")


if __name__ == "__main__":
    main()
