"""Run one job on an engine and encode its final message: shared by the
embedded queue (on its engine thread) and the Redis worker process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bridge_server.convert import plot_result, to_params, to_result
from bridge_server.queue.records import CANCELLED, FAILED, FINISHED
from engine.errors import EngineError, JobCancelled
from protocol import Cancelled, Error, ErrorCode, Message, Result, oob, plots
from protocol.codec import encode_parts
from protocol.requests import JobRequest

log = logging.getLogger("paintbridge")

# (step, total, stage, preview, tile, tiles, cell, cells)
ReportFn = Callable[..., None]


class Interrupted(Exception):
    """The process is stopping: the job is not over, it runs again after the restart."""


class StopFlags:
    """The engine's cancel flag, set either by the client (cancel) or by a
    shutdown (interrupt): the engine stops at the next step either way; what
    happens to the job then differs."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.interrupt = threading.Event()

    def is_set(self) -> bool:
        return self.cancel.is_set() or self.interrupt.is_set()


def engine_error(exc: EngineError, job_id: str) -> Error:
    code = exc.code.value if isinstance(exc.code, ErrorCode) else str(exc.code)
    return Error(code=code, message=exc.message, job_id=job_id, field=exc.field)


def execute(engine, job_id: str, request: JobRequest, report: ReportFn, flags: StopFlags) -> tuple[str, oob.Parts]:
    """Run the job; return (final state, encoded final message). Raises
    Interrupted when a shutdown stopped it (it is neither done nor failed)."""
    try:
        if request.plot is not None:
            outcome: Message = _run_plot(engine, job_id, request, report, flags)
        else:
            started = time.perf_counter()
            output = engine.run(to_params(request), _progress(report), flags)
            # The model's own time, apart from the queue, the encoding and the socket
            # (the live latency figures in BENCHMARKS.md subtract it from the round trip).
            log.info("job %s engine %.1f ms", job_id, (time.perf_counter() - started) * 1000)
            outcome = to_result(job_id, output)
        state = FINISHED
    except JobCancelled:
        if flags.interrupt.is_set() and not flags.cancel.is_set():
            raise Interrupted(job_id) from None
        outcome, state = Cancelled(job_id), CANCELLED
    except EngineError as exc:
        outcome, state = engine_error(exc, job_id), FAILED
    except Exception as exc:
        log.exception("job %s failed", job_id)
        outcome, state = Error(ErrorCode.INTERNAL.value, f"internal error: {exc}", job_id), FAILED
    # A result's pixels beside its head (protocol/oob.py), not joined: each session sends it as its
    # client's protocol wants, the store writes it piece by piece (oob.pack joins it for Redis).
    return state, oob.Parts(encode_parts(outcome))


def _run_plot(engine, job_id: str, request: JobRequest, report: ReportFn, flags: StopFlags) -> Result:
    """A plot's cells one after another, as one job; every image keeps its labels.
    The seeds were drawn at submit (records.fix_seeds): every cell shares them."""
    cells = plots.cells(request)
    outputs = []
    for i, cell in enumerate(cells):
        output = engine.run(to_params(cell.request), _progress(report, i + 1, len(cells)), flags)
        outputs.append((output, cell.labels))
    return plot_result(job_id, outputs)


def _progress(report: ReportFn, cell: int = 0, cells: int = 0):
    def progress(step, total, stage, preview, tile=0, tiles=0) -> None:
        report(step, total, stage, preview, tile, tiles, cell, cells)

    return progress
