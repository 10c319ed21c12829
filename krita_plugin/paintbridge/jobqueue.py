"""The docker's queue: one row per job, each with its own state, progress and preview.

Plain Python: the worker's events go in, rows and one truthful status line come out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .connection import CONNECTED, CONNECTING, FAILED

SENDING, QUEUED, RUNNING = "sending", "queued", "running"
FINISHED, FAILED_JOB, CANCELLED, LOST = "finished", "failed", "cancelled", "lost"
ACTIVE = (SENDING, QUEUED, RUNNING)
DONE = (FINISHED, FAILED_JOB, CANCELLED, LOST)


@dataclass
class JobRow:
    tag: str
    mode: str  # generate | refine | inpaint | expand | upscale
    prompt: str
    state: str = SENDING
    job_id: str = ""
    position: int = 0  # queued: jobs ahead of this one (0 = next)
    step: int = 0
    total: int = 0
    stage: str = ""
    fraction: float = 0.0  # 0..1, for this job's own bar
    message: str = ""  # failed: the server's message
    preview: Any = None  # the latest progress preview (RawImage), this job's own
    cancel_requested: bool = False
    accepted_position: int = 0
    ahead: set[str] = field(default_factory=set)  # our jobs in front of it when accepted

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def text(self) -> str:
        what = f"{self.mode.capitalize()}: {' '.join(self.prompt.split())[:40] or '(no prompt)'}"
        if self.state == SENDING:
            return f"{what} — sending…"
        if self.state == QUEUED:
            where = "next" if self.position <= 0 else f"{self.position} ahead"
            return f"{what} — queued ({where})" + (" — cancelling…" if self.cancel_requested else "")
        if self.state == RUNNING:
            stage = "" if self.stage in ("", "sampling") else f"{self.stage} "
            return f"{what} — {stage}step {self.step}/{self.total}" + (" — cancelling…" if self.cancel_requested else "")
        if self.state == FAILED_JOB:
            return f"{what} — failed: {self.message}"
        if self.state == LOST:
            return f"{what} — lost: {self.message or 'the server restarted'}"
        return f"{what} — {self.state}"


class JobQueue:
    """Rows in submission order; finished rows stay (bounded) until cleared."""

    def __init__(self, keep_done: int = 20) -> None:
        self.rows: list[JobRow] = []
        self.keep_done = keep_done

    def get(self, tag: str) -> JobRow | None:
        return next((r for r in self.rows if r.tag == tag), None)

    def add(self, tag: str, mode: str, prompt: str) -> JobRow:
        row = JobRow(tag, mode, prompt)
        self.rows.append(row)
        return row

    def accepted(self, tag: str, job_id: str, position: int) -> None:
        row = self.get(tag)
        if row is not None and row.state == SENDING:
            row.job_id, row.position, row.state = job_id, position, QUEUED
            row.accepted_position = position
            row.ahead = {r.tag for r in self.rows if r.active and r.tag != tag and r.job_id}
            self._renumber()

    def progress(self, tag: str, step: int, total: int, stage: str = "", fraction: float | None = None,
                 preview: Any = None) -> None:
        row = self.get(tag)
        if row is None or not row.active:
            return
        row.state, row.step, row.total, row.stage = RUNNING, step, total, stage
        row.fraction = fraction if fraction is not None else step / max(total, 1)
        if preview is not None:
            row.preview = preview
        self._renumber()

    def finish(self, tag: str, state: str, message: str = "") -> None:
        row = self.get(tag)
        if row is None:
            return
        row.state, row.message = state, message
        if state == FINISHED:
            row.fraction = 1.0
        self._renumber()
        done = [r for r in self.rows if not r.active]
        for old in done[: max(0, len(done) - self.keep_done)]:
            self.rows.remove(old)

    def request_cancel(self, tag: str) -> bool:
        row = self.get(tag)
        if row is None or not row.active:
            return False
        row.cancel_requested = True
        return True

    def active(self) -> list[JobRow]:
        return [r for r in self.rows if r.active]

    def clear_done(self) -> None:
        self.rows = [r for r in self.rows if r.active]

    def _renumber(self) -> None:
        """A queued job moves up as the jobs that were in front of it end.

        The server's `position` counts the jobs in front (the running one included,
        other clients' too); ours are subtracted as they finish.
        """
        for row in self.rows:
            if row.state == QUEUED:
                gone = sum(1 for r in self.rows if r.tag in row.ahead and not r.active)
                row.position = max(0, row.accepted_position - gone)

    def status_line(self, connection: str, connection_message: str = "") -> str:
        """One line that is true: the connection first, then what the jobs are doing."""
        active = self.active()
        if connection != CONNECTED:
            if connection == CONNECTING:
                head = "Connecting…"
            elif connection == FAILED:
                head = "Not connected: " + (connection_message or "the server refused the connection")
            else:
                head = "Disconnected" + (f": {connection_message}" if connection_message else "") + " — retrying"
            return head + (f" ({len(active)} job(s) waiting for the server)" if active else "")
        running = [r for r in active if r.state == RUNNING]
        queued = [r for r in active if r.state in (QUEUED, SENDING)]
        if running:
            r = running[0]
            text = r.text().split(" — ", 1)[1]
            return f"Running: {text}" + (f", {len(queued)} queued" if queued else "")
        if queued:
            return f"{len(queued)} job(s) queued"
        return "Connected — ready"
