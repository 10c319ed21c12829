"""The embedded queue: one process, durable.

Jobs are kept in SQLite (sqlite_store.py) and scheduled fairly (fair.py);
they run one at a time on this process's engine, on a worker thread, so the
event loop keeps answering while a job runs. Live jobs are kept in memory
only: a stale live picture is worth nothing after a restart.

Big writes stay off the event loop and off the reply's path: a request's
pixels are written to their file on the I/O thread before `accepted` (the
row then names them) and fsynced after it; a result is delivered to its
followers first and then written, fsynced and marked finished on the same
thread (until then `view` answers from memory). sqlite_store.py says what
survives a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bridge_server.convert import to_raw
from bridge_server.queue.base import Deliver, EngineCatalog, JobQueue, Submitted
from bridge_server.queue.fair import Entry, FairScheduler
from bridge_server.queue.records import CANCELLED, DONE, QUEUED, RUNNING, JobRecord, JobView, job_id, split_request
from bridge_server.queue.runner import Interrupted, StopFlags, execute
from bridge_server.queue.sqlite_store import Retention, SqliteStore
from engine.errors import EngineError
from protocol import Cancelled, Progress, encode
from protocol.oob import Parts
from protocol.requests import JobRequest

log = logging.getLogger("paintbridge")

PROGRESS_WRITE_S = 0.5  # the stored progress point: at most twice a second
# Queued requests' pixels kept in memory as well as on disk (they then run without reading their file back);
# beyond this many bytes a request is read from its file when it starts: a flood of big queued jobs costs disk,
# not memory.
HELD_PIXELS = 256 * 1024 * 1024


class EmbeddedQueue(JobQueue):
    def __init__(self, engine, state_dir: Path, *, max_queue: int = 256, per_client: int = 32,
                 retention: Retention | None = None, max_bytes: int = 1024**3) -> None:
        self.engine = engine
        self.catalog = EngineCatalog(engine)
        self.store = SqliteStore(state_dir, retention or Retention())
        self.queue_id = self.store.queue_id
        self.max_queue = max_queue
        # Pixel bytes of the unfinished (queued or running) jobs, on disk and partly in memory: bounded
        # (config.max_queue_bytes) so a flood of big requests is refused instead of filling the disk.
        self.max_bytes = max_bytes
        self.pixel_bytes: dict[str, int] = {}
        self.per_client = per_client
        self.scheduler = FairScheduler(per_client)
        self.live: dict[str, JobRecord] = {}  # live jobs (queued or running), memory only
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paintbridge-engine")
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paintbridge-store")  # one: writes in order
        self.requests: dict[str, tuple[JobRequest, int]] = {}  # queued here (with their pixel bytes), up to HELD_PIXELS
        self._held = 0  # pixel bytes in self.requests
        self.finishing: dict[str, tuple[str, str, bytes]] = {}  # delivered, not yet on disk: id -> (owner, state, frame)
        self._writes: set[asyncio.Future] = set()
        self._running: tuple[str, StopFlags] | None = None
        self._deliver: Deliver | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._progress_written = 0.0
        self.started: list[str] = []  # job ids in the order they started (tests, logs)

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._wake = asyncio.Event()
        restored = self.store.unfinished()
        for record in restored:
            if record.state == RUNNING:
                log.info("job %s was running when the server stopped: it runs again from its start", record.id)
                self.store.requeue(record.id)
            self.scheduler.add(Entry(record.id, record.owner, False, record.model), restored=True)
            self.pixel_bytes[record.id] = self.store.pixel_bytes(record.id)
        if restored:
            log.info("%d jobs restored from %s", len(restored), self.store.dir)
        self._task = asyncio.create_task(self._run())

    async def flush(self) -> None:
        """Wait for every background write (results, fsyncs)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    def _in_background(self, awaitable) -> None:
        future = asyncio.ensure_future(awaitable)
        self._writes.add(future)
        future.add_done_callback(self._writes.discard)

    async def stop(self, grace_s: float) -> None:
        self._stopping = True
        assert self._wake is not None
        self._wake.set()
        if self._task is None:
            return
        if self._running is not None:
            running_id, flags = self._running
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), grace_s)
            if not self._task.done():
                log.info("job %s stops at its next step; it runs again after the restart", running_id)
                flags.interrupt.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.flush()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            if self._running is not None:
                self._running[1].interrupt.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.flush()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.io.shutdown(wait=True)
        self.store.close()

    # -- the front end's calls -----------------------------------------------------------
    async def new_id(self) -> str:
        return job_id(self.queue_id, self.store.next_seq())

    async def submit(self, owner: str, request: JobRequest, job_id_: str) -> Submitted:
        if not request.live and self.store.count_unfinished() >= self.max_queue:
            raise EngineError("queue_full", f"the queue is full ({self.max_queue} jobs); try again later")
        record = JobRecord(job_id_, owner, request, int(job_id_.rsplit("-", 1)[1]))
        head, pixels = b"", []
        if not request.live:
            # The pixels to their file on the I/O thread (the loop keeps serving), before the row names them.
            head, *pixels = split_request(request)
            size = sum(len(p) for p in pixels)
            held = sum(self.pixel_bytes.values())
            if size and held + size > self.max_bytes:
                raise EngineError("queue_full", f"the queued jobs' images would hold {(held + size) / 2**20:.0f} MiB, "
                                                f"more than {self.max_bytes / 2**20:.0f} MiB; try again when one is done")
            if pixels:
                await asyncio.get_running_loop().run_in_executor(self.io, self.store.write_pixels, job_id_, pixels)
        try:
            superseded = self.scheduler.add(Entry(record.id, owner, request.live, request.model))  # may refuse
        except BaseException:
            self.store.drop_pixels(job_id_)
            raise
        gone = []
        if request.live:
            self.live[record.id] = record
            if superseded:
                gone.append(superseded)
                self._end(superseded, CANCELLED, encode(Cancelled(superseded)))
            if self._running is not None and self.live.get(self._running[0], None) is not None:
                running = self.live[self._running[0]]
                if running.owner == owner:  # a running live job of this client: stop it at the next step
                    self._running[1].cancel.set()
                    gone.append(running.id)
        else:
            self.store.insert(record, head)
            self.pixel_bytes[record.id] = size
            if self._held + size <= HELD_PIXELS:
                self.requests[record.id] = (request, size)
                self._held += size
            if pixels:  # durable against a crash of the machine a moment later, not before the answer
                self._in_background(asyncio.get_running_loop().run_in_executor(self.io, self.store.sync_pixels,
                                                                               record.id))
        assert self._wake is not None
        self._wake.set()
        return Submitted(record.id, self._position(record.id), gone)

    async def cancel(self, owner: str, job_id_: str) -> str | None:
        view = await self.view(owner, job_id_)
        if view is None:
            return None
        if view.state == QUEUED:
            self.scheduler.remove(job_id_)
            self._end(job_id_, CANCELLED, encode(Cancelled(job_id_)))
            return CANCELLED
        if view.state == RUNNING:
            assert self._running is not None
            flags = self._running[1]
            if flags.cancel.is_set():
                return "already cancelling"
            flags.cancel.set()  # the engine stops within one sampling step
            return "cancelling"
        return view.state

    async def view(self, owner: str, job_id_: str) -> JobView | None:
        live = self.live.get(job_id_)
        if live is not None:
            return JobView(job_id_, live.state, self._position(job_id_)) if live.owner == owner else None
        finishing = self.finishing.get(job_id_)
        if finishing is not None:
            return JobView(job_id_, finishing[1], 0, finishing[2]) if finishing[0] == owner else None
        row = self.store.get(job_id_)
        if row is None or row[0] != owner:
            return None
        state = row[1]
        if state in DONE:
            frame = self.store.frame(job_id_)
            return JobView(job_id_, state, 0, frame) if frame is not None else None
        return JobView(job_id_, state, self._position(job_id_))

    async def active(self, owner: str) -> list[str]:
        return [r.id for r in self.live.values() if r.owner == owner] + self.store.active(owner)

    def _position(self, job_id_: str) -> int:
        if self._running is not None and self._running[0] == job_id_:
            return 0
        return self.scheduler.position(job_id_) + int(self._running is not None)

    # -- running -------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while not self._stopping:
            entry = self.scheduler.next()
            if entry is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            live = self.live.get(entry.id)
            held = self.requests.get(entry.id)
            request = live.request if live is not None else held[0] if held else self.store.request(entry.id)
            if request is None:
                continue
            if live is not None:
                live.state = RUNNING
            else:
                attempt = self.store.running(entry.id)
                if attempt > 1:
                    log.info("job %s runs again (start %d)", entry.id, attempt)
            flags = StopFlags()
            self._running = (entry.id, flags)
            self.started.append(entry.id)
            del self.started[:-1000]
            started = time.monotonic()
            log.info("job %s running", entry.id)
            report = self._reporter(loop, entry.id, request.preview and not request.live)
            try:
                state, frame = await loop.run_in_executor(self.executor, execute, self.engine, entry.id, request,
                                                          report, flags)
            except Interrupted:
                if live is None:
                    self.store.requeue(entry.id)
                log.info("job %s interrupted by the shutdown; kept queued", entry.id)
                self._running = None
                return
            self._running = None
            self._end(entry.id, state, frame)
            log.info("job %s %s in %.2fs", entry.id, state, time.monotonic() - started)

    def _reporter(self, loop: asyncio.AbstractEventLoop, job_id_: str, previews: bool):
        def report(step, total, stage, preview: np.ndarray | None, tile=0, tiles=0, cell=0, cells=0) -> None:
            small = to_raw(preview) if preview is not None and previews else None
            frame = encode(Progress(job_id_, step, total, stage, small, tile, tiles, cell, cells))
            loop.call_soon_threadsafe(self._on_progress, job_id_, step, total, frame)

        return report

    def _on_progress(self, job_id_: str, step: int, total: int, frame: bytes) -> None:
        now = time.monotonic()
        if job_id_ not in self.live and (now - self._progress_written > PROGRESS_WRITE_S or step >= total):
            self._progress_written = now
            self.store.progress(job_id_, step, total)
        assert self._deliver is not None
        self._deliver(job_id_, frame, False)

    def _end(self, job_id_: str, state: str, frame: bytes) -> None:
        """The job's one final frame: delivered, then stored (unless live) in the background."""
        if self.live.pop(job_id_, None) is None:
            self._held -= self.requests.pop(job_id_, (None, 0))[1]
            self.pixel_bytes.pop(job_id_, None)
            row = self.store.get(job_id_)
            self.finishing[job_id_] = (row[0] if row else "", state, frame)
            self._in_background(self._store_result(job_id_, state, frame))
        assert self._deliver is not None
        self._deliver(job_id_, frame, True)

    async def _store_result(self, job_id_: str, state: str, frame: bytes) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self.io, self.store.write_result, job_id_, frame)
            self.store.mark_finished(job_id_, state, frame.nbytes if isinstance(frame, Parts) else len(frame))
        except Exception:  # a full disk: the job runs again after a restart; clients that followed it have it
            log.exception("could not store the result of job %s", job_id_)
        finally:
            self.finishing.pop(job_id_, None)
