"""The connection's state machine: connect, retry with backoff, report.

Pure logic with an injectable clock, so the retry policy is tested without
sockets or Qt. The worker thread drives it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

DISCONNECTED, CONNECTING, CONNECTED, FAILED = "disconnected", "connecting", "connected", "failed"
# Errors that retrying cannot fix: wait for the painter to change the settings.
FATAL = {"unauthorized", "version_mismatch", "refused"}

START_COMMAND = "paintbridge serve --demo"


def explain(code: str, message: str, url: str) -> str:
    """A message for the docker, with what to do about it."""
    if code == "unreachable":
        return f"No PaintBridge server at {url}. Start one with: {START_COMMAND}  (or --models DIR)"
    if code == "unauthorized":
        return "The server refused the token: enter the token it printed at start-up."
    if code == "version_mismatch":
        return f"Plugin and server versions differ: {message}"
    if code == "job_lost":
        return "The server restarted and lost the job; please run it again."
    if code == "refused":
        return f"The server refused the connection: {message}"
    return message


@dataclass
class Backoff:
    """1 s, 2 s, 4 s ... up to `cap`, reset on success."""

    initial: float = 1.0
    cap: float = 15.0
    delay: float = field(init=False, default=0.0)

    def next(self) -> float:
        self.delay = self.initial if self.delay == 0 else min(self.cap, self.delay * 2)
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0


@dataclass
class ConnectionState:
    clock: Callable[[], float] = time.monotonic
    state: str = DISCONNECTED
    message: str = ""
    next_attempt: float = 0.0
    backoff: Backoff = field(default_factory=Backoff)

    def should_connect(self) -> bool:
        return self.state in (DISCONNECTED,) and self.clock() >= self.next_attempt

    def connecting(self) -> None:
        self.state, self.message = CONNECTING, ""

    def connected(self) -> None:
        self.state, self.message = CONNECTED, ""
        self.backoff.reset()

    def lost(self, code: str, message: str, url: str) -> None:
        """A failed attempt or a dropped connection: retry later, unless fatal."""
        self.message = explain(code, message, url)
        if code in FATAL:
            self.state = FAILED
            return
        self.state = DISCONNECTED
        self.next_attempt = self.clock() + self.backoff.next()

    def reconfigure(self) -> None:
        """New address or token: try again now."""
        self.state, self.message, self.next_attempt = DISCONNECTED, "", 0.0
        self.backoff.reset()
