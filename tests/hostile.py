"""Hostile clients, as functions: each attack sends its frames to a running
server and says how the server answered. Shared by tests/test_hardening.py
(each attack has a test with a memory bound) and bench/hostile.py (the table
of peak memory per attack, before and after a change).

The server's memory is read from /proc: `VmHWM` (peak resident set) after
writing 5 to `clear_refs`, which resets the peak to the current RSS (Linux
4.0+), so one long-lived server can be measured attack by attack.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

PROTOCOL = 2


@dataclass
class Outcome:
    attack: str
    frame_bytes: int  # the largest frame the attack sent
    answer: str  # what the server said: an error code, "accepted", "closed 1009", ...
    peak_delta: int = 0  # bytes the server's peak RSS rose during the attack
    reply: dict | None = None  # the server's answer to the attack's (last) request, if any

    @property
    def bound(self) -> int:
        """The goal: no request raises the peak by more than 4x its frame (plus the job's own memory)."""
        return 4 * self.frame_bytes


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_delta(pid: int, attack: Callable[[], Outcome], settle: float = 0.5) -> Outcome:
    """Run `attack`; how far the server's peak RSS rose above its RSS before it."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # the peak starts again from the current RSS
    before = _status(pid, "VmRSS")
    outcome = attack()
    time.sleep(settle)
    outcome.peak_delta = max(0, _status(pid, "VmHWM") - before)
    return outcome


def hello(ws, client_id: str = "") -> dict:
    ws.send(msgpack.packb({"type": "hello", "protocol": PROTOCOL, "client": "hostile", "client_id": client_id}))
    welcome = msgpack.unpackb(ws.recv(timeout=30))
    assert welcome["type"] == "welcome", welcome
    return welcome


def submit(ws, request: dict, ref: str = "r1") -> tuple[int, dict]:
    frame = msgpack.packb({"type": "submit", "ref": ref, "request": request})
    ws.send(frame)
    return len(frame), msgpack.unpackb(ws.recv(timeout=60))


def _answer(reply: dict) -> str:
    return reply["code"] if reply["type"] == "error" else reply["type"]


def _cancel_if_accepted(ws, reply: dict) -> None:
    if reply["type"] == "accepted":
        ws.send(msgpack.packb({"type": "cancel", "job_id": reply["job_id"]}))


def raw_image(width: int, height: int, channels: int = 4, value: int = 128) -> dict:
    return {"width": width, "height": height, "channels": channels, "data": bytes([value]) * (width * height * channels)}


# -- the attacks ----------------------------------------------------------------
def prompt_sr(url: str, prompt_len: int = 20_000, value_len: int = 20_000, values: int = 14) -> Outcome:
    """Prompt S/R: a one-letter search in a long prompt, replaced by long values
    (each cell's prompt would be prompt_len x value_len characters)."""
    plot = {"axes": [{"name": "Prompt S/R", "values": ["a"] + ["b" * value_len] * values}]}
    with connect(url, max_size=None) as ws:
        hello(ws)
        size, reply = submit(ws, {"prompt": "a" * prompt_len, "steps": 1, "width": 64, "height": 64, "plot": plot})
        _cancel_if_accepted(ws, reply)
    return Outcome("Prompt S/R expansion", size, _answer(reply), reply=reply)


def derived_size(url: str, width: int = 64, image_h: int = 1100) -> Outcome:
    """img2img with one side given: the other follows the image's aspect ratio."""
    with connect(url, max_size=None) as ws:
        hello(ws)
        size, reply = submit(ws, {"kind": "img2img", "image": raw_image(8, image_h), "width": width, "steps": 1})
        _cancel_if_accepted(ws, reply)
    return Outcome(f"img2img derived size ({width} wide from 8x{image_h})", size, _answer(reply), reply=reply)


def batch_of_layers(url: str, side: int = 512) -> Outcome:
    """One layer, 1600 results of its size (batch 16 x batch count 100)."""
    with connect(url, max_size=None) as ws:
        hello(ws)
        size, reply = submit(ws, {"kind": "img2img", "image": raw_image(side, side), "batch_size": 16,
                                  "batch_count": 100, "steps": 1})
        _cancel_if_accepted(ws, reply)
    return Outcome(f"img2img {side}x{side} x 1600 results", size, _answer(reply), reply=reply)


def never_reads(url: str, frames: int = 4000, type_len: int = 60_000) -> Outcome:
    """Writes frames that each get an error (echoing an unknown type), never reads."""
    frame = msgpack.packb({"type": "x" * type_len})
    answer = "open"
    ws = connect(url, max_size=None, max_queue=1).__enter__()  # the client stops reading after one frame
    try:
        hello(ws)
        for _ in range(frames):
            ws.send(frame)
        answer = "still open"
    except ConnectionClosed as exc:
        answer = f"closed {exc.rcvd.code if exc.rcvd else 'abruptly'}"
    except OSError:
        answer = "closed (reset)"
    finally:
        # Read what arrived until the close: did the server say why?
        try:
            while True:
                ws.recv(timeout=5)
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                answer = f"closed {exc.rcvd.code}"
        except (TimeoutError, OSError):
            pass
        ws.close()
    return Outcome(f"writes {frames} frames, never reads", len(frame), answer)


def big_frame_before_hello(url: str, size: int = 100 * 2**20, sockets: int = 3) -> Outcome:
    """Sockets without the token, each sending one big (valid msgpack) frame first."""
    frame = msgpack.packb({"type": "hello", "protocol": PROTOCOL, "client": "x" * 16, "token": b"\0" * size})
    answers: list[str] = []

    def one() -> None:
        try:
            with connect(url, max_size=None) as ws:
                ws.send(frame)
                answers.append(_answer(msgpack.unpackb(ws.recv(timeout=60))))
        except ConnectionClosed as exc:
            answers.append(f"closed {exc.rcvd.code if exc.rcvd else 'abruptly'}")
        except (OSError, InvalidStatus) as exc:
            answers.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(sockets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return Outcome(f"{sockets} sockets x {size >> 20} MiB frame before hello", len(frame), ", ".join(sorted(set(answers))))


def full_mask_inpaint(url: str, side: int = 3072) -> Outcome:
    """Inpaint a big layer with a full mask: the job's own memory, per pixel."""
    request = {"kind": "inpaint", "image": raw_image(side, side), "mask": raw_image(side, side, 1, 255),
               "steps": 1, "strength": 0.5, "preview": False}
    with connect(url, max_size=None) as ws:
        hello(ws)
        size, reply = submit(ws, request)
        while reply["type"] in ("accepted", "progress"):
            reply = msgpack.unpackb(ws.recv(timeout=300))
    return Outcome(f"inpaint {side}x{side}, full mask", size, _answer(reply), reply=reply)


def warm_up(url: str) -> None:
    """One tiny job: imports and first allocations done before anything is measured."""
    with connect(url, max_size=None) as ws:
        hello(ws)
        _, reply = submit(ws, {"width": 64, "height": 64, "steps": 1})
        while reply["type"] in ("accepted", "progress"):
            reply = msgpack.unpackb(ws.recv(timeout=300))
        assert reply["type"] == "result", reply


def http_handshake(port: int, host: str, origin: str | None = None) -> str:
    """A websocket handshake with exactly these headers; the status line's code."""
    headers = [
        "GET / HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        headers.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.split(b" ", 2)[1].decode()
