"""The job queue behind the websocket front end: an interface (base.py), fair
scheduling (fair.py), an embedded durable implementation (embedded.py over
sqlite_store.py) and a Redis one for many machines (redis_queue.py, with the
worker process in redis_worker.py)."""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path

from bridge_server.queue.base import Catalog, EngineCatalog, JobQueue, Submitted
from bridge_server.queue.fair import ClientQueueFull, FairScheduler

log = logging.getLogger("paintbridge")

__all__ = ["Catalog", "ClientQueueFull", "EngineCatalog", "FairScheduler", "JobQueue", "Submitted",
           "default_state_dir", "embedded_queue"]


def default_state_dir(port: int) -> Path:
    """<cache>/state/<port>: one folder per server address, so a server restarted
    on its port finds its jobs. Port 0 (a random port nobody can come back to)
    gets a temporary folder, removed at exit."""
    if port == 0:
        path = Path(tempfile.mkdtemp(prefix="paintbridge-state-"))
        atexit.register(shutil.rmtree, path, True)
        return path
    from engine.paths import cache_dir

    return cache_dir() / "state" / str(port)


def embedded_queue(engine, config) -> JobQueue:
    from bridge_server.queue.embedded import EmbeddedQueue
    from bridge_server.queue.sqlite_store import Retention

    state_dir = config.state_dir or default_state_dir(config.port)
    retention = Retention(config.result_retention, config.result_retention_bytes, config.result_max_age_s)
    queue = EmbeddedQueue(engine, state_dir, max_queue=config.max_queue, per_client=config.max_queued_per_client,
                          retention=retention, max_bytes=config.max_queue_bytes)
    log.info("queue: embedded, state in %s", state_dir)
    return queue
