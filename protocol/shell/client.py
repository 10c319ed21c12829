"""A small blocking client for the PaintBridge protocol.

Used by the CLI and carried by the Krita plugin (which runs it on a worker
thread), so it depends only on `protocol` and a websocket client.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from protocol import (
    PROTOCOL_VERSION,
    Accepted,
    Cancel,
    Cancelled,
    Error,
    FetchResult,
    Hello,
    JobStatus,
    ListModels,
    Message,
    Models,
    Progress,
    ProtocolError,
    Restarting,
    Result,
    Submit,
    Welcome,
    decode,
    encode,
    oob,
)
from protocol.codec import decode_wire, encode_parts
from protocol.requests import JobRequest
from protocol.shell import framing

UNREACHABLE = "unreachable"  # client-side code: no server answered
RESTARTING = "server_restarting"  # client-side code: the server said it is restarting
RECONNECTABLE = ("connection_lost", UNREACHABLE, RESTARTING)
PAYLOAD_TIMEOUT_S = 120.0  # a head's payloads follow it at once; a server that stops between them is gone
MAX_RECEIVE = 1 << 40  # no limit of our own on what the server announces: each payload is compared as it arrives


class ClientError(Exception):
    """A failure with the server's (or the client's) stable code."""

    def __init__(self, code: str, message: str, job_id: str = "", field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id
        self.field = field

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


ProgressCallback = Callable[[Progress], None]


class Client:
    def __init__(
        self,
        url: str = "ws://127.0.0.1:8765",
        *,
        token: str = "",
        client_id: str = "",
        name: str = "paintbridge-client",
        open_timeout: float = 10.0,
        protocol: int = PROTOCOL_VERSION,
    ) -> None:
        self.url = url
        self.token = token
        self.client_id = client_id or uuid.uuid4().hex
        self.name = name
        self.open_timeout = open_timeout
        self.protocol = protocol  # 3: pixels out of band (protocol/oob.py); falls back to 2 for an older server
        self.welcome: Welcome | None = None
        self._ws: Any = None

    # -- connection --------------------------------------------------------------
    def connect(self) -> Welcome:
        try:
            return self._connect()
        except ClientError as exc:
            if exc.code != "version_mismatch" or self.protocol <= 2:
                raise
            self.protocol = 2  # a server from before protocol 3: speak its protocol
            return self._connect()

    def _connect(self) -> Welcome:
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        try:
            # Big frames skip the pure-Python XOR (protocol/shell/framing.py): zero key to a local server.
            ws = connect(self.url, open_timeout=self.open_timeout, max_size=None, compression=None,
                         create_connection=framing.connection_class())
            # A long-lived connection, closed by close(): entered as a context manager,
            # which websockets 17.1+ asks of connect() (older versions accept it too).
            self._ws = ws.__enter__()
        except InvalidStatus as exc:
            body = (exc.response.body or b"").decode("utf-8", "replace").strip()
            raise ClientError("refused", f"the server at {self.url} refused the connection: {body}") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise ClientError(
                UNREACHABLE,
                f"no PaintBridge server at {self.url} ({exc.__class__.__name__}); start one with: paintbridge serve --demo",
            ) from None
        self._send(Hello(protocol=self.protocol, client=self.name, token=self.token, client_id=self.client_id))
        reply = self._recv()
        if isinstance(reply, Error):
            self.close()
            raise ClientError(reply.code, reply.message)
        if not isinstance(reply, Welcome):
            self.close()
            raise ClientError("bad_message", f"expected welcome, got {reply.type}")
        self.welcome = reply
        self.client_id = reply.client_id
        return reply

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            finally:
                self._ws = None

    def __enter__(self) -> Client:
        if self._ws is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------
    def submit(self, request: JobRequest) -> Accepted:
        ref = uuid.uuid4().hex[:8]
        self._send(Submit(request=request, ref=ref))
        # A request the server cannot even decode is refused before it reads `ref`: that error comes
        # back with no ref and no job id, in order, so it answers this submit too (else we would wait forever).
        reply = self._wait(lambda m: isinstance(m, (Accepted, Error)) and (
            m.ref == ref or (isinstance(m, Error) and not m.ref and not m.job_id)))
        if isinstance(reply, Error):
            raise ClientError(reply.code, reply.message, field=reply.field)
        assert isinstance(reply, Accepted)
        return reply

    def follow(self, job_id: str, on_progress: ProgressCallback | None = None) -> Result:
        """Wait for a job of ours to end; its progress goes to `on_progress`."""
        while True:
            message = self._recv()
            if isinstance(message, Progress) and message.job_id == job_id:
                if on_progress is not None:
                    on_progress(message)
            elif isinstance(message, Result) and message.job_id == job_id:
                return message
            elif isinstance(message, Cancelled) and message.job_id == job_id:
                raise ClientError("cancelled", f"job {job_id} was cancelled", job_id)
            elif isinstance(message, Error) and message.job_id in (job_id, ""):
                raise ClientError(message.code, message.message, job_id, message.field)
            elif isinstance(message, Restarting):
                raise ClientError(RESTARTING, f"the server at {self.url} is restarting: {message.message}", job_id)

    def run(self, request: JobRequest, on_progress: ProgressCallback | None = None,
            on_accepted: Callable[[Accepted], None] | None = None, reconnect_s: float = 0.0) -> Result:
        accepted = self.submit(request)
        if on_accepted is not None:
            on_accepted(accepted)
        return self.wait(accepted.job_id, on_progress, reconnect_s)

    def wait(self, job_id: str, on_progress: ProgressCallback | None = None, reconnect_s: float = 0.0,
             fetch: bool = False) -> Result:
        """Follow a job to its end; if the connection drops, reconnect for up to
        `reconnect_s` seconds and pick the job up again by id (a durable server
        keeps it across a restart; one whose queue was wiped answers `job_lost`)."""
        deadline = None
        while True:
            try:
                return self.fetch(job_id, on_progress) if fetch else self.follow(job_id, on_progress)
            except ClientError as exc:
                if exc.code not in RECONNECTABLE or reconnect_s <= 0:
                    raise
                deadline = deadline or time.monotonic() + reconnect_s
                try:
                    self.close()
                except Exception:  # already dead: nothing to close
                    self._ws = None
                while True:
                    if time.monotonic() > deadline:
                        raise ClientError(exc.code, f"{exc.message}; gave up reconnecting after {reconnect_s:g}s", job_id) from None
                    time.sleep(0.5)
                    try:
                        self.connect()
                        break
                    except ClientError as again:
                        if again.code not in RECONNECTABLE:
                            raise
                fetch = True

    def fetch(self, job_id: str, on_progress: ProgressCallback | None = None) -> Result:
        """A finished job's result, or wait for a queued/running one."""
        self._send(FetchResult(job_id))
        return self.follow(job_id, on_progress)

    def status(self, job_id: str) -> JobStatus | Result | Cancelled:
        self._send(FetchResult(job_id))
        reply = self._wait(lambda m: getattr(m, "job_id", None) == job_id and not isinstance(m, Progress))
        if isinstance(reply, Error):
            raise ClientError(reply.code, reply.message, job_id)
        return reply  # type: ignore[return-value]

    def cancel(self, job_id: str) -> None:
        self._send(Cancel(job_id))

    def list_models(self) -> Models:
        self._send(ListModels())
        reply = self._wait(lambda m: isinstance(m, (Models, Error)))
        if isinstance(reply, Error):
            raise ClientError(reply.code, reply.message)
        assert isinstance(reply, Models)
        return reply

    # -- non-blocking use (the Krita plugin's worker thread) ----------------------
    def send(self, message: Message) -> None:
        self._send(message)

    def poll(self, timeout: float | None) -> Message | None:
        """The next message, or None if none arrives within `timeout` seconds."""
        from websockets.exceptions import ConnectionClosed

        if self._ws is None:
            raise ClientError(UNREACHABLE, "not connected")
        try:
            frame = self._ws.recv(timeout=timeout)
            return self._decode(frame)
        except TimeoutError:
            return None
        except ConnectionClosed as exc:
            raise self._closed(exc) from None
        except ProtocolError as exc:
            raise ClientError(exc.code.value, f"the server sent a bad message: {exc.message}") from None

    def _decode(self, frame: Any) -> Message:
        if self.protocol < 3:
            return decode(frame)
        # Protocol 3: the head, then the payload messages it announces, each compared with its announcement.
        wire, slots = oob.read_head(frame, MAX_RECEIVE)
        payloads = []
        for slot in slots:
            try:
                payload = self._ws.recv(timeout=PAYLOAD_TIMEOUT_S)
            except TimeoutError:
                raise ClientError("connection_lost", "the server stopped in the middle of a message") from None
            oob.check_payload(slot, payload)
            payloads.append(payload)
        return decode_wire(oob.attach(wire, payloads))

    @property
    def connected(self) -> bool:
        return self._ws is not None

    # -- plumbing ----------------------------------------------------------------
    def _send(self, message: Message) -> None:
        from websockets.exceptions import ConnectionClosed

        if self._ws is None:
            raise ClientError(UNREACHABLE, "not connected")
        try:
            if self.protocol < 3:
                self._ws.send(encode(message))
            else:
                # The head, then each big bin as its own message in fragments that are views
                # of the caller's buffer: the pixels are never copied on their way to the socket.
                head, *payloads = encode_parts(message)
                self._ws.send(head)
                for payload in payloads:
                    self._ws.send(oob.fragments(payload))
        except ConnectionClosed as exc:
            raise self._closed(exc) from None

    def _recv(self) -> Message:
        message = self.poll(None)
        assert message is not None
        return message

    def _wait(self, match: Callable[[Message], bool]) -> Message:
        while True:
            message = self._recv()
            if match(message):
                return message

    def _closed(self, exc: Exception) -> ClientError:
        rcvd = getattr(exc, "rcvd", None)
        if rcvd is not None and rcvd.code == 1009:
            return ClientError("too_large", f"the server refused a message over its size limit ({rcvd.reason})")
        return ClientError("connection_lost", f"the connection to {self.url} was lost")
