"""The Redis queue, front end side: `serve --queue redis://HOST:PORT/N`.

The front end holds the sockets, checks requests and hands jobs to Redis;
`paintbridge worker` processes (redis_worker.py) run them. Progress and final
frames come back over pub/sub to every front end, and reach the painter on
whichever front end holds the socket; results stay in Redis (bounded, with a
TTL), so any front end serves a fetch. The layout: redis_keys.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import msgpack

from bridge_server.queue.base import Catalog, Deliver, JobQueue, Submitted
from bridge_server.queue.fair import ClientQueueFull
from bridge_server.queue.records import CANCELLED, DONE, JobView, job_id, pack_request
from bridge_server.queue.redis_keys import CANCEL, FINISH, SUBMIT
from engine.errors import EngineError
from protocol import Cancelled, ModelInfo, encode
from protocol.requests import JobRequest

log = logging.getLogger("paintbridge")

RESULT_TTL_S = 24 * 3600


def connect(url: str, asynchronous: bool = True):
    try:
        if asynchronous:
            import redis.asyncio as aredis

            return aredis.Redis.from_url(url)
        import redis

        return redis.Redis.from_url(url)
    except ImportError as exc:  # pragma: no cover - redis-py is a dependency
        raise RuntimeError("the Redis queue needs redis-py: pip install redis") from exc


class RedisCatalog(Catalog):
    """What the workers have: each advertises its models with its heartbeat.
    The front end checks model names only; everything else is checked by the
    worker that runs the job (and comes back as the job's error)."""

    def __init__(self) -> None:
        self.ads: list[dict] = []

    def model_infos(self) -> list[ModelInfo]:
        seen: dict[str, ModelInfo] = {}
        for ad in self.ads:
            for m in ad.get("models", []):
                seen.setdefault(m[0], ModelInfo(*m))
        return list(seen.values())

    def default_model(self) -> str:
        return next((ad["default"] for ad in self.ads if ad.get("default")), "")

    def upscalers(self) -> list[str]:
        return sorted({u for ad in self.ads for u in ad.get("upscalers", [])})

    def check(self, request: JobRequest, max_message_bytes: int = 0) -> None:
        if not self.ads:
            raise EngineError("no_workers", "no worker is running: start one with `paintbridge worker --queue URL`")
        names = {m.name for m in self.model_infos() if m.kind == "checkpoint"}
        if request.model and request.model not in names:
            raise EngineError("unknown_model", f"no worker has the model {request.model!r}; they have: "
                              + (", ".join(sorted(names)) or "none"), field="model")


class RedisQueue(JobQueue):
    durable = True

    def __init__(self, url: str, *, prefix: str = "pb:", max_queue: int = 256, per_client: int = 32,
                 retention: int = 256, max_age_s: float = RESULT_TTL_S) -> None:
        self.url = url
        self.prefix = prefix
        self.max_queue = max_queue
        self.per_client = per_client
        self.retention = retention
        self.ttl = int(max_age_s)
        self.catalog = RedisCatalog()
        self.redis = connect(url)
        self.queue_id = ""
        self._tasks: list[asyncio.Task] = []
        self._deliver: Deliver | None = None

    @classmethod
    def from_url(cls, url: str, **kwargs) -> RedisQueue:
        return cls(url, **kwargs)

    def key(self, name: str) -> str:
        return self.prefix + name

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self.queue_id = await ensure_layout(self.redis, self.prefix)
        self._submit = self.redis.register_script(SUBMIT)
        self._finish = self.redis.register_script(FINISH)
        self._cancel = self.redis.register_script(CANCEL)
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.key("events"))
        await self._refresh_catalog()
        self._tasks = [asyncio.create_task(self._events(pubsub)), asyncio.create_task(self._watch_workers())]
        log.info("queue: redis at %s (queue %s)", self.url, self.queue_id)

    async def _events(self, pubsub) -> None:
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            data: bytes = message["data"]
            head, _, frame = data.partition(b"\0")
            assert self._deliver is not None
            self._deliver(head[1:].decode(), frame, head[:1] == b"F")

    async def _watch_workers(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                await self._refresh_catalog()

    async def _refresh_catalog(self) -> None:
        ads = []
        async for key in self.redis.scan_iter(match=self.key("worker:*"), count=100):
            data = await self.redis.get(key)
            if data:
                ads.append(msgpack.unpackb(data, raw=False))
        self.catalog.ads = ads

    async def stop(self, grace_s: float) -> None:
        return None  # the jobs run in the workers and carry on; nothing to stop here

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.redis.aclose()

    # -- the front end's calls -----------------------------------------------------------
    async def new_id(self) -> str:
        return job_id(self.queue_id, int(await self.redis.incr(self.key("seq"))))

    async def submit(self, owner: str, request: JobRequest, job_id_: str) -> Submitted:
        reply = await self._submit(args=[self.prefix, job_id_, owner, pack_request(request), int(request.live),
                                         request.model, self.per_client, self.max_queue, self.ttl])
        status = reply[0].decode()
        if status == "client_queue_full":
            raise ClientQueueFull(self.per_client)
        if status == "queue_full":
            raise EngineError("queue_full", f"the queue is full ({self.max_queue} jobs); try again later")
        superseded = reply[1].decode()
        if superseded:
            await self._end(superseded, CANCELLED, encode(Cancelled(superseded)))
        return Submitted(job_id_, await self._position(owner, job_id_, request.live), [superseded] if superseded else [])

    async def _position(self, owner: str, job_id_: str, live: bool) -> int:
        """Jobs ahead: the running ones count as one, then the queue (an estimate
        across owners: round-robin puts this one after each other owner's next)."""
        if live:
            return int(await self.redis.llen(self.key("live"))) - 1
        mine = await self.redis.lrange(self.key("cq:" + owner), 0, -1)
        rank = [m.decode() for m in mine].index(job_id_) if job_id_.encode() in mine else 0
        owners = int(await self.redis.zcard(self.key("owners")))
        return rank * max(owners, 1) + (owners - 1 if owners else 0)

    async def _end(self, job_id_: str, state: str, frame: bytes) -> None:
        await self._finish(args=[self.prefix, job_id_, state, frame, self.ttl, self.retention, "", ""])

    async def cancel(self, owner: str, job_id_: str) -> str | None:
        outcome = (await self._cancel(args=[self.prefix, job_id_, owner])).decode()
        if outcome == "missing":
            return None
        if outcome == "queued":
            await self._end(job_id_, CANCELLED, encode(Cancelled(job_id_)))
            return CANCELLED
        return outcome

    async def view(self, owner: str, job_id_: str) -> JobView | None:
        owner_, state = await self.redis.hmget(self.key("job:" + job_id_), "owner", "state")
        if owner_ is None or owner_.decode() != owner:
            return None
        state = state.decode()
        if state in DONE:
            frame = await self.redis.get(self.key("result:" + job_id_))
            return JobView(job_id_, state, 0, frame) if frame is not None else None
        return JobView(job_id_, state, 0)

    async def active(self, owner: str) -> list[str]:
        return []  # the workers carry every job on while this front end restarts


async def ensure_layout(redis, prefix: str) -> str:
    """The queue id (made once) and the consumer group (made once)."""
    await redis.set(prefix + "queue_id", secrets.token_hex(3), nx=True)
    with contextlib.suppress(Exception):  # BUSYGROUP: it exists
        await redis.xgroup_create(prefix + "stream", "workers", id="0", mkstream=True)
    return (await redis.get(prefix + "queue_id")).decode()
