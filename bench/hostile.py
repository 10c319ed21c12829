"""Peak server memory under hostile requests, side by side: this tree's server
against a baseline tree's (e.g. the commit before a hardening change).

    bench/hostile.py [--baseline DIR] [--quick]

For each attack (tests/hostile.py) a fresh `serve --demo --no-preload` of
each tree is started, the attack runs, and the rise of the server's peak RSS
(VmHWM, reset through /proc/PID/clear_refs) is printed next to the goal:
at most 4x the attack's largest frame, plus the job's own working memory
for an attack that runs a job. The baseline runs first; an attack it does
not survive is reported as such.

Make a baseline tree with: git archive <commit> | tar -x -C /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import hostile  # noqa: E402


class Server:
    def __init__(self, tree: Path) -> None:
        self.log = Path(tempfile.mkstemp(prefix="hostile-", suffix=".log")[1])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge_server", "serve", "--demo", "--no-preload", "--port", "0"],
            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while not (match := re.search(r"listening on ws://[^:]+:(\d+)", self.log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log.read_text())
            time.sleep(0.1)
        self.url = f"ws://127.0.0.1:{match.group(1)}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def measure(tree: Path, attack: Callable[[str], hostile.Outcome]) -> hostile.Outcome:
    server = Server(tree)
    try:
        # Warm up (imports, first allocations) so the attack's own rise is what is measured.
        hostile.warm_up(server.url)
        outcome = hostile.peak_delta(server.proc.pid, partial(attack, server.url), settle=1.0)
        if not server.alive():
            outcome.answer += " (server died)"
        return outcome
    except Exception as exc:  # the baseline may not survive an attack
        return hostile.Outcome(getattr(attack, "__name__", "attack"), 0, f"{type(exc).__name__}: {str(exc)[:60]}")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="a tree to compare with (e.g. the previous commit)")
    parser.add_argument("--quick", action="store_true", help="smaller attacks")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    q = args.quick
    attacks: list[Callable[[str], hostile.Outcome]] = [
        partial(hostile.prompt_sr, prompt_len=4_000 if q else 8_000, value_len=4_000 if q else 8_000, values=14),
        partial(hostile.never_reads, frames=2_000 if q else 4_000, type_len=60_000),
        partial(hostile.big_frame_before_hello, size=(50 if q else 100) * 2**20, sockets=3),
        partial(hostile.derived_size, width=64, image_h=1100),
        partial(hostile.batch_of_layers, side=512),
        # The job's own working memory (the model at its native size), then the same job on a bigger layer:
        # what grows with the layer is what the request's bytes pay for.
        partial(hostile.full_mask_inpaint, side=512),
        partial(hostile.full_mask_inpaint, side=2048),
    ]
    trees = ([("baseline", args.baseline)] if args.baseline else []) + [("this tree", ROOT)]
    rows = []
    for attack in attacks:
        row = {}
        for label, tree in trees:
            outcome = measure(tree, attack)
            row[label] = outcome
            print(f"{label:>9} | {outcome.attack:<42} | frame {outcome.frame_bytes / 2**20:8.2f} MiB | "
                  f"peak +{outcome.peak_delta / 2**20:8.1f} MiB | 4x frame {outcome.bound / 2**20:8.1f} MiB | "
                  f"{outcome.answer}", flush=True)
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps([{k: {**vars(v), "reply": None} for k, v in row.items()} for row in rows], indent=2))


if __name__ == "__main__":
    main()
