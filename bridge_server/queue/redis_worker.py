"""`paintbridge worker --queue redis://...`: an engine process that runs jobs.

One per GPU (or per machine). The loop: first take over the job of a worker
that died (XAUTOCLAIM of a stream entry idle longer than `claim_after_s`),
else pick the next job by the fair rules (Lua, redis_keys.PICK), else block
on the wake list. While a job runs, a heartbeat thread keeps its stream entry
fresh (XCLAIM by its owner resets the idle time) and advertises this worker;
each step publishes progress and checks the job's cancel key, so a cancel
lands within one step. FINISH ends the job exactly once even if it ran twice.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

import msgpack

from bridge_server.convert import to_raw
from bridge_server.queue.base import EngineCatalog
from bridge_server.queue.records import unpack_request
from bridge_server.queue.redis_keys import FINISH, GROUP, PICK
from bridge_server.queue.redis_queue import RESULT_TTL_S, connect
from bridge_server.queue.runner import Interrupted, StopFlags, execute
from protocol import Progress, encode, oob

log = logging.getLogger("paintbridge")


class Worker:
    def __init__(self, url: str, engine, *, name: str = "", prefix: str = "pb:", heartbeat_s: float = 1.0,
                 claim_after_s: float = 10.0, retention: int = 256, ttl_s: int = RESULT_TTL_S) -> None:
        self.redis = connect(url, asynchronous=False)
        self.engine = engine
        self.catalog = EngineCatalog(engine)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.prefix = prefix
        self.heartbeat_s = heartbeat_s
        self.claim_after_ms = int(claim_after_s * 1000)
        self.retention = retention
        self.ttl = ttl_s
        self.stopping = threading.Event()
        self.current: tuple[str, str] | None = None  # (job id, stream entry)
        self.loaded = ""  # the model this worker has in memory
        self._pick = self.redis.register_script(PICK)
        self._finish = self.redis.register_script(FINISH)

    def key(self, name: str) -> str:
        return self.prefix + name

    def setup(self) -> None:
        self.redis.set(self.key("queue_id"), os.urandom(3).hex(), nx=True)
        try:
            self.redis.xgroup_create(self.key("stream"), GROUP, id="0", mkstream=True)
        except Exception as exc:  # BUSYGROUP: made by another process
            if "BUSYGROUP" not in str(exc):
                raise
        self.advertise()

    def advertise(self) -> None:
        ad = {
            "name": self.name,
            "models": [[m.name, m.kind, m.family, m.native_size] for m in self.catalog.model_infos()],
            "default": self.catalog.default_model(),
            "upscalers": self.catalog.upscalers(),
            "loaded": self.loaded,
            "job": self.current[0] if self.current else "",
        }
        self.redis.set(self.key("worker:" + self.name), msgpack.packb(ad), ex=max(3, int(self.heartbeat_s * 3)))

    def _heartbeat(self) -> None:
        while not self.stopping.is_set():
            try:
                self.advertise()
                current = self.current
                if current is not None:  # keep our job's entry fresh: we are alive
                    self.redis.xclaim(self.key("stream"), GROUP, self.name, 0, [current[1]], justid=True)
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
            self.stopping.wait(self.heartbeat_s)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        import redis

        self.setup()
        threading.Thread(target=self._heartbeat, name="paintbridge-heartbeat", daemon=True).start()
        log.info("worker %s ready (models: %s)", self.name, ", ".join(m.name for m in self.catalog.model_infos()))
        while not self.stopping.is_set():
            try:
                job = self._claim() or self._next()
                if job is None:
                    self.redis.blpop([self.key("wake")], timeout=1)
                    continue
                self._run(*job)
            except redis.ConnectionError as exc:
                # Redis restarting or the network gone: the job (if any) stays
                # pending in the stream and is claimed again; try again shortly.
                log.warning("lost Redis (%s); retrying", exc)
                self.current = None
                self.stopping.wait(1.0)

    def _claim(self) -> tuple[str, str] | None:
        """The job of a worker that stopped heartbeating, if any."""
        _, claimed, *_ = self.redis.xautoclaim(self.key("stream"), GROUP, self.name, self.claim_after_ms,
                                               start_id="0-0", count=1)
        for entry_id, fields in claimed:
            if not fields:  # deleted entry
                continue
            job_id = fields[b"id"].decode()
            state = self.redis.hget(self.key("job:" + job_id), "state")
            if state != b"running":  # ended meanwhile (the other worker was only slow)
                self.redis.xack(self.key("stream"), GROUP, entry_id)
                continue
            self.redis.hset(self.key("job:" + job_id), mapping={"worker": self.name, "entry": entry_id})
            self.redis.hincrby(self.key("job:" + job_id), "attempts", 1)
            log.info("job %s: its worker stopped; runs again here", job_id)
            return job_id, entry_id.decode()
        return None

    def _next(self) -> tuple[str, str] | None:
        picked = self._pick(args=[self.prefix, self.name, self.loaded, self.catalog.default_model()])
        if not picked:
            return None
        return picked[0].decode(), picked[1].decode()

    def _run(self, job_id: str, entry: str) -> None:
        data = self.redis.hget(self.key("job:" + job_id), "request")
        if data is None:  # ended meanwhile
            self.redis.xack(self.key("stream"), GROUP, entry)
            return
        request = unpack_request(data)
        self.current = (job_id, entry)
        flags = StopFlags()
        started = time.monotonic()
        log.info("job %s running", job_id)
        try:
            state, frame = execute(self.engine, job_id, request, self._reporter(job_id, request, flags), flags)
        except Interrupted:
            log.info("job %s interrupted: another worker takes it over", job_id)
            self.current = None
            return
        self.loaded = request.model or self.catalog.default_model()
        self.current = None
        ended = self._finish(args=[self.prefix, job_id, state, oob.pack(frame), self.ttl, self.retention, entry, self.name])
        log.info("job %s %s in %.2fs%s", job_id, state, time.monotonic() - started,
                 "" if ended else " (already ended by another worker)")

    def _reporter(self, job_id: str, request, flags: StopFlags):
        channel, cancel_key = self.key("events"), self.key("cancel:" + job_id)
        previews = request.preview and not request.live

        def report(step, total, stage, preview, tile=0, tiles=0, cell=0, cells=0) -> None:
            small = to_raw(preview) if preview is not None and previews else None
            frame = encode(Progress(job_id, step, total, stage, small, tile, tiles, cell, cells))
            pipe = self.redis.pipeline(transaction=False)
            pipe.publish(channel, b"P" + job_id.encode() + b"\0" + frame)
            pipe.exists(cancel_key)
            if pipe.execute()[1]:
                flags.cancel.set()  # the engine stops at its next step check
            if self.stopping.is_set():
                flags.interrupt.set()

        return report


def run_worker(args) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from bridge_server.cli import CliError
    from bridge_server.serve import build_engine

    if not args.queue.startswith(("redis://", "rediss://", "unix://")):
        raise CliError("invalid_request", "--queue: a worker needs redis://HOST:PORT/N")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import redis

    engine = build_engine(args)
    worker = Worker(args.queue, engine, name=args.name, heartbeat_s=args.heartbeat, claim_after_s=args.claim_after)
    try:
        worker.redis.ping()
    except redis.RedisError as exc:
        raise CliError("unreachable", f"cannot reach Redis at {args.queue}: {exc}") from None

    def stop(*_):
        worker.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run()
    return 0
