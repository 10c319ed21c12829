"""The queue as an interface: what the websocket front end needs from it.

Two implementations: `embedded.EmbeddedQueue` (one process, SQLite + files,
runs the jobs on its own engine) and `redis_queue.RedisQueue` (Redis Streams;
the jobs run in `paintbridge worker` processes anywhere). The front end
(server.py) keeps the sockets and knows nothing of either: it submits,
cancels and looks jobs up, and the queue hands every progress frame and
final frame back through `deliver`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge_server.convert import few_step_defaults, to_params
from bridge_server.queue.records import JobView
from protocol import ModelInfo, limits, plots
from protocol.requests import JobRequest

# deliver(job_id, frame, final): a progress frame (final=False, may be dropped
# for a slow reader) or the job's one final frame (result / error / cancelled).
Deliver = Callable[[str, bytes, bool], None]


@dataclass
class Submitted:
    job_id: str
    position: int
    superseded: list[str] = field(default_factory=list)  # live jobs this one replaced


class Catalog(ABC):
    """The models the jobs can use, and the checks that need no model work."""

    @abstractmethod
    def model_infos(self) -> list[ModelInfo]: ...

    @abstractmethod
    def default_model(self) -> str: ...

    @abstractmethod
    def upscalers(self) -> list[str]: ...

    @abstractmethod
    def check(self, request: JobRequest, max_message_bytes: int = 0) -> None:
        """Raise EngineError / ProtocolError for a request that cannot run
        (or, with `max_message_bytes`, whose result would not fit one message)."""

    def rescan(self) -> None:
        return None


class EngineCatalog(Catalog):
    """The catalog of a process that holds the engine (embedded server, worker)."""

    RESCAN_S = 0.5  # list_models rescans the folder at most this often: a loop of them must not walk the disk

    def __init__(self, engine) -> None:
        self.engine = engine
        self._last_scan = 0.0

    def model_infos(self) -> list[ModelInfo]:
        return [
            ModelInfo(e.name, e.kind, e.family.name if e.family else "", e.native_size, few_step_defaults(e.few_step))
            for e in self.engine.registry.list()
        ]

    def default_model(self) -> str:
        default = self.engine.registry.default_checkpoint()
        return default.name if default else ""

    def upscalers(self) -> list[str]:
        return self.engine.upscalers.names() if self.engine.upscalers else []

    def check(self, request: JobRequest, max_message_bytes: int = 0) -> None:
        # Names, combinations and sizes: bad input fails before queueing (every cell of a plot).
        sized = []
        for cell in plots.cells(request) if request.plot is not None else [plots.Cell(request, [])]:
            entry = self.engine.check(to_params(cell.request))
            native = entry.native_size if entry is not None and entry.native_size else limits.MAX_NATIVE
            limits.check_sides(cell.request, native)
            sized.append((cell.request, native, cell.labels))
        if max_message_bytes:  # the whole result travels as one message
            limits.check_result_bytes(sized, max_message_bytes)

    def rescan(self) -> None:
        now = time.monotonic()
        if now - self._last_scan >= self.RESCAN_S:
            self._last_scan = now
            self.engine.registry.scan()


class JobQueue(ABC):
    queue_id: str  # the prefix of every job id this queue issued
    durable: bool = True
    per_client: int = 0  # queued jobs one client may have
    catalog: Catalog

    @abstractmethod
    async def start(self, deliver: Deliver) -> None: ...

    @abstractmethod
    async def new_id(self) -> str:
        """A fresh job id (the front end follows it before the job can run)."""

    @abstractmethod
    async def submit(self, owner: str, request: JobRequest, job_id: str) -> Submitted:
        """Queue a job (seeds already fixed by the caller). Raises ClientQueueFull
        or EngineError("queue_full")."""

    @abstractmethod
    async def cancel(self, owner: str, job_id: str) -> str | None:
        """None: no such job of this owner. "cancelled": it was queued and its
        final frame has been delivered. "cancelling": it runs and stops at the
        next step. "already cancelling", or a final state: nothing to do."""

    @abstractmethod
    async def view(self, owner: str, job_id: str) -> JobView | None: ...

    @abstractmethod
    async def active(self, owner: str) -> list[str]:
        """This owner's queued and running jobs."""

    @abstractmethod
    async def stop(self, grace_s: float) -> None:
        """Shutting down for a restart: start nothing new, let a running job
        finish for up to `grace_s`, then stop it at its next step and keep it
        queued (it runs again after the restart). Keeps every state."""

    async def close(self) -> None:
        return None
