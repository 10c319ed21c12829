"""The Redis queue's Lua scheduling against a real redis-server: the same
fairness scenarios as fair.py's tests, plus exactly-once ends. No engine."""

from __future__ import annotations

import shutil

import pytest

from bridge_server.queue.records import pack_request
from bridge_server.queue.redis_keys import CANCEL, FINISH, GROUP, PICK, SUBMIT
from protocol import JobRequest

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")

P = "t:"


@pytest.fixture(scope="module")
def redis_url():
    from tests.test_redis_queue import Redis

    server = Redis()
    yield server.url
    server.stop()


@pytest.fixture
def r(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.xgroup_create(P + "stream", GROUP, id="0", mkstream=True)
    return client


def submit(r, job_id: str, owner: str, live: bool = False, model: str = "", per_client: int = 32):
    reply = r.register_script(SUBMIT)(args=[P, job_id, owner, pack_request(JobRequest(live=live, model=model)),
                                            int(live), model, per_client, 256, 3600])
    return [x.decode() for x in reply]


def pick(r, worker: str = "w", prefer: str = "", default: str = "base") -> str | None:
    picked = r.register_script(PICK)(args=[P, worker, prefer, default])
    return picked[0].decode() if picked else None


def finish(r, job_id: str, entry: str = "") -> int:
    return r.register_script(FINISH)(args=[P, job_id, "finished", b"frame-" + job_id.encode(), 3600, 100, entry, "w"])


def test_flood_then_five_painters_each_start_within_one_job(r):
    for i in range(30):
        submit(r, f"a{i}", "A")
    started = [pick(r)]
    for c in "BCDEF":
        submit(r, f"{c}1", c)
        started.append(pick(r))
    assert started == ["a0", "B1", "C1", "D1", "E1", "F1"]
    for c in "BCDEF":
        submit(r, f"{c}2", c)
    assert [pick(r) for _ in range(7)] == ["a1", "B2", "C2", "D2", "E2", "F2", "a2"]


def test_limit_live_first_supersede_and_model_preference(r):
    submit(r, "a0", "A", per_client=2)
    submit(r, "a1", "A", per_client=2)
    assert submit(r, "a2", "A", per_client=2) == ["client_queue_full"]
    assert submit(r, "l1", "L", live=True) == ["ok", ""]
    assert submit(r, "l2", "L", live=True) == ["ok", "l1"]  # the queued live job is replaced
    submit(r, "b0", "B", model="x")
    assert pick(r) == "l2"
    assert submit(r, "l3", "L", live=True) == ["ok", ""]
    assert r.exists(P + "cancel:l2")  # the running live job is told to stop at its next step
    assert pick(r) == "l3"
    assert pick(r, prefer="x") == "b0"  # A and B equally entitled: the loaded model wins
    assert pick(r, prefer="x") == "a0"


def test_a_job_ends_once_even_if_it_ran_twice(r):
    submit(r, "j1", "A")
    assert pick(r, worker="w1") == "j1"
    entry = r.hget(P + "job:j1", "entry").decode()
    # w1 dies; after the idle timeout another worker claims the stream entry
    _, claimed, *_ = r.xautoclaim(P + "stream", GROUP, "w2", 0, start_id="0-0", count=1)
    assert [e for e, _ in claimed] == [entry.encode()]
    events = r.pubsub()
    events.subscribe(P + "events")
    events.get_message(timeout=1)
    assert finish(r, "j1", entry) == 1  # w2 ends it
    assert finish(r, "j1", entry) == 0  # w1 was only slow: its end changes nothing
    finals = []
    while (message := events.get_message(timeout=0.5)) is not None:
        finals.append(message["data"])
    assert finals == [b"Fj1\0frame-j1"]
    assert r.get(P + "result:j1") == b"frame-j1" and r.ttl(P + "result:j1") > 0
    assert r.xpending(P + "stream", GROUP)["pending"] == 0
    # cancel: a queued job is taken out of the queue, a running one flagged
    submit(r, "q1", "A")
    assert r.register_script(CANCEL)(args=[P, "q1", "B"]) == b"missing"  # not B's
    assert r.register_script(CANCEL)(args=[P, "q1", "A"]) == b"queued"
    assert pick(r) is None
