"""What the queue holds: job records, their states, and the request's stored form.

A record is the whole truth about a job that must survive a restart: who
owns it, the request (with its seeds already drawn, so a re-run makes the
same pixels), its state and its progress point. The encoded final message
(`result`, `error` or `cancelled`) is stored beside it once the job ends.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import msgpack

from protocol import oob
from protocol.fields import from_wire, to_wire
from protocol.requests import MAX_SEED, JobRequest

QUEUED, RUNNING, FINISHED, FAILED, CANCELLED = "queued", "running", "finished", "failed", "cancelled"
DONE = (FINISHED, FAILED, CANCELLED)


@dataclass
class JobRecord:
    id: str
    owner: str  # client_id of the submitter; only it may follow, fetch or cancel
    request: JobRequest
    seq: int = 0  # submit order, the tie-breaker of the fair scheduler
    state: str = QUEUED
    step: int = 0  # the progress point: step of total (a re-run starts from 0 again)
    total: int = 0
    attempts: int = 0  # runs started; 2+ = re-run after a crash or a dead worker

    @property
    def live(self) -> bool:
        return self.request.live

    @property
    def model(self) -> str:
        return self.request.model


@dataclass
class JobView:
    """A job as a client may see it: its state and, once over, its final frame."""

    id: str
    state: str
    position: int = 0
    frame: bytes = b""  # the encoded result / error / cancelled message, when done


def job_id(queue_id: str, seq: int) -> str:
    """`<queue id>-<sequence>`: ordered, and the prefix names the queue that
    issued it, so an id from a queue that was wiped reads as lost, not unknown."""
    return f"{queue_id}-{seq:06d}"


def issued_by(queue_id: str, job_id_: str) -> bool:
    return job_id_.split("-", 1)[0] == queue_id


def well_formed(job_id_: str) -> bool:
    """Shaped like an id some queue issued (`<hex>-<digits>`): only such an id
    can be "lost"; anything else is a typo, answered as unknown."""
    prefix, dash, seq = job_id_.partition("-")
    return bool(dash and prefix and seq.isdigit() and len(seq) >= 6
                and all(c in "0123456789abcdef" for c in prefix))


def fix_seeds(request: JobRequest) -> JobRequest:
    """Draw the random seeds at submit time, so that a job that runs again after
    a crash (or on another worker) makes exactly the same pixels. Same rule as
    the engine's (-1 = random); a plot shares the one seed across cells."""
    if request.seed < 0:
        request = replace(request, seed=random.randint(0, MAX_SEED - 100))
    if request.subseed < 0 and request.subseed_strength > 0:
        request = replace(request, subseed=random.randint(0, MAX_SEED - 100))
    if request.live and request.preview:
        request = replace(request, preview=False)  # live jobs send no previews
    return request


def pack_request(request: JobRequest) -> bytes:
    return msgpack.packb(to_wire(request), use_bin_type=True)


def unpack_request(data: bytes) -> JobRequest:
    return from_wire(JobRequest, msgpack.unpackb(data, raw=False))


class LostPixels(Exception):
    """A stored request whose pixel file is missing or short (a crash of the machine
    before it reached the disk)."""


def split_request(request: JobRequest) -> list[oob.Buffer]:
    """[head, *pixel buffers]: the embedded store keeps the head in SQLite and the
    pixels in a file beside it (protocol/oob.py's out-of-band form, no copy)."""
    return oob.encode_parts(to_wire(request))


def join_request(head: bytes, pixels: bytes | None) -> JobRequest:
    """The inverse of split_request; a head without payloads (or a row stored whole,
    before the split) needs no pixels."""
    wire, slots = oob.read_head(head, 1 << 62)
    if slots and (pixels is None or sum(s.length for s in slots) != len(pixels)):
        raise LostPixels(f"{sum(s.length for s in slots)} bytes of pixels expected, "
                         f"{'no file' if pixels is None else len(pixels)} found")
    payloads, offset = [], 0
    for slot in slots:  # from_wire takes bytes: a copy of each field, unless the file holds just one
        payloads.append(pixels if len(slots) == 1 else pixels[offset : offset + slot.length])  # type: ignore[index]
        offset += slot.length
    return from_wire(JobRequest, oob.attach(wire, payloads))
