"""The asyncio websocket server: sessions, a FIFO job queue, streaming.

I/O lives here; the message rules live in `protocol`, the compute in
`engine`. Jobs run one at a time on a single worker thread, so the event
loop keeps answering pings, cancels and new clients during a long job.
Progress is handed back to the loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import logging
import random
import secrets
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from bridge_server import __version__, security
from bridge_server.config import ServerConfig
from bridge_server.convert import few_step_defaults, plot_result, to_params, to_raw, to_result
from bridge_server.jobs import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, Job, ResultStore
from engine.errors import EngineError, JobCancelled
from engine.jobs import Engine
from engine.samplers import SAMPLER_NAMES
from protocol import (
    PROTOCOL_VERSION,
    Accepted,
    Cancel,
    Cancelled,
    Capabilities,
    Error,
    ErrorCode,
    FetchResult,
    Hello,
    JobStatus,
    ListModels,
    Message,
    ModelInfo,
    Models,
    Progress,
    ProtocolError,
    Result,
    Submit,
    Welcome,
    decode,
    encode,
    limits,
    plots,
)
from protocol.errors import MAX_ERROR_FIELD, MAX_ERROR_MESSAGE, clip
from protocol.requests import MAX_GENERATE_SIDE

log = logging.getLogger("paintbridge")


class Session:
    """One connection: its client identity and a bounded outbox.

    Previews are dropped when the client reads slower than we produce. Every
    other frame is queued, up to a bound in frames and in bytes: a client that
    writes but never reads (each request answered by an error that waits in
    its outbox) is disconnected when it falls that far behind. Its jobs go on
    and their results stay fetchable by id. Result frames are shared with the
    result store (one bytes object for every subscriber), so they count
    against the frame bound but not the byte bound.
    """

    def __init__(
        self, ws: ServerConnection, max_pending: int, max_frames: int = 1024, max_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self.ws = ws
        self.client_id = ""
        self.max_pending = max_pending
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._outbox: deque[tuple[bytes, int]] = deque()  # (frame, bytes it holds of its own)
        self._own_bytes = 0
        self._wake = asyncio.Event()
        self.closed = False
        self.overflowed = False

    def send(self, message: Message | bytes, droppable: bool = False, shared: bool = False) -> None:
        if self.closed:
            return
        if droppable and len(self._outbox) >= self.max_pending:
            return
        frame = message if isinstance(message, bytes) else encode(message)
        own = 0 if shared else len(frame)
        if len(self._outbox) >= self.max_frames or self._own_bytes + own > self.max_bytes:
            self._overflow()
            return
        self._outbox.append((frame, own))
        self._own_bytes += own
        self._wake.set()

    def _overflow(self) -> None:
        """Too far behind: drop what waits and end the connection."""
        log.warning("disconnecting client %s: %d frames (%d bytes) unread", self.client_id or "(no hello)",
                    len(self._outbox), self._own_bytes)
        self.closed = self.overflowed = True
        self._outbox.clear()
        self._own_bytes = 0
        self._wake.set()

    def take(self) -> bytes:
        frame, own = self._outbox.popleft()
        self._own_bytes -= own
        return frame

    async def pump(self) -> None:
        """Write the outbox to the socket, in order, until the connection ends."""
        try:
            while not self.closed:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox and not self.closed:
                    await self.ws.send(self.take())
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            if self.overflowed:
                await _close_or_abort(self.ws, 1008, "too far behind: read your messages")


def _allow_frames(ws: ServerConnection, limit: int) -> None:
    """Raise the connection's incoming frame limit (websockets reads it as each frame starts)."""
    protocol: Any = ws.protocol
    if hasattr(protocol, "max_message_size"):  # websockets >= 15
        protocol.max_message_size = limit
    else:  # websockets 14
        protocol.max_size = limit


async def _close_or_abort(ws: ServerConnection, code: int, reason: str, timeout: float = 2.0) -> None:
    """A close handshake needs the peer to read; one that does not is cut off."""
    try:
        await asyncio.wait_for(ws.close(code, reason), timeout)
    except (asyncio.TimeoutError, ConnectionClosed, OSError):
        ws.transport.abort()


def _error(exc: ProtocolError | EngineError, job_id: str = "") -> Error:
    code = exc.code.value if isinstance(exc.code, ErrorCode) else str(exc.code)
    # Engine messages quote names the client sent: capped like the protocol's own.
    return Error(code=code, message=clip(exc.message, MAX_ERROR_MESSAGE), job_id=job_id or getattr(exc, "job_id", ""),
                 field=clip(exc.field, MAX_ERROR_FIELD), ref=getattr(exc, "ref", ""))


class PaintBridgeServer:
    def __init__(self, config: ServerConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.boot = secrets.token_hex(3)  # in every job id: tells "lost in a restart" from "never existed"
        self._ids = itertools.count(1)
        self.jobs: dict[str, Job] = {}  # queued and running
        self.pending: deque[Job] = deque()
        self.results = ResultStore(config.result_retention, config.result_retention_bytes)
        self.sessions: set[Session] = set()  # past hello
        self.waiting: dict[Session, None] = {}  # connected, no hello yet (oldest first)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paintbridge-engine")
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws_server: WsServer | None = None
        self._worker: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._last_scan = 0.0  # monotonic time of the last list_models rescan

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._ws_server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._check_handshake,
            # Until hello has succeeded only small frames: a client without the token
            # must not make us buffer and decode hundreds of MiB per socket.
            max_size=min(self.config.max_hello_bytes, self.config.max_message_bytes),
            compression=None,  # no permessage-deflate: no inflate bombs, raw pixels barely compress
            ping_interval=self.config.ping_interval_s,
            ping_timeout=self.config.ping_timeout_s,
            max_queue=4,
            server_header=f"PaintBridge/{__version__}",
        )
        self._worker = asyncio.create_task(self._run_jobs())
        if self.config.preload and self.engine.registry.default_checkpoint() is not None:
            self._loop.run_in_executor(self.executor, self._preload)

    @property
    def port(self) -> int:
        assert self._ws_server is not None
        return self._ws_server.sockets[0].getsockname()[1]

    async def serve_forever(self) -> None:
        assert self._ws_server is not None
        await self._ws_server.serve_forever()

    async def close(self) -> None:
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
        if self._worker is not None:
            self._worker.cancel()
        for job in self.jobs.values():
            job.cancel.set()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _preload(self) -> None:
        """The default checkpoint: the first that loads (broken ones are logged and skipped)."""
        try:
            started = time.monotonic()
            model = self.engine.load_default()
            if model is not None:
                log.info("loaded %s in %.1fs", model.entry.name, time.monotonic() - started)
        except Exception as exc:  # the first job will report it properly
            log.warning("could not preload a default checkpoint: %s", exc)

    def _background(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    # -- handshake ---------------------------------------------------------------
    def _check_handshake(self, connection: ServerConnection, request: Any):
        origins, hosts = request.headers.get_all("Origin"), request.headers.get_all("Host")
        if len(origins) > 1 or len(hosts) > 1:
            reason: str | None = "duplicate Origin or Host header"
        else:
            reason = security.check_origin(origins[0] if origins else None, self.config.allow_origins)
            reason = reason or security.check_host(hosts[0] if hosts else None, self.config.host)
        # Only clients past hello count: idle sockets cannot lock real clients out.
        if reason is None and len(self.sessions) >= self.config.max_connections:
            log.warning("refused a connection: %d clients connected", len(self.sessions))
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        if reason is not None:
            log.warning("refused a websocket handshake from %s: %s", connection.remote_address, reason)
            return connection.respond(http.HTTPStatus.FORBIDDEN, reason + "\n")
        return None

    # -- connections -------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(ws, self.config.max_pending_frames, self.config.max_outbox_frames,
                          self.config.max_outbox_bytes)
        self.waiting[session] = None
        while len(self.waiting) > self.config.max_waiting:
            # Too many sockets that never said hello: drop the oldest of them.
            oldest = next(iter(self.waiting))
            del self.waiting[oldest]
            oldest.closed = True
            self._background(oldest.ws.close(1013, "too many connections waiting for hello"))
        pump = asyncio.create_task(session.pump())
        try:
            hello_ok = await self._hello(session)
            self.waiting.pop(session, None)
            if hello_ok and not session.closed:
                self.sessions.add(session)
                async for frame in ws:
                    if session.closed:
                        break
                    self._on_frame(session, frame)
        except ConnectionClosed:
            pass
        finally:
            session.closed = True
            session._wake.set()
            self.waiting.pop(session, None)
            self.sessions.discard(session)
            for job in self.jobs.values():
                job.subscribers.discard(session)
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await pump

    async def _hello(self, session: Session) -> bool:
        try:
            frame = await asyncio.wait_for(session.ws.recv(), self.config.hello_timeout_s)
        except asyncio.TimeoutError:
            await self._refuse(session, Error(ErrorCode.HELLO_REQUIRED.value, "no hello received in time"))
            return False
        try:
            hello = decode(frame)
        except ProtocolError as exc:
            await self._refuse(session, _error(exc))
            return False
        if not isinstance(hello, Hello):
            await self._refuse(session, Error(ErrorCode.HELLO_REQUIRED.value, "the first message must be hello"))
            return False
        if hello.protocol != PROTOCOL_VERSION:
            await self._refuse(
                session,
                Error(
                    ErrorCode.VERSION_MISMATCH.value,
                    f"this server speaks protocol {PROTOCOL_VERSION}, the client {hello.protocol}; "
                    "update the older of the two",
                ),
            )
            return False
        if not security.token_ok(hello.token, self.config.token):
            log.warning("refused a client from %s: wrong or missing token", session.ws.remote_address)
            await self._refuse(session, Error(ErrorCode.UNAUTHORIZED.value, "wrong or missing token"))
            return False
        session.client_id = hello.client_id or secrets.token_hex(16)
        # Past hello: frames up to the full limit. The parser reads this when the
        # next frame starts, so a client that waits for `welcome` gets it.
        _allow_frames(session.ws, self.config.max_message_bytes)
        session.send(
            Welcome(
                protocol=PROTOCOL_VERSION,
                server=f"paintbridge/{__version__}",
                client_id=session.client_id,
                capabilities=self.capabilities(),
            )
        )
        return True

    async def _refuse(self, session: Session, error: Error) -> None:
        session.send(error)
        session.closed = True
        with contextlib.suppress(ConnectionClosed):
            while session._outbox:
                await session.ws.send(session.take())
            await session.ws.close(1008, error.code)

    def capabilities(self) -> Capabilities:
        registry = self.engine.registry
        default = registry.default_checkpoint()
        return Capabilities(
            models=self._model_infos(),
            default_model=default.name if default else "",
            samplers=list(SAMPLER_NAMES),
            upscalers=self.engine.upscalers.names() if self.engine.upscalers else [],
            max_message_bytes=self.config.max_message_bytes,
            max_image_side=MAX_GENERATE_SIDE,
            max_batch=16,
            max_queue=self.config.max_queue,
            result_retention=self.config.result_retention,
        )

    def _model_infos(self) -> list[ModelInfo]:
        return [
            ModelInfo(e.name, e.kind, e.family.name if e.family else "", e.native_size,
                      few_step_defaults(e.few_step))
            for e in self.engine.registry.list()
        ]

    # -- messages ----------------------------------------------------------------
    def _on_frame(self, session: Session, frame: Any) -> None:
        message: Message | None = None
        try:
            message = decode(frame)
            if isinstance(message, Submit):
                self._submit(session, message)
            elif isinstance(message, Cancel):
                self._cancel(session, message.job_id)
            elif isinstance(message, FetchResult):
                self._fetch(session, message.job_id)
            elif isinstance(message, ListModels):
                self._rescan()
                default = self.engine.registry.default_checkpoint()
                session.send(Models(self._model_infos(), default.name if default else ""))
            elif isinstance(message, Hello):
                session.send(Error(ErrorCode.BAD_MESSAGE.value, "hello was already received"))
            else:
                session.send(Error(ErrorCode.UNKNOWN_MESSAGE.value, f"a client does not send {message.type!r}"))
        except (ProtocolError, EngineError) as exc:
            error = _error(exc)
            if isinstance(message, Submit):
                error.ref = message.ref  # refusals of a well-formed submit (names, limits, queue)
            session.send(error)
        except Exception:  # a bug must not take the connection down
            log.exception("error handling a message")
            session.send(Error(ErrorCode.INTERNAL.value, "internal error while handling the message"))

    def _rescan(self) -> None:
        """Rescan the models folder for `list_models`, at most twice a second:
        the scan's work follows the folder, so a client sending list_models in
        a loop must not make the event loop walk the disk for each one."""
        now = time.monotonic()
        if now - self._last_scan >= 0.5:
            self._last_scan = now
            self.engine.registry.scan()

    def _submit(self, session: Session, message: Submit) -> None:
        request = message.request
        # Names, combinations and sizes: bad input fails before queueing (every cell of a plot).
        cells = plots.cells(request) if request.plot is not None else [plots.Cell(request, [])]
        sized = []
        for cell in cells:
            entry = self.engine.check(to_params(cell.request))
            native = entry.native_size if entry is not None and entry.native_size else limits.MAX_NATIVE
            limits.check_sides(cell.request, native)
            sized.append((cell.request, native, cell.labels))
        # The whole result travels as one message: it must fit the limit the client was told.
        limits.check_result_bytes(sized, self.config.max_message_bytes)
        if len(self.jobs) >= self.config.max_queue:
            raise EngineError("queue_full", f"the queue is full ({self.config.max_queue} jobs); try again later")
        held = sum(limits.request_bytes(j.request) for j in self.jobs.values()) + limits.request_bytes(request)
        if held > self.config.max_queue_bytes:
            raise EngineError("queue_full", f"the queued jobs' images would hold {held / 2**20:.0f} MiB, more than "
                                            f"{self.config.max_queue_bytes / 2**20:.0f} MiB; try again when one is done")
        job = Job(id=f"{self.boot}-{next(self._ids):06d}", owner=session.client_id, request=request)
        job.subscribers.add(session)
        self.jobs[job.id] = job
        self.pending.append(job)
        session.send(Accepted(job_id=job.id, position=self._position(job), ref=message.ref))
        log.info("job %s queued (%s, position %d)", job.id, request.kind, self._position(job))
        assert self._wake is not None
        self._wake.set()

    def _position(self, job: Job) -> int:
        """Jobs ahead of this one (0 = runs next, or is running)."""
        if job.state == RUNNING:
            return 0
        running = any(j.state == RUNNING for j in self.jobs.values())
        return self.pending.index(job) + int(running) if job in self.pending else 0

    def _owned(self, session: Session, job_id: str) -> Job | None:
        job = self.jobs.get(job_id) or self.results.get(job_id)
        if job is None or job.owner != session.client_id:
            # Someone else's job is reported exactly like a missing one.
            lost = job is None and job_id.split("-", 1)[0] != self.boot and "-" in job_id
            code = ErrorCode.JOB_LOST if lost else ErrorCode.NOT_FOUND
            text = "the server restarted since this job was submitted; it is lost" if lost else f"no job {job_id!r}"
            if not lost and job is None:
                text += " (unknown, or its result was dropped from the bounded store)"
            session.send(Error(code.value, text, job_id=job_id))
            return None
        return job

    def _cancel(self, session: Session, job_id: str) -> None:
        job = self._owned(session, job_id)
        if job is None:
            return
        if job.state == QUEUED:
            self.pending.remove(job)
            job.subscribers.add(session)
            self._finish(job, CANCELLED, Cancelled(job.id))
        elif job.state == RUNNING:
            if job.cancel.is_set():
                session.send(JobStatus(job.id, "cancelling"))
            job.cancel.set()  # the worker stops within one sampling step
            job.subscribers.add(session)
        else:
            session.send(JobStatus(job.id, job.state))  # already over: nothing to cancel

    def _fetch(self, session: Session, job_id: str) -> None:
        job = self._owned(session, job_id)
        if job is None:
            return
        if job.done:
            session.send(job.frame, shared=True)
        else:
            job.subscribers.add(session)
            session.send(JobStatus(job.id, job.state, self._position(job)))

    # -- the worker --------------------------------------------------------------
    async def _run_jobs(self) -> None:
        assert self._wake is not None and self._loop is not None
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self.pending.popleft()
            job.state = RUNNING
            started = time.monotonic()
            log.info("job %s running", job.id)
            state, outcome, frame = await self._loop.run_in_executor(self.executor, self._execute, job)
            job.frame = frame
            self._finish(job, state, outcome)
            log.info("job %s %s in %.2fs", job.id, state, time.monotonic() - started)

    def _execute(self, job: Job) -> tuple[str, Message, bytes]:
        """On the worker thread: run the job and encode its outcome once."""
        try:
            if job.request.plot is not None:
                outcome: Message = self._run_plot(job)
            else:
                outcome = to_result(job.id, self.engine.run(to_params(job.request), self._progress_fn(job), job.cancel))
            state = FINISHED
        except JobCancelled:
            outcome, state = Cancelled(job.id), CANCELLED
        except EngineError as exc:
            outcome, state = _error(exc, job.id), FAILED
        except Exception as exc:
            log.exception("job %s failed", job.id)
            outcome, state = Error(ErrorCode.INTERNAL.value, f"internal error: {exc}", job.id), FAILED
        return state, outcome, encode(outcome)

    def _run_plot(self, job: Job) -> Result:
        """A plot's cells one after another, as one job; every image keeps its labels."""
        request = job.request
        # One seed for every cell (unless an axis varies it), as the WebUI: resolve -1 once.
        if request.seed < 0:
            request = replace(request, seed=random.randrange(2**32))
        if request.subseed < 0 and request.subseed_strength > 0:
            request = replace(request, subseed=random.randrange(2**32))
        cells = plots.cells(request)
        outputs = []
        for i, cell in enumerate(cells):
            output = self.engine.run(to_params(cell.request), self._progress_fn(job, i + 1, len(cells)), job.cancel)
            outputs.append((output, cell.labels))
        return plot_result(job.id, outputs)

    def _progress_fn(self, job: Job, cell: int = 0, cells: int = 0):
        loop = self._loop
        assert loop is not None

        def report(
            step: int, total: int, stage: str, preview: np.ndarray | None, tile: int = 0, tiles: int = 0
        ) -> None:
            small = to_raw(preview) if preview is not None else None
            message = Progress(job.id, step, total, stage, small, tile, tiles, cell, cells)
            loop.call_soon_threadsafe(self._broadcast, job, encode(message))

        return report

    def _broadcast(self, job: Job, frame: bytes) -> None:
        for session in list(job.subscribers):
            session.send(frame, droppable=True)

    def _finish(self, job: Job, state: str, outcome: Message) -> None:
        job.state = state
        job.outcome = outcome
        if not job.frame:
            job.frame = encode(outcome)
        job.release_pixels()
        self.jobs.pop(job.id, None)
        self.results.add(job)  # kept by id, even if every subscriber has left
        for session in job.subscribers:
            session.send(job.frame, shared=True)
        job.subscribers.clear()
