"""The embedded queue's durable state: SQLite (stdlib) for the jobs, one file
per finished result in the state folder.

Layout of the state folder:
    queue.sqlite3          jobs (request head, state, progress point) and meta
    requests/<job id>.pixels   a queued job's pixel fields (image, mask, control
                           images), one after another; the row's request head
                           (protocol/oob.py) announces each one's length
    results/<job id>.msgpack   the encoded final message of a finished job
                           (a result's pixels beside its head: oob.pack)
    lock                   held (flock) by the one server that uses the folder

Pixels stay out of the database: SQLite would copy them into its pages and
its write-ahead log, and read them back the same way. What survives what:

- A kill -9 of the server at any moment loses no accepted job and no
  delivered result: files written before the row that names them are in the
  kernel's page cache, which outlives the process. A job that was running
  runs again from its start (its seeds were drawn at submit: same pixels).
- A crash of the machine (power loss) can lose the last few seconds: the
  pixel file of a job accepted just before it is fsynced in the background,
  and SQLite runs with synchronous=NORMAL (durable against a process crash,
  not against power loss for the last commits). A job whose pixel file is
  missing or short after such a crash fails with `job_lost` instead of
  running on garbage.
- A result file is written and fsynced before its row says "finished", so a
  crash leaves either a job to run again or a whole result. (The embedded
  queue writes it on its I/O thread after delivering the result to the
  clients that are following the job.)

Results are bounded by count, bytes and age; the oldest are dropped first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bridge_server.queue.records import (
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    JobRecord,
    LostPixels,
    join_request,
    split_request,
)
from protocol import Error, ErrorCode, encode, oob

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    request BLOB,              -- NULL once the job is over
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    finished REAL,
    result_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""


class StateDirBusy(Exception):
    pass


@dataclass
class Retention:
    count: int = 32
    max_bytes: int = 2 * 1024**3
    max_age_s: float = 24 * 3600.0


class SqliteStore:
    def __init__(self, state_dir: Path, retention: Retention) -> None:
        self.dir = Path(state_dir)
        self.results = self.dir / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.requests = self.dir / "requests"
        self.requests.mkdir(exist_ok=True)
        self.retention = retention
        self._lock = open(self.dir / "lock", "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise StateDirBusy(f"the state folder {self.dir} is in use by another server; give another --state-dir") from None
        # One connection, used from the event loop thread only.
        # Used by one thread at a time (the event loop's), which need not be the one that opened it.
        self.db = sqlite3.connect(self.dir / "queue.sqlite3", isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT value FROM meta WHERE key='queue_id'").fetchone()
        if row is None:
            self.queue_id = secrets.token_hex(3)
            self.db.execute("INSERT INTO meta VALUES ('queue_id', ?), ('seq', '0')", (self.queue_id,))
        else:
            self.queue_id = row[0]
        self._sweep()

    def _sweep(self) -> None:
        """At start: half-written result files (a kill while writing one) and pixel
        files without a queued job (a kill between the file and its row)."""
        for tmp in self.results.glob("*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        for pixels in self.requests.glob("*.pixels"):
            row = self.db.execute("SELECT request FROM jobs WHERE id=?", (pixels.stem,)).fetchone()
            if row is None or row[0] is None:
                with contextlib.suppress(FileNotFoundError):
                    pixels.unlink()

    def close(self) -> None:
        self.db.close()
        self._lock.close()

    # -- jobs ------------------------------------------------------------------------
    def next_seq(self) -> int:
        with self._tx():
            self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='seq'")
            return int(self.db.execute("SELECT value FROM meta WHERE key='seq'").fetchone()[0])

    def insert(self, record: JobRecord, head: bytes | None = None) -> None:
        """The job's row. `head`: its request head, the pixels already written with
        write_pixels (the embedded queue does that on its I/O thread); without it
        both are written here."""
        if head is None:
            head, *pixels = split_request(record.request)
            self.write_pixels(record.id, pixels)
        self.db.execute(
            "INSERT INTO jobs (id, seq, owner, state, request, created) VALUES (?, ?, ?, ?, ?, ?)",
            (record.id, record.seq, record.owner, record.state, bytes(head), time.time()),
        )

    def _pixels(self, job_id: str) -> Path:
        return self.requests / f"{job_id}.pixels"

    def write_pixels(self, job_id: str, pixels: list) -> None:
        """A request's pixel buffers into its file, in order (any thread; no fsync: see sync_pixels)."""
        if pixels:
            with open(self._pixels(job_id), "wb") as f:
                f.writelines(pixels)

    def sync_pixels(self, job_id: str) -> None:
        """fsync a request's pixel file (off the reply's path: the I/O thread, after the answer)."""
        with contextlib.suppress(FileNotFoundError), open(self._pixels(job_id), "rb") as f:
            os.fsync(f.fileno())

    def pixel_bytes(self, job_id: str) -> int:
        """The size of a stored request's pixel file (0 when it has none)."""
        try:
            return self._pixels(job_id).stat().st_size
        except FileNotFoundError:
            return 0

    def drop_pixels(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._pixels(job_id).unlink()

    def request(self, job_id: str):
        row = self.db.execute("SELECT request FROM jobs WHERE id=?", (job_id,)).fetchone()
        if not row or row[0] is None:
            return None
        try:
            pixels = self._pixels(job_id).read_bytes()
        except FileNotFoundError:
            pixels = None
        return join_request(row[0], pixels)

    def running(self, job_id: str) -> int:
        """Mark a job running; returns how many times it has started (1 = first run)."""
        self.db.execute("UPDATE jobs SET state=?, step=0, total=0, attempts=attempts+1 WHERE id=?", (RUNNING, job_id))
        return int(self.db.execute("SELECT attempts FROM jobs WHERE id=?", (job_id,)).fetchone()[0])

    def progress(self, job_id: str, step: int, total: int) -> None:
        self.db.execute("UPDATE jobs SET step=?, total=? WHERE id=?", (step, total, job_id))

    def requeue(self, job_id: str) -> None:
        self.db.execute("UPDATE jobs SET state=?, step=0, total=0 WHERE id=?", (QUEUED, job_id))

    def finish(self, job_id: str, state: str, frame: bytes | oob.Parts) -> None:
        self.write_result(job_id, frame)
        self.mark_finished(job_id, state, frame.nbytes if isinstance(frame, oob.Parts) else len(frame))

    def write_result(self, job_id: str, frame: bytes | oob.Parts) -> None:
        """The final frame, whole and fsynced, under its name (any thread: no database)."""
        path = self.results / f"{job_id}.msgpack"
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.writelines(oob.pieces(frame) if isinstance(frame, oob.Parts) else [frame])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def mark_finished(self, job_id: str, state: str, size: int) -> None:
        """The row says finished (after write_result); the request's pixels go."""
        self.db.execute(
            "UPDATE jobs SET state=?, request=NULL, finished=?, result_bytes=? WHERE id=?",
            (state, time.time(), size, job_id),
        )
        self.drop_pixels(job_id)
        self.prune()

    def unfinished(self) -> list[JobRecord]:
        """Jobs to run after a restart: the one that was running first, then the
        queued ones in submit order."""
        rows = self.db.execute(
            "SELECT id, seq, owner, state, attempts FROM jobs WHERE state IN (?, ?) "
            "ORDER BY state = ? DESC, seq", (QUEUED, RUNNING, RUNNING)
        ).fetchall()
        records = []
        for job_id, seq, owner, state, attempts in rows:
            try:
                request = self.request(job_id)
            except LostPixels as exc:
                message = f"the job's pixels did not reach the disk before the machine stopped ({exc}); submit it again"
                self.finish(job_id, FAILED, encode(Error(ErrorCode.JOB_LOST.value, message, job_id)))
                continue
            if request is None:
                continue
            records.append(JobRecord(job_id, owner, request, seq, state, attempts=attempts))
        return records

    def get(self, job_id: str) -> tuple[str, str, int, int] | None:
        """(owner, state, step, total) of a job still in the store."""
        return self.db.execute("SELECT owner, state, step, total FROM jobs WHERE id=?", (job_id,)).fetchone()

    def frame(self, job_id: str) -> bytes | None:
        try:
            return (self.results / f"{job_id}.msgpack").read_bytes()
        except FileNotFoundError:
            return None

    def active(self, owner: str) -> list[str]:
        rows = self.db.execute(
            "SELECT id FROM jobs WHERE owner=? AND state IN (?, ?) ORDER BY seq", (owner, QUEUED, RUNNING)
        ).fetchall()
        return [r[0] for r in rows]

    def count_unfinished(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM jobs WHERE state IN (?, ?)", (QUEUED, RUNNING)).fetchone()[0])

    # -- bounds ----------------------------------------------------------------------
    def prune(self) -> None:
        """Drop the oldest finished results beyond count, bytes or age."""
        done = self.db.execute(
            f"SELECT id, finished, result_bytes FROM jobs WHERE state IN ({','.join('?' * len(DONE))}) ORDER BY finished DESC",
            DONE,
        ).fetchall()
        keep_bytes, now, drop = 0, time.time(), []
        for i, (job_id, finished, size) in enumerate(done):
            keep_bytes += size
            too_old = finished is not None and now - finished > self.retention.max_age_s
            if i >= self.retention.count or (i > 0 and keep_bytes > self.retention.max_bytes) or too_old:
                drop.append(job_id)
        for job_id in drop:
            with contextlib.suppress(FileNotFoundError):
                (self.results / f"{job_id}.msgpack").unlink()
        if drop:
            self.db.executemany("DELETE FROM jobs WHERE id=?", [(d,) for d in drop])


    @contextlib.contextmanager
    def _tx(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
