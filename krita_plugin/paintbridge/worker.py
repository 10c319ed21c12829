"""The network side of the plugin: a background thread that owns the connection.

Krita's UI thread never touches the socket. It puts commands in, and polls
`events` (a queue) from a Qt timer to update the docker and apply results.
The thread reconnects by itself with backoff, and after a reconnect follows
the jobs that were in flight: a durable server keeps them across a restart
(it says `restarting` before it goes); one whose queue was wiped reports
them lost.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol import (
    Accepted,
    Cancel,
    Cancelled,
    Error,
    FetchResult,
    JobRequest,
    Progress,
    Restarting,
    Result,
    Submit,
    Welcome,
)
from protocol.shell.client import Client, ClientError

from .connection import CONNECTED, ConnectionState, explain

POLL_S = 0.05


@dataclass
class Event:
    kind: str  # state | welcome | accepted | progress | result | failed | cancelled
    tag: str = ""
    data: Any = None


class Worker(threading.Thread):
    def __init__(self, url: str, token: str = "", client_id: str = "", name: str = "paintbridge-krita") -> None:
        super().__init__(name="paintbridge-network", daemon=True)
        self.events: queue.Queue[Event] = queue.Queue()
        self._commands: queue.Queue[tuple] = queue.Queue()
        self.url, self.token, self.client_id, self.client_name = url, token, client_id, name
        self.connection = ConnectionState()
        self._client: Client | None = None
        self._refs = (f"r{i}" for i in itertools.count(1))
        self._pending: dict[str, str] = {}  # submit ref -> tag
        self._tags: dict[str, str] = {}  # job id -> tag, jobs in flight
        self._stop = threading.Event()
        # How long a socket read waits before the thread looks at its commands again: what a
        # submit may wait to be sent. Live mode shortens it (live_ui.py); 50 ms otherwise.
        self.poll_s = POLL_S

    # -- commands from the UI thread (thread-safe) -------------------------------
    def configure(self, url: str, token: str) -> None:
        self._commands.put(("configure", url, token))

    def submit(self, tag: str, request: JobRequest | Callable[[], JobRequest]) -> None:
        """Queue a job. A callable is called here, on the network thread: the docker
        hands over raw pixels and lets this thread convert them, off Krita's UI thread."""
        self._commands.put(("submit", tag, request))

    def cancel(self, tag: str) -> None:
        self._commands.put(("cancel", tag))

    def stop(self) -> None:
        self._stop.set()

    # -- the thread ---------------------------------------------------------------
    def run(self) -> None:
        while not self._stop.is_set():
            self._handle_commands()
            if self._client is None:
                if self.connection.should_connect():
                    self._connect()
                else:
                    time.sleep(POLL_S)
                continue
            try:
                message = self._client.poll(self.poll_s)
            except ClientError as exc:
                self._drop(exc.code, exc.message)
                continue
            if message is not None:
                self._dispatch(message)
        if self._client is not None:
            self._client.close()

    def _emit(self, kind: str, tag: str = "", data: Any = None) -> None:
        self.events.put(Event(kind, tag, data))

    def _state(self) -> None:
        self._emit("state", data=(self.connection.state, self.connection.message))

    def _connect(self) -> None:
        self.connection.connecting()
        self._state()
        client = Client(self.url, token=self.token, client_id=self.client_id, name=self.client_name, open_timeout=5)
        try:
            welcome = client.connect()
        except ClientError as exc:
            self.connection.lost(exc.code, exc.message, self.url)
            self._state()
            return
        self._client, self.client_id = client, client.client_id
        self.connection.connected()
        self._state()
        self._emit("welcome", data=welcome)
        for job_id in list(self._tags):  # follow jobs submitted before the drop
            client.send(FetchResult(job_id))

    def _drop(self, code: str, message: str) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        for ref, tag in list(self._pending.items()):  # never accepted: tell the painter
            self._emit("failed", tag, ("connection_lost", "the connection dropped before the server accepted the job"))
            del self._pending[ref]
        self.connection.lost(code, message, self.url)
        self._state()

    def _handle_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            kind = command[0]
            if kind == "configure":
                _, self.url, self.token = command
                if self._client is not None:
                    self._client.close()
                    self._client = None
                self.connection.reconfigure()
            elif kind == "submit":
                _, tag, request = command
                if self._client is None or self.connection.state != CONNECTED:
                    self._emit("failed", tag, ("unreachable", self.connection.message or explain("unreachable", "", self.url)))
                    continue
                if callable(request):
                    try:
                        request = request()
                    except Exception as exc:  # a bad image or field: that job fails, the thread goes on
                        self._emit("failed", tag, ("invalid_request", str(exc)))
                        continue
                ref = next(self._refs)
                self._pending[ref] = tag
                self._send(Submit(request=request, ref=ref))
            elif kind == "cancel":
                _, tag = command
                for job_id, job_tag in self._tags.items():
                    if job_tag == tag:
                        self._send(Cancel(job_id))

    def _send(self, message) -> None:
        if self._client is None:
            return
        try:
            self._client.send(message)
        except ClientError as exc:
            self._drop(exc.code, exc.message)

    def _dispatch(self, message) -> None:
        if isinstance(message, Accepted):
            tag = self._pending.pop(message.ref, None)
            if tag is not None:
                self._tags[message.job_id] = tag
                self._emit("accepted", tag, (message.job_id, message.position))
        elif isinstance(message, Progress):
            if message.job_id in self._tags:
                self._emit("progress", self._tags[message.job_id], message)
        elif isinstance(message, Result):
            tag = self._tags.pop(message.job_id, None)
            if tag is not None:
                self._emit("result", tag, message)
        elif isinstance(message, Cancelled):
            tag = self._tags.pop(message.job_id, None)
            if tag is not None:
                self._emit("cancelled", tag)
        elif isinstance(message, Error):
            tag = self._tags.pop(message.job_id, None) if message.job_id else self._pending.pop(message.ref, None)
            if tag is not None:
                self._emit("failed", tag, (message.code, explain(message.code, message.message, self.url)))
            else:
                self._emit("state", data=(self.connection.state, message.message))
        elif isinstance(message, Restarting):
            # The jobs in flight carry on after the restart: reconnect, then fetch them.
            self._drop("server_restarting", f"The server is restarting; reconnecting. ({message.message})")
        elif isinstance(message, Welcome):
            pass
