"""Server settings, with the safe defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# A 4096x4096 RGBA layer is 64 MiB and its mask 16 MiB; an 8192x8192 layer
# (the largest generate size) is 256 MiB. Leave room for msgpack framing.
DEFAULT_MAX_MESSAGE = 300 * 1024 * 1024


@dataclass
class ServerConfig:
    models_dir: Path
    host: str = "127.0.0.1"
    port: int = 8765
    token: str = ""  # required from every client when set
    allow_origins: list[str] = field(default_factory=list)  # browser origins allowed besides loopback
    max_message_bytes: int = DEFAULT_MAX_MESSAGE
    max_queue: int = 256  # queued + running jobs, all clients
    result_retention: int = 32  # finished jobs kept for fetch_result, oldest dropped
    result_retention_bytes: int = 2 * 1024**3  # ...and at most this many bytes of images
    max_connections: int = 64  # clients past hello
    max_waiting: int = 32  # sockets that have not sent hello yet; the oldest is dropped beyond
    max_pending_frames: int = 8  # per connection; beyond it previews are dropped
    # Hostile-client bounds (docs/security.md lists each with its reason).
    max_hello_bytes: int = 64 * 1024  # largest frame before hello has succeeded
    max_outbox_frames: int = 1024  # unread frames per connection before it is disconnected
    max_outbox_bytes: int = 64 * 1024 * 1024  # ...or unread bytes (results, shared with the store, not counted)
    max_queue_bytes: int = 1024**3  # pixels held by queued + running jobs, all clients
    hello_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    preload: bool = True  # load the default model at start, so the first job is quick
    demo: bool = False
    # -- the queue (bridge_server/queue) --
    queue_url: str = "embedded"  # or redis://HOST:PORT/N (this process is then a front end)
    state_dir: Path | None = None  # embedded: jobs + results; None = <cache>/state/<port>
    max_queued_per_client: int = 32  # one client's queued jobs; beyond: client_queue_full
    result_max_age_s: float = 24 * 3600.0  # finished results older than this are dropped
    shutdown_grace_s: float = 5.0  # SIGTERM: a running job may finish for this long, else stops at a step
