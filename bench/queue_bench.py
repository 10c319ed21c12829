"""Benchmark the Redis queue (issue 17), side by side in one run:

1. throughput with 1 and 2 workers (torch threads = 1 per worker), as a ratio
   with its spread. The second worker is paused (SIGSTOP while idle) for the
   1-worker rounds, so the rounds interleave and share the machine's load.
2. the front end's added latency over the embedded queue: submit -> result of
   a tiny job, through `serve --queue redis://` + one worker versus the
   embedded `serve` (same demo model, same request, one torch thread each).

Starts its own redis-server, front end, workers and embedded server.
Usage: python bench/queue_bench.py [--rounds 3] [--jobs 8]
Writes bench/queue-results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol import JobRequest, Result, Submit  # noqa: E402
from protocol.shell.client import Client  # noqa: E402
from tests.conftest import ServerProcess  # noqa: E402
from tests.test_redis_queue import Redis, WorkerProcess  # noqa: E402

JOB = dict(width=128, height=128, steps=6)  # compute, not messaging, should dominate


class Server(ServerProcess):
    def _wait_for_port(self, timeout: float = 900.0) -> int:  # a loaded machine imports slowly
        return super()._wait_for_port(timeout)


def batch_wall(url: str, jobs: int) -> float:
    """Two painters submit jobs/2 each at once; wall time until the last result."""
    a, b = Client(url), Client(url)
    with a, b:
        started = time.perf_counter()
        for i in range(jobs):
            (a if i % 2 else b).send(Submit(JobRequest(seed=i, **JOB), ref=str(i)))
        done = 0
        while done < jobs:
            for c in (a, b):
                done += isinstance(c.poll(0.01), Result)
        return time.perf_counter() - started


def latency(url: str) -> float:
    with Client(url) as c:
        started = time.perf_counter()
        c.run(JobRequest(seed=1, width=64, height=64, steps=1, preview=False))
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--latency-reps", type=int, default=10)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # the embedded server: one thread, like each worker
    redis = Redis()
    workers: list[WorkerProcess] = []
    front = embedded = None
    try:
        workers = [WorkerProcess(redis.url, f"bench{i}") for i in range(2)]
        front = Server("--queue", redis.url)
        embedded = Server("--demo", env={"OMP_NUM_THREADS": "1"})
        for w in workers:
            w.wait_for_log(r"worker \S+ ready", timeout=900)
        embedded.wait_for_log("loaded paintbridge-demo", timeout=900)
        time.sleep(1.5)
        batch_wall(front.url, 2)  # warm both workers (model load)
        latency(embedded.url)
        one, two = [], []
        for _ in range(args.rounds):
            workers[1].proc.send_signal(signal.SIGSTOP)
            one.append(batch_wall(front.url, args.jobs))
            workers[1].proc.send_signal(signal.SIGCONT)
            time.sleep(0.5)
            two.append(batch_wall(front.url, args.jobs))
        workers[1].proc.send_signal(signal.SIGSTOP)  # latency: one worker, as the embedded server
        via_redis, via_embedded = [], []
        for _ in range(args.latency_reps):
            via_redis.append(latency(front.url))
            via_embedded.append(latency(embedded.url))
        workers[1].proc.send_signal(signal.SIGCONT)
    finally:
        for process in [*workers, front, embedded]:
            if process is not None:
                process.stop()
        redis.stop()
    ratios = [o / t for o, t in zip(one, two, strict=True)]
    added = [r - e for r, e in zip(via_redis, via_embedded, strict=True)]
    results = {
        "jobs_per_round": args.jobs,
        "job": JOB,
        "wall_1_worker_s": one,
        "wall_2_workers_s": two,
        "throughput_ratio_2_vs_1_median": statistics.median(ratios),
        "throughput_ratio_min": min(ratios),
        "throughput_ratio_max": max(ratios),
        "latency_embedded_median_s": statistics.median(via_embedded),
        "latency_redis_median_s": statistics.median(via_redis),
        "front_end_added_latency_median_ms": 1000 * statistics.median(added),
        "front_end_added_latency_min_ms": 1000 * min(added),
        "front_end_added_latency_max_ms": 1000 * max(added),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
    }
    (ROOT / "bench" / "queue-results.json").write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key:40} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
