"""Live painting without Krita: when to send, what to send, and the timings.

The docker's Live mode (live_ui.py) polls the canvas on a Qt timer, because
Krita 5.1's Python API has no "stroke finished" signal. Each poll reads the
live area's pixels (the projection, what a refine would send anyway) and
hashes them (`fingerprint`); a changed fingerprint starts the debounce, and
when the painter has been still for `delay_s` (or has painted without pause
for `max_wait_s`) one live refine is sent. The server drops a superseded live
job, so sending during a long stroke costs nothing but the model's time.

Everything here is plain Python with a clock passed in, so the rules are
tested without Krita (tests/test_krita_live.py).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace

from protocol import JobRequest, RawImage

from .requests import Settings, generate_request

DELAY_S = 0.2  # quiet time after the last change before a refine is sent
MAX_WAIT_S = 1.0  # painting without pause: one refine at least this often
POLL_S = 0.1  # the fastest poll; slower when a poll is expensive (`Poller`)
MAX_POLL_SHARE = 0.1  # at most this share of the UI thread goes to polling
DEFAULT_STRENGTH = 0.5  # krita-ai-diffusion's live default is about this: the strokes lead, the model details


def fingerprint(pixels: bytes, selection: tuple | None = None, extra: str = "") -> bytes:
    """A digest of the live area's pixels, the selection and the live settings.

    BLAKE2b (hashlib's C code, which releases the GIL for large buffers) of the
    raw pixel data: exact, so a one-pixel stroke counts, and about a
    millisecond per MiB, cheaper than any downscale that could miss it."""
    digest = hashlib.blake2b(pixels, digest_size=16)
    digest.update(repr((selection, extra)).encode())
    return digest.digest()


@dataclass
class Debounce:
    """Fire once after `delay_s` of quiet following a change, or every
    `max_wait_s` while changes keep coming; never while nothing changed."""

    delay_s: float = DELAY_S
    max_wait_s: float = MAX_WAIT_S
    first_change: float | None = None  # the first change not sent yet
    last_change: float | None = None

    def changed(self, now: float) -> None:
        if self.first_change is None:
            self.first_change = now
        self.last_change = now

    @property
    def pending(self) -> bool:
        return self.last_change is not None

    def due(self, now: float) -> bool:
        if self.last_change is None or self.first_change is None:
            return False
        return now - self.last_change >= self.delay_s or now - self.first_change >= self.max_wait_s

    def due_in(self, now: float) -> float | None:
        """Seconds until `due`, None when nothing is pending: the next poll can be timed to it."""
        if self.last_change is None or self.first_change is None:
            return None
        return max(0.0, min(self.last_change + self.delay_s, self.first_change + self.max_wait_s) - now)

    def fired(self) -> None:
        self.first_change = self.last_change = None


@dataclass
class Poller:
    """How often to poll: every `POLL_S`, or slower when a poll costs more than
    `MAX_POLL_SHARE` of the interval (a huge canvas on a slow machine)."""

    base_s: float = POLL_S
    share: float = MAX_POLL_SHARE
    cost_s: float = 0.0  # the last poll's cost (smoothed)

    def record(self, cost_s: float) -> None:
        self.cost_s = cost_s if self.cost_s == 0.0 else 0.5 * self.cost_s + 0.5 * cost_s

    @property
    def interval_s(self) -> float:
        return max(self.base_s, self.cost_s / self.share)


def live_seed(settings: Settings, current: int | None, rng: random.Random | None = None) -> int:
    """The fixed seed of a live session: the docker's seed, or (random seed
    ticked) one drawn when Live starts and kept until the painter asks for a new one.
    A fixed seed keeps the picture from jumping between strokes."""
    if not settings.random_seed:
        return settings.seed
    if current is not None:
        return current
    return (rng or random.Random()).randrange(0, 2**31 - 1)


def live_size(width: int, height: int, native: int) -> tuple[int, int]:
    """The size the model paints a live area at: the area itself up to the
    model's native pixel count, else scaled down to it (aspect kept, multiples
    of 8). Live pictures are sketches: speed over pixels, as krita-ai-diffusion's
    live mode; Apply scales the picture back to the area."""
    native = native or 512
    scale = min(1.0, (native * native / max(1, width * height)) ** 0.5)
    return max(64, round(width * scale / 8) * 8), max(64, round(height * scale / 8) * 8)


@dataclass(frozen=True)
class FewStep:
    """A model's few-step settings (protocol ModelInfo.few_step), as the docker sees them."""

    kind: str
    steps: int
    cfg_scale: float
    sampler: str
    schedule: str = ""


def few_step_of(model_info) -> FewStep | None:
    info = getattr(model_info, "few_step", None) if model_info is not None else None
    if info is None:
        return None
    return FewStep(info.kind, info.steps, info.cfg_scale, info.sampler, getattr(info, "schedule", "") or "")


def live_settings(settings: Settings, strength: float, seed: int, few_step: FewStep | None) -> Settings:
    """The docker's settings for a live refine: the live strength, the fixed
    seed, one image; a few-step model's own steps, CFG (1: no unconditional
    pass), sampler and schedule; exact resolution (no hires pass)."""
    s = replace(settings, strength=min(strength, 0.99), seed=seed, random_seed=False, batch=1, resolution="exact")
    if few_step is not None:
        s = replace(s, steps=few_step.steps, cfg_scale=few_step.cfg_scale, sampler=few_step.sampler)
    return s


def live_request(settings: Settings, image: RawImage, mask: RawImage | None = None,
                 few_step: FewStep | None = None) -> JobRequest:
    """A refine (or, with a selection, a soft-masked inpaint) at the live
    strength, flagged `live`: the server supersedes this client's previous live
    job with it and sends no previews."""
    request = generate_request(settings, image.width, image.height, image, mask)
    extra: dict = {"live": True, "preview": False}
    if few_step is not None and few_step.schedule:
        extra["schedule_type"] = few_step.schedule
    return replace(request, **extra)


@dataclass
class Stroke:
    """One live round's clock (perf_counter seconds), for the latency figures."""

    changed: float  # the poll that saw the change
    sent: float = 0.0  # the request handed to the network thread
    received: float = 0.0  # the result event picked up on the UI thread
    shown: float = 0.0  # the picture on screen
    read_ms: float = 0.0  # UI thread: reading and hashing the pixels for the request
    show_ms: float = 0.0  # UI thread: the picture into the docker
    job_id: str = ""  # the server's, to match its log's engine time

    def as_dict(self) -> dict:
        return {"changed": self.changed, "sent": self.sent, "received": self.received, "shown": self.shown,
                "read_ms": self.read_ms, "show_ms": self.show_ms, "job_id": self.job_id}


@dataclass
class LiveState:
    """A live session: the seed, the last fingerprint sent, the newest result."""

    seed: int | None = None
    sent_fingerprint: bytes = b""
    seen_fingerprint: bytes = b""
    tags: dict[str, Stroke] = field(default_factory=dict)  # live jobs in flight
    newest_tag: str = ""  # the most recent live job sent; older results are stale
    results: int = 0
    strokes: list[Stroke] = field(default_factory=list)  # finished rounds (bounded)

    def observe(self, print_: bytes, now: float, debounce: Debounce) -> bool:
        """A poll's fingerprint; True when it differs from what the last poll saw."""
        if print_ == self.seen_fingerprint:
            return False
        self.seen_fingerprint = print_
        if print_ != self.sent_fingerprint:
            debounce.changed(now)
        return True

    def sending(self, tag: str, print_: bytes, stroke: Stroke) -> None:
        self.sent_fingerprint = print_
        self.tags[tag] = stroke
        self.newest_tag = tag

    def finished(self, tag: str) -> Stroke | None:
        """A live job ended; its stroke if it is the newest (else its picture is stale)."""
        stroke = self.tags.pop(tag, None)
        if stroke is None or tag != self.newest_tag:
            return None
        self.strokes.append(stroke)
        del self.strokes[:-200]
        return stroke
