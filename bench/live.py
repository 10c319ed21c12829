"""Live painting latency: the engine's time for a few-step 512x512 refine, and
what the server adds to it (stroke-to-picture minus the model's own time).

    .venv/bin/python bench/live.py [--runs 20] [--steps 4] [--strength 0.6] [--device cpu]

Side by side in one process, on the demo model loaded through the users'
loading code: the real websocket server (PaintBridgeServer on a free
loopback port, its engine shared with this process) and the blocking client
the CLI and the plugin use. Each round changes a "stroke" on the canvas and
runs the same refine twice, interleaved so machine load hits both alike:

- direct: `Engine.run` called here (the baseline: the model's own time, plus
  the engine's encode/decode),
- served: submit -> result over the socket, with the engine's time inside
  the server measured around the same `Engine.run` call.

Printed: medians with the 10th-90th percentile spread of each, the served
round trip's overhead (round trip minus the engine time of that very job),
and the ratio served/direct. The goal of issue 18 is an overhead under 50 ms
for a 512x512 area; the Krita plugin's share is measured separately (in
Krita). Requests carry `live: true` when the protocol has it (the queue's
live jobs), and never ask for previews.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def spread(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p10, p90 = np.percentile(ms, [10, 90])
    return f"median {statistics.median(ms):8.1f} ms   p10 {p10:8.1f}   p90 {p90:8.1f}   (n={len(ms)})"


def canvas(i: int, side: int = 512) -> np.ndarray:
    """A painting with one more stroke each round: what a live refine sees."""
    rng = np.random.default_rng(0)
    image = np.full((side, side, 4), 255, np.uint8)
    image[..., :3] = rng.integers(100, 160, 3, dtype=np.uint8)
    for k in range(i + 1):
        y = (37 * k) % (side - 40)
        image[y : y + 12, 20 : side - 20, :3] = (k * 40 % 256, 80, 200 - k * 10 % 200)
    return image


class ServerThread:
    """PaintBridgeServer on an asyncio loop in a thread, port picked by the OS."""

    def __init__(self, engine) -> None:
        from bridge_server.config import ServerConfig
        from bridge_server.server import PaintBridgeServer

        config = ServerConfig(models_dir=engine.registry.root, host="127.0.0.1", port=0, preload=False)
        self.server = PaintBridgeServer(config, engine)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(60)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self.ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    from bridge_server.convert import to_params
    from engine.demo.builder import demo_models_dir
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry
    from protocol import RawImage
    from protocol.requests import JobRequest
    from protocol.shell.client import Client

    engine = Engine(Registry(demo_models_dir()).scan(), ModelManager(device=args.device))
    served_engine: list[tuple[float, float]] = []  # (start, end) of each served job's Engine.run
    inner_run = engine.run

    def timed_run(params, progress=None, cancel=None):
        start = time.perf_counter()
        try:
            return inner_run(params, progress, cancel)
        finally:
            served_engine.append((start, time.perf_counter()))

    server = ServerThread(engine)
    engine.run = timed_run  # type: ignore[method-assign]  # the server's calls are timed; direct calls go to inner_run
    live = {"live": True} if "live" in {f.name for f in fields(JobRequest)} else {}

    def request(i: int) -> JobRequest:
        image = canvas(i, args.side)
        return JobRequest(kind="img2img", prompt="a lighthouse at dusk, oil painting", sampler=args.sampler,
                          steps=args.steps, cfg_scale=1.0, seed=1234, strength=args.strength, preview=False,
                          image=RawImage(args.side, args.side, 4, image.tobytes()), **live)

    direct_s, served_s, overhead_s, before_s, after_s = [], [], [], [], []
    calls = max(1, int(args.steps * args.strength))
    print(f"live refine: {args.side}x{args.side}, {args.sampler}, {args.steps} steps at strength {args.strength:g} "
          f"({calls} model calls), CFG 1, demo model on {engine.models.device}; live flag: {bool(live)}")
    with Client(server.url, name="bench-live") as client:
        for i in range(args.runs + 2):  # two warm-up rounds (model load, first-call allocations)
            req = request(i)
            start = time.perf_counter()
            inner_run(to_params(req))
            direct = time.perf_counter() - start
            start = time.perf_counter()
            client.run(req)
            served = time.perf_counter() - start
            end = start + served
            if i >= 2:
                began, finished = served_engine[-1]
                direct_s.append(direct)
                served_s.append(served)
                overhead_s.append(served - (finished - began))
                before_s.append(began - start)  # client encode, send, server decode + checks, queue hand-off
                after_s.append(end - finished)  # result encode, send, client decode
    server.close()
    engine_in_server = [b - a for a, b in served_engine[2:]]
    print(f"engine, direct          {spread(direct_s)}")
    print(f"engine, inside server   {spread(engine_in_server)}")
    print(f"stroke-to-picture       {spread(served_s)}")
    print(f"server overhead         {spread(overhead_s)}   (round trip minus that job's engine time)")
    ratios = [s / d for s, d in zip(served_s, direct_s, strict=True)]
    print(f"  before the engine     {spread(before_s)}   (submit: encode, send, decode, check, queue)")
    print(f"  after the engine      {spread(after_s)}   (result: encode, send, decode)")
    print(f"served / direct         median {statistics.median(ratios):.3f}   "
          f"p10 {np.percentile(ratios, 10):.3f}   p90 {np.percentile(ratios, 90):.3f}")
    goal = statistics.median(overhead_s) * 1000
    print(f"goal: server adds < 50 ms: {'met' if goal < 50 else 'NOT met'} ({goal:.1f} ms median)")


if __name__ == "__main__":
    main()
