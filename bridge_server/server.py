"""The asyncio websocket server: sessions, handshake, streaming.

I/O lives here; the message rules live in `protocol`, the compute in
`engine`, the jobs in a queue (`bridge_server.queue`): embedded (durable,
runs the jobs in this process) or Redis (this process is a front end; the
jobs run in `paintbridge worker` processes). The queue hands every progress
and final frame back through `_deliver`, to the sessions following the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import secrets
import time
from collections import deque
from typing import Any

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from bridge_server import __version__, security
from bridge_server.config import ServerConfig
from bridge_server.queue import JobQueue
from bridge_server.queue.fair import ClientQueueFull
from bridge_server.queue.records import DONE as DONE_STATES
from bridge_server.queue.records import JobView, fix_seeds, issued_by, well_formed
from engine.errors import EngineError
from engine.samplers import SAMPLER_NAMES
from protocol import (
    Accepted,
    Cancel,
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
    ProtocolError,
    Restarting,
    Submit,
    Welcome,
    decode,
    encode,
    oob,
)
from protocol.codec import decode_wire
from protocol.errors import MAX_ERROR_FIELD, MAX_ERROR_MESSAGE, clip
from protocol.requests import MAX_GENERATE_SIDE
from protocol.version import PROTOCOL_VERSION, SUPPORTED_PROTOCOLS

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
        self.protocol = PROTOCOL_VERSION  # the client's, from hello: 2 gets every message as one msgpack frame
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
        frame = message if isinstance(message, (bytes, oob.Parts)) else encode(message)
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
                    await self._write(self.take())
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            if self.overflowed:
                await _close_or_abort(self.ws, 1008, "too far behind: read your messages")

    async def _write(self, frame: bytes | oob.Parts) -> None:
        """One queued frame onto the socket. A stored envelope (protocol/oob.py: a
        result with its pixels beside the head) goes to a protocol-3 client as its
        head and payload messages, as views (no copy), to a protocol-2 client as
        one msgpack frame. Big messages leave in oob.FRAGMENT-sized fragments: the
        websocket library's per-frame copies then stay cache-sized."""
        if isinstance(frame, oob.Parts) or oob.is_envelope(frame):
            if self.protocol >= 3:
                head, *payloads = oob.split_frame(frame)
                await self.ws.send(head)
                for payload in payloads:
                    await self.ws.send(oob.fragments(payload))
                return
            frame = oob.to_plain(frame)
        await self.ws.send(frame if len(frame) <= oob.FRAGMENT else oob.fragments(frame))

    async def drain(self) -> None:
        """Wait until the outbox is written (or the connection is gone)."""
        while self._outbox and not self.closed:
            await asyncio.sleep(0.01)


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
    def __init__(self, config: ServerConfig, engine=None, queue: JobQueue | None = None) -> None:
        """`engine`: run the jobs here (embedded queue, the default); `queue`:
        any queue, e.g. Redis (then this process is a front end, no engine)."""
        self.config = config
        self.engine = engine
        if queue is None:
            from bridge_server.queue import embedded_queue

            queue = embedded_queue(engine, config)
        self.queue = queue
        self.followers: dict[str, set[Session]] = {}  # job id -> sessions streaming it
        self.sessions: set[Session] = set()  # past hello
        self.waiting: dict[Session, None] = {}  # connected, no hello yet (oldest first)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws_server: WsServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._last_scan = 0.0  # monotonic time of the last list_models rescan

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.queue.start(self._deliver)
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
        if self.config.preload and self.engine is not None and self.engine.registry.default_checkpoint() is not None:
            self._loop.run_in_executor(self.queue.executor, self._preload)  # type: ignore[attr-defined]

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
        await self.queue.close()

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
                    if not await self._on_frame(session, frame):
                        break
        except ConnectionClosed:
            pass
        finally:
            session.closed = True
            session._wake.set()
            self.waiting.pop(session, None)
            self.sessions.discard(session)
            for job_id in [j for j, s in self.followers.items() if session in s]:
                self.followers[job_id].discard(session)
                if not self.followers[job_id]:
                    del self.followers[job_id]
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
        if hello.protocol not in SUPPORTED_PROTOCOLS:
            await self._refuse(
                session,
                Error(
                    ErrorCode.VERSION_MISMATCH.value,
                    f"this server speaks protocols {', '.join(map(str, SUPPORTED_PROTOCOLS))}, the client "
                    f"{hello.protocol}; update the older of the two",
                ),
            )
            return False
        if not security.token_ok(hello.token, self.config.token):
            log.warning("refused a client from %s: wrong or missing token", session.ws.remote_address)
            await self._refuse(session, Error(ErrorCode.UNAUTHORIZED.value, "wrong or missing token"))
            return False
        session.client_id = hello.client_id or secrets.token_hex(16)
        session.protocol = hello.protocol
        # Past hello: frames up to the full limit. The parser reads this when the
        # next frame starts, so a client that waits for `welcome` gets it.
        _allow_frames(session.ws, self.config.max_message_bytes)
        session.send(
            Welcome(
                protocol=session.protocol,  # the client's own: it speaks that one from here on
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
        catalog = self.queue.catalog
        return Capabilities(
            models=self._model_infos(),
            default_model=catalog.default_model(),
            samplers=list(SAMPLER_NAMES),
            upscalers=catalog.upscalers(),
            max_message_bytes=self.config.max_message_bytes,
            max_image_side=MAX_GENERATE_SIDE,
            max_batch=16,
            max_queue=self.config.max_queue,
            result_retention=self.config.result_retention,
            max_queued_per_client=self.queue.per_client,
            durable=self.queue.durable,
        )

    def _model_infos(self) -> list[ModelInfo]:
        return self.queue.catalog.model_infos()

    # -- messages ----------------------------------------------------------------
    async def _receive(self, session: Session, frame: Any) -> Message:
        """One message: a protocol-2 frame, or a protocol-3 head and the payload
        messages it announces (read here, in order; their announced sizes are
        checked against the message limit and compared with what arrives, never
        used to allocate)."""
        if session.protocol < 3:
            return decode(frame)
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "frames must be binary msgpack, not text")
        wire, slots = oob.read_head(frame, self.config.max_message_bytes)
        payloads = []
        for slot in slots:
            payload = await session.ws.recv()
            oob.check_payload(slot, payload)
            payloads.append(payload)
        return decode_wire(oob.attach(wire, payloads))

    async def _on_frame(self, session: Session, frame: Any) -> bool:
        """Handle one message; False when the connection must end (out of step)."""
        message: Message | None = None
        try:
            message = await self._receive(session, frame)
            if isinstance(message, Submit):
                await self._submit(session, message)
            elif isinstance(message, Cancel):
                await self._cancel(session, message.job_id)
            elif isinstance(message, FetchResult):
                await self._fetch(session, message.job_id)
            elif isinstance(message, ListModels):
                self.queue.catalog.rescan()
                session.send(Models(self._model_infos(), self.queue.catalog.default_model()))
            elif isinstance(message, Hello):
                session.send(Error(ErrorCode.BAD_MESSAGE.value, "hello was already received"))
            else:
                session.send(Error(ErrorCode.UNKNOWN_MESSAGE.value, f"a client does not send {message.type!r}"))
        except oob.OutOfStep as exc:
            # Payloads announced that will not be read as such: tell the client why, then end.
            log.warning("closing client %s: %s", session.client_id, exc.message)
            session.send(_error(exc))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(session.drain(), 2.0)
            session.closed = True
            await _close_or_abort(session.ws, 1009 if exc.code is ErrorCode.TOO_LARGE else 1008, exc.code.value)
            return False
        except (ProtocolError, EngineError) as exc:
            error = _error(exc)
            if isinstance(message, Submit):
                error.ref = message.ref  # refusals of a well-formed submit (names, limits, queue)
            session.send(error)
        except Exception:  # a bug must not take the connection down
            log.exception("error handling a message")
            session.send(Error(ErrorCode.INTERNAL.value, "internal error while handling the message"))
        return True

    async def _submit(self, session: Session, message: Submit) -> None:
        request = fix_seeds(message.request)  # drawn now: a re-run makes the same pixels
        # Names, combinations and every size the job will make, before queueing (protocol/limits.py):
        # the whole result travels as one message and must fit the limit the client was told.
        self.queue.catalog.check(request, self.config.max_message_bytes)
        job_id = await self.queue.new_id()
        self.followers.setdefault(job_id, set()).add(session)  # before any worker can pick it up
        try:
            submitted = await self.queue.submit(session.client_id, request, job_id)
        except Exception as exc:
            self._unfollow(session, job_id)
            if isinstance(exc, ClientQueueFull):
                raise ProtocolError(ErrorCode.CLIENT_QUEUE_FULL, str(exc)) from None
            raise
        session.send(Accepted(job_id=submitted.job_id, position=submitted.position, ref=message.ref))
        log.info("job %s queued (%s%s, position %d)", submitted.job_id, request.kind, ", live" if request.live else "",
                 submitted.position)

    async def _owned(self, session: Session, job_id: str) -> JobView | None:
        view = await self.queue.view(session.client_id, job_id)
        if view is None:
            # Someone else's job is reported exactly like a missing one.
            lost = well_formed(job_id) and not issued_by(self.queue.queue_id, job_id)
            code = ErrorCode.JOB_LOST if lost else ErrorCode.NOT_FOUND
            text = ("the server restarted without its queue (another state folder) since this job was submitted; "
                    "it is lost"
                    if lost else f"no job {job_id!r} (unknown, or its result was dropped from the bounded store)")
            session.send(Error(code.value, text, job_id=job_id))
        return view

    async def _cancel(self, session: Session, job_id: str) -> None:
        view = await self._owned(session, job_id)
        if view is None:
            return
        if view.frame:
            session.send(JobStatus(job_id, view.state))  # already over: nothing to cancel
            return
        self.followers.setdefault(job_id, set()).add(session)
        outcome = await self.queue.cancel(session.client_id, job_id)
        if outcome == "already cancelling":
            session.send(JobStatus(job_id, "cancelling"))
        elif outcome in DONE_STATES and outcome != "cancelled":
            session.send(JobStatus(job_id, outcome))

    async def _fetch(self, session: Session, job_id: str) -> None:
        # Follow first, then look: a job that ends in between is not missed (a
        # queue on another machine may end it while we wait for the answer).
        self.followers.setdefault(job_id, set()).add(session)
        view = await self._owned(session, job_id)
        if view is None or view.frame:
            if session in self.followers.get(job_id, ()):  # not already delivered meanwhile
                self._unfollow(session, job_id)
                if view is not None:
                    session.send(view.frame, shared=True)  # the stored frame: not the client's own bytes
        else:
            session.send(JobStatus(job_id, view.state, view.position))

    def _unfollow(self, session: Session, job_id: str) -> None:
        sessions = self.followers.get(job_id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.followers[job_id]

    # -- what the queue hands back -------------------------------------------------------
    def _deliver(self, job_id: str, frame: bytes, final: bool) -> None:
        sessions = self.followers.pop(job_id, set()) if final else self.followers.get(job_id, ())
        for session in list(sessions):
            # One frame for every follower: a final one counts against the outbox's frame bound, not its bytes.
            session.send(frame, droppable=not final, shared=final)

    async def restart_notice(self, grace_s: float = 5.0) -> None:
        """SIGTERM: stop the queue (keeping every job), tell each client which of
        its jobs will carry on after the restart, then close with 1012."""
        await self.queue.stop(grace_s)
        for session in list(self.sessions):
            jobs = await self.queue.active(session.client_id)
            jobs += [j for j, s in self.followers.items() if session in s and j not in jobs]
            for job_id in jobs:
                session.send(JobStatus(job_id, "restarting"))
            session.send(Restarting("the server is restarting; reconnect and fetch your jobs by id", jobs))
        sessions = list(self.sessions)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.drain() for s in sessions), return_exceptions=True), 2.0)
        for session in sessions:
            with contextlib.suppress(ConnectionClosed):
                await session.ws.close(1012, "server restarting")
