"""Job records and the bounded store of finished results."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from protocol import Message, Result
from protocol.requests import JobRequest

if TYPE_CHECKING:
    from bridge_server.server import Session

QUEUED, RUNNING, FINISHED, FAILED, CANCELLED = "queued", "running", "finished", "failed", "cancelled"


@dataclass(eq=False)
class Job:
    id: str
    owner: str  # client_id of the submitter; only it may follow, fetch or cancel
    request: JobRequest
    state: str = QUEUED
    cancel: threading.Event = field(default_factory=threading.Event)
    subscribers: set[Session] = field(default_factory=set)
    outcome: Message | None = None  # Result | Error | Cancelled, once done
    frame: bytes = b""  # the outcome, encoded once for every subscriber
    created: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.state in (FINISHED, FAILED, CANCELLED)

    def release_pixels(self) -> None:
        """Once done, the pixels live only in `frame`: the request's image and
        mask and the outcome's decoded images are dropped, so a kept result
        costs its frame (what the store counts), not three times that."""
        if self.request.image is not None or self.request.mask is not None:
            self.request = replace(self.request, image=None, mask=None, plot=self.request.plot)
        if isinstance(self.outcome, Result) and self.outcome.images:
            self.outcome = replace(self.outcome, images=[])


class ResultStore:
    """Finished jobs by id, oldest dropped beyond `count` jobs or `max_bytes`."""

    def __init__(self, count: int, max_bytes: int) -> None:
        self.count = count
        self.max_bytes = max_bytes
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._bytes = 0

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job
        self._bytes += len(job.frame)
        while len(self._jobs) > self.count or (self._bytes > self.max_bytes and len(self._jobs) > 1):
            _, old = self._jobs.popitem(last=False)
            self._bytes -= len(old.frame)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def __len__(self) -> int:
        return len(self._jobs)
