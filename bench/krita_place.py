"""Where Krita's UI-thread time goes when a big layer is read and placed (real Krita 5.1.5).

Starts the real Krita under Xvfb (one at a time: /tmp/krita.lock) with the probe scenario
tests/krita_scenario/place_probe.py and prints its report: Krita's pixelData/setPixelData
on the UI thread and on a Python thread (whole and in strips, with the longest gap of a
5 ms Python heartbeat on the UI thread), addChildNode before/after the pixels (and whether
the canvas shows them), a hidden layer, Krita's add-layer action, and which Python calls
make Krita recomposite a layer at all. Absolute milliseconds of one machine: the figures in
BENCHMARKS.md ("Krita: big layers off the UI thread") say under which load they were taken.
The plugin's own end-to-end figures come from the real-Krita test
(`PAINTBRIDGE_ONLY=big pytest tests/test_krita_real.py -m "slow or not slow" -s`).

    PYTHONPATH=$PWD python bench/krita_place.py [--size 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="canvas side in pixels")
    args = parser.parse_args()
    os.environ["PAINTBRIDGE_PROBE_SIZE"] = str(args.size)
    from tests.test_krita_real import run_krita  # the same profile set-up and lock as the tests

    report = run_krita("ws://127.0.0.1:9/", Path(tempfile.mkdtemp(prefix="krita-place-")), scenario="place_probe.py")
    for step in report["steps"]:
        name = step.pop("step")
        print(f"{name:36s} " + ", ".join(f"{k} {v}" for k, v in step.items()))
    print(json.dumps({"size": report["size"]}))


if __name__ == "__main__":
    main()
