"""Big frames from the client: what a 4096x4096 RGBA upload costs the sending
thread, with websockets' pure-Python masking (what the Krita plugin carries:
no C speed-ups) vs protocol/shell/framing.py (zero key to a local server,
chunked `bytes.translate` XOR to a remote one), side by side in one run.

Measured per 64 MiB frame, against a real websockets server in a separate
process (so its work does not share our GIL):
- `send`: seconds the sending thread spends in `ws.send` until the frame is on the socket;
- `upload`: seconds until the server acknowledges the whole frame;
- `gil`: the longest stall a 1 ms ticker thread saw during the send: the
  time the UI thread could have been kept waiting for the GIL;
- `download`: a 64 MiB server frame received (servers do not mask), and its `download gil`.

    PYTHONPATH=$PWD python bench/ws_masking.py [--reps 5] [--mib 64]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time

SERVER = r"""
import asyncio, sys
from websockets.asyncio.server import serve

SIZE = int(sys.argv[1])

async def handler(ws):
    async for message in ws:
        if message == b"download":
            await ws.send(bytes(SIZE))
        else:
            await ws.send(b"ok %d" % len(message))

async def main():
    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"""


class GilProbe(threading.Thread):
    """Sleeps 1 ms at a time; the overshoot is how long it waited for the GIL."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.worst = 0.0
        self.running = True

    def run(self) -> None:
        while self.running:
            start = time.perf_counter()
            time.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - start - 0.001)

    def stop(self) -> float:
        self.running = False
        self.join()
        return self.worst


def pure_python_websockets() -> None:
    """Make this process's websockets mask as the plugin's vendored copy does
    (its frames.py falls back to utils.apply_mask when speedups are absent)."""
    import websockets.frames
    import websockets.utils

    websockets.frames.apply_mask = websockets.utils.apply_mask


def run_variant(url: str, variant: str, payload: bytes, reps: int) -> dict[str, list[float]]:
    from websockets.sync.client import connect

    from protocol.shell import framing

    kwargs: dict = {"max_size": None, "compression": None}
    if variant == "zero key (local)":
        kwargs["create_connection"] = framing.connection_class()
    elif variant == "chunked XOR (remote)":
        base = framing.connection_class()

        class Remote(base):  # type: ignore[misc, valid-type]
            def __init__(self, socket, protocol, **kw):
                framing.install(protocol, zero_key=False)
                super(base, self).__init__(socket, protocol, **kw)

        kwargs["create_connection"] = Remote
    times: dict[str, list[float]] = {"send": [], "upload": [], "gil": [], "download": [], "download gil": []}
    with connect(url, **kwargs) as ws:
        for _ in range(reps):
            probe = GilProbe()
            probe.start()
            time.sleep(0.02)
            start = time.perf_counter()
            ws.send(payload)
            sent = time.perf_counter()
            reply = ws.recv()
            done = time.perf_counter()
            times["gil"].append(probe.stop())
            assert reply == b"ok %d" % len(payload), reply
            times["send"].append(sent - start)
            times["upload"].append(done - start)
            probe = GilProbe()
            probe.start()
            time.sleep(0.02)
            start = time.perf_counter()
            ws.send(b"download")
            data = ws.recv()
            times["download"].append(time.perf_counter() - start)
            times["download gil"].append(probe.stop())
            assert len(data) == len(payload)
    return times


def summary(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f} ms (min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    size = args.mib << 20
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(size)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        url = f"ws://127.0.0.1:{port}"
        pure_python_websockets()
        payload = bytes(range(256)) * (size // 256)
        results = {}
        for variant in ("websockets pure-Python mask", "zero key (local)", "chunked XOR (remote)"):
            results[variant] = run_variant(url, variant, payload, args.reps)
    finally:
        server.terminate()
    print(f"{args.mib} MiB binary frame, client -> local server, {args.reps} reps; median (min, max)")
    for variant, times in results.items():
        print(f"\n{variant}")
        for key in ("send", "upload", "gil", "download", "download gil"):
            print(f"  {key:<13}{summary(times[key])}")
    base = results["websockets pure-Python mask"]
    for variant in ("zero key (local)", "chunked XOR (remote)"):
        times = results[variant]
        ratios = ", ".join(
            f"{key} x{statistics.median(base[key]) / max(statistics.median(times[key]), 1e-9):.1f}"
            for key in ("send", "upload", "gil")
        )
        print(f"\n{variant} vs pure-Python mask (baseline / this, higher is better): {ratios}")


if __name__ == "__main__":
    main()
