"""The queue (issue 17): fair scheduling, the durable embedded queue, live jobs.

The scheduler is tested as pure logic; the rest against the real server
(in-process over the demo engine, or as a subprocess that is killed).
"""

from __future__ import annotations

import signal
import socket
import time

import numpy as np
import pytest

from bridge_server.queue.fair import ClientQueueFull, Entry, FairScheduler
from bridge_server.queue.sqlite_store import Retention, SqliteStore, StateDirBusy
from protocol import Accepted, Cancelled, JobRequest, JobStatus, Progress, RawImage, Restarting, Result, Submit
from protocol.shell.client import Client, ClientError
from tests.conftest import ServerProcess, running_server


def test_a_flood_delays_another_painters_job_by_at_most_the_running_one():
    fair = FairScheduler(per_client=32)
    for i in range(30):
        fair.add(Entry(f"a{i}", "A"))
    started = [fair.next().id]  # a0 runs
    for c in "BCDEF":  # five painters arrive, one job each, one after another
        fair.add(Entry(f"{c}1", c))
        started.append(fair.next().id)  # the next job to start after the running one ends
    assert started == ["a0", "B1", "C1", "D1", "E1", "F1"]
    # all six have run once: strict rotation, A (whose turn is oldest) first
    for c in "BCDEF":
        fair.add(Entry(f"{c}2", c))
    assert [fair.next().id for _ in range(7)] == ["a1", "B2", "C2", "D2", "E2", "F2", "a2"]


def test_round_robin_between_two_floods_and_fifo_within_a_client():
    fair = FairScheduler()
    for i in range(3):
        fair.add(Entry(f"a{i}", "A"))
        fair.add(Entry(f"b{i}", "B"))
    assert fair.order() == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert fair.position("b1") == 3
    assert [fair.next().id for _ in range(6)] == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert fair.next() is None and len(fair) == 0


def test_per_client_limit_and_live_jobs_jump_ahead_and_supersede():
    fair = FairScheduler(per_client=2)
    fair.add(Entry("a0", "A"))
    fair.add(Entry("a1", "A"))
    with pytest.raises(ClientQueueFull):
        fair.add(Entry("a2", "A"))
    fair.add(Entry("b0", "B"))  # another client is not affected
    assert fair.add(Entry("l1", "L", live=True)) == ""
    assert fair.add(Entry("l2", "L", live=True)) == "l1"  # the newer live job replaces the queued one
    assert fair.add(Entry("m1", "M", live=True)) == ""
    assert fair.order()[:2] == ["l2", "m1"]
    assert [fair.next().id for _ in range(2)] == ["l2", "m1"]
    assert "l1" not in fair


def test_model_preference_only_among_equally_entitled_clients():
    fair = FairScheduler()
    fair.add(Entry("a0", "A", model="x"))
    fair.add(Entry("b0", "B", model="y"))
    assert fair.next(prefer="y").id == "b0"  # A and B never ran: either may go, y is loaded
    fair.add(Entry("b1", "B", model="y"))
    assert fair.next(prefer="y").id == "a0"  # B just ran: A's claim is better, model or not


# -- the store ---------------------------------------------------------------------------------
def test_result_store_is_bounded_by_count_bytes_and_age(tmp_path):
    from bridge_server.queue.records import FINISHED, JobRecord

    store = SqliteStore(tmp_path, Retention(count=3, max_bytes=250, max_age_s=3600))
    with pytest.raises(StateDirBusy):
        SqliteStore(tmp_path, Retention())  # one server per state folder
    ids = []
    for i in range(5):
        seq = store.next_seq()
        record = JobRecord(f"{store.queue_id}-{seq:06d}", "me", JobRequest(seed=i), seq)
        store.insert(record)
        store.finish(record.id, FINISHED, bytes(100))
        ids.append(record.id)
        time.sleep(0.01)
    kept = [i for i in ids if store.get(i) is not None]
    assert kept == ids[-2:]  # 3 by count, but 250 bytes hold only two results of 100
    assert sorted(p.stem for p in (tmp_path / "results").iterdir()) == kept
    store.retention.max_age_s = 0.0
    store.prune()
    assert all(store.get(i) is None for i in ids) and not list((tmp_path / "results").iterdir())
    queue_id = store.queue_id
    store.close()
    again = SqliteStore(tmp_path, Retention())
    assert again.queue_id == queue_id and again.next_seq() == 6  # ids never repeat across restarts
    again.close()


# -- in-process server over the demo engine ---------------------------------------------------------
@pytest.mark.slow
def test_fairness_five_painters_behind_a_flood_of_30(engine, tmp_path):
    with running_server(engine, tmp_path) as (server, url):
        flood = Client(url)
        flood.connect()
        flood_ids = {flood.submit(JobRequest(width=64, height=64, steps=2, seed=i)).job_id for i in range(30)}
        painters = [Client(url) for _ in range(5)]
        waits = []
        for painter in painters:
            painter.connect()
            started_before = len(server.queue.started)
            job = painter.submit(JobRequest(width=64, height=64, steps=2, seed=7))
            assert job.position <= 5
            waits.append((painter, job.job_id, started_before))
        for painter, job_id, before in waits:
            assert painter.follow(job_id).seeds == [7]
            order = server.queue.started
            flood_jobs_between = [j for j in order[before:order.index(job_id)] if j in flood_ids]
            assert len(flood_jobs_between) <= 1, (job_id, order)
            painter.close()
        # the flood still completes, every job once
        done: list[str] = []
        while len(done) < 30:
            message = flood.poll(60)
            assert message is not None
            if isinstance(message, Result):
                done.append(message.job_id)
        assert set(done) == flood_ids and len(done) == 30
        flood.close()


def test_per_client_limit_is_a_clear_error(engine, tmp_path):
    with running_server(engine, tmp_path, max_queued_per_client=2) as (_server, url), Client(url) as client:
        client.submit(JobRequest(width=512, height=512, steps=40))
        client.submit(JobRequest(width=64, height=64, steps=1))
        client.submit(JobRequest(width=64, height=64, steps=1))
        with pytest.raises(ClientError) as caught:
            client.submit(JobRequest(width=64, height=64, steps=1))
        assert caught.value.code == "client_queue_full" and "2 jobs queued" in caught.value.message
        assert client.welcome.capabilities.max_queued_per_client == 2 and client.welcome.capabilities.durable


@pytest.mark.slow
def test_live_burst_runs_at_most_twice_and_leaves_nothing_in_the_store(engine, tmp_path):
    with running_server(engine, tmp_path) as (server, url):
        other, painter = Client(url), Client(url)
        other.connect()
        painter.connect()
        ordinary = other.submit(JobRequest(width=128, height=128, steps=8, seed=5))
        for i in range(10):  # a burst: no waiting for `accepted`
            painter.send(Submit(JobRequest(width=64, height=64, steps=6, seed=i, live=True), ref=f"live{i}"))
        ids, ends, previews = {}, {}, 0
        while len(ends) < 10:
            message = painter.poll(60)
            if isinstance(message, Accepted):
                ids[message.ref] = message.job_id
            elif isinstance(message, (Result, Cancelled)):
                ends[message.job_id] = message
            elif isinstance(message, Progress):
                previews += message.preview is not None
        newest = ids["live9"]
        assert isinstance(ends[newest], Result) and ends[newest].seeds == [9]
        assert all(isinstance(ends[ids[f"live{i}"]], Cancelled) for i in range(9))
        live_runs = [j for j in server.queue.started if j in ids.values()]
        assert len(live_runs) <= 2 and live_runs[-1] == newest
        assert previews == 0
        assert other.follow(ordinary.job_id).seeds == [5]  # the other painter's job still completes
        # live jobs leave nothing behind: not fetchable, no rows, no files
        for job_id in ids.values():
            with pytest.raises(ClientError) as caught:
                painter.status(job_id)
            assert caught.value.code == "not_found"
            assert server.queue.store.get(job_id) is None
        assert [p.stem for p in (tmp_path / "state" / "results").iterdir()] == [ordinary.job_id]
        painter.close()
        other.close()


def test_live_job_waits_for_at_most_the_running_ordinary_job(engine, tmp_path):
    with running_server(engine, tmp_path) as (server, url), Client(url) as flood, Client(url) as painter:
        flood_ids = [flood.submit(JobRequest(width=64, height=64, steps=3, seed=i)).job_id for i in range(6)]
        while not server.queue.started:
            time.sleep(0.01)
        before = len(server.queue.started)
        live = painter.submit(JobRequest(width=64, height=64, steps=2, seed=1, live=True))
        assert painter.follow(live.job_id).seeds == [1]
        order = server.queue.started
        assert len([j for j in order[before:order.index(live.job_id)] if j in flood_ids]) <= 1


# -- a real server process, killed -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch_all(url: str, client_id: str, job_ids: list[str]) -> dict[str, Result]:
    with Client(url, client_id=client_id) as client:
        return {job_id: client.wait(job_id, reconnect_s=30, fetch=True) for job_id in job_ids}


@pytest.mark.slow
def test_kill9_during_the_second_of_six_jobs_loses_nothing(demo_models, tmp_path):
    port, state = free_port(), tmp_path / "state"
    args = ("--demo", "--no-preload", "--port", str(port), "--state-dir", str(state))
    requests = [JobRequest(width=64, height=64, steps=3, seed=10 + i) for i in range(6)]
    requests[1] = JobRequest(width=64, height=64, steps=20, seed=11)  # the second job: longer, killed mid-way
    first = ServerProcess(*args)
    a, b = Client(first.url), Client(first.url)
    try:
        a.connect()
        b.connect()
        # A sends 1, 3, 5 and B 2, 4, 6; round-robin runs them 1, 2, 3, ...
        ids_a = [a.submit(requests[i]).job_id for i in (0, 2, 4)]
        ids_b = [b.submit(requests[i]).job_id for i in (1, 3, 5)]
        finished_before = a.follow(ids_a[0])
        while True:  # the second job is running
            message = b.poll(60)
            if isinstance(message, Progress) and message.job_id == ids_b[0] and message.step >= 2:
                break
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    finally:
        a.close()
        b.close()
        first.stop()
    second = ServerProcess(*args)
    try:
        got = {**_fetch_all(second.url, a.client_id, ids_a), **_fetch_all(second.url, b.client_id, ids_b)}
        assert "runs again" in second.log()
        # an undisturbed run of the same requests, same seeds
        with Client(second.url) as c:
            reference = [c.run(r) for r in requests]
        order = [ids_a[0], ids_b[0], ids_a[1], ids_b[1], ids_a[2], ids_b[2]]
        for job_id, ref in zip(order, reference, strict=True):
            assert got[job_id].job_id == job_id
            assert got[job_id].seeds == ref.seeds
            assert got[job_id].images[0].data == ref.images[0].data  # pixel-identical
        assert got[ids_a[0]].images[0].data == finished_before.images[0].data
    finally:
        second.stop()


@pytest.mark.slow
def test_sigterm_tells_every_client_then_the_jobs_carry_on(demo_models, tmp_path):
    port, state = free_port(), tmp_path / "state"
    args = ("--demo", "--no-preload", "--port", str(port), "--state-dir", str(state), "--shutdown-grace", "0.3")
    first = ServerProcess(*args)
    a, b, idle = Client(first.url), Client(first.url), Client(first.url)
    for c in (a, b, idle):
        c.connect()
    long_a = a.submit(JobRequest(width=128, height=128, steps=40, seed=1)).job_id
    queued_a = a.submit(JobRequest(width=64, height=64, steps=2, seed=2)).job_id
    queued_b = b.submit(JobRequest(width=64, height=64, steps=2, seed=3)).job_id
    first.wait_for_log(rf"job {long_a} running")
    time.sleep(0.5)
    first.proc.send_signal(signal.SIGTERM)
    seen: dict[str, list] = {}
    for client, jobs in ((a, {long_a, queued_a}), (b, {queued_b}), (idle, set())):
        messages = []
        try:
            while True:
                message = client.poll(30)
                assert message is not None
                messages.append(message)
        except ClientError as exc:
            assert exc.code == "connection_lost"
        notices = [m for m in messages if isinstance(m, Restarting)]
        assert len(notices) == 1 and set(notices[0].job_ids) == jobs
        told = {m.job_id for m in messages if isinstance(m, JobStatus) and m.state == "restarting"}
        ended = {m.job_id for m in messages if isinstance(m, (Result, Cancelled))}
        assert told | ended >= jobs
        seen[client.client_id] = messages
    assert first.proc.wait(20) == 0
    assert "stops at its next step" in first.log()
    first.stop()
    second = ServerProcess(*args)
    try:
        results = {**_fetch_all(second.url, a.client_id, [long_a, queued_a]), **_fetch_all(second.url, b.client_id, [queued_b])}
        assert [results[j].seeds for j in (long_a, queued_a, queued_b)] == [[1], [2], [3]]
        assert np.frombuffer(results[long_a].images[0].data, np.uint8).size == 128 * 128 * 4
    finally:
        second.stop()


@pytest.mark.slow
def test_plugin_worker_receives_its_result_after_kill9_and_sigterm_restarts(demo_models, tmp_path):
    """The plugin reconnects by itself and gets the job it sent before the server died."""
    from krita_plugin.paintbridge import requests as plugin_requests
    from krita_plugin.paintbridge.worker import Worker
    from tests.test_krita_plugin import _until

    port, state = free_port(), tmp_path / "state"
    args = ("--demo", "--no-preload", "--port", str(port), "--state-dir", str(state), "--shutdown-grace", "0")
    first = ServerProcess(*args)
    worker = Worker(first.url)
    worker.connection.backoff.initial = 0.2
    worker.connection.backoff.cap = 1.0
    worker.start()
    servers = [first]
    try:
        _until(worker, "welcome")
        request = plugin_requests.generate_request(plugin_requests.Settings(steps=40, seed=9, random_seed=False), 128, 128, None)
        worker.submit("long", request)
        _until(worker, "progress", timeout=180)
        first.proc.send_signal(signal.SIGTERM)  # a polite restart: the plugin hears "restarting"
        first.proc.wait(60)
        first.stop()
        second = ServerProcess(*args)
        servers.append(second)
        _until(worker, "progress", timeout=180)  # followed again after the reconnect
        second.proc.send_signal(signal.SIGKILL)  # then a crash
        second.proc.wait(10)
        second.stop()
        servers.append(ServerProcess(*args))
        events = _until(worker, "result", timeout=300)
        assert events[-1].tag == "long" and events[-1].data.seeds == [9]
        assert not [e for e in events if e.kind == "failed"]
    finally:
        worker.stop()
        for server in servers:
            server.stop()


def test_images_held_by_unfinished_jobs_are_bounded(engine, tmp_path):
    """config.max_queue_bytes: a request whose images would take the unfinished jobs' pixels over the
    bound is refused (queue_full) before anything is written; room comes back when a job ends."""
    layer = np.full((64, 64, 4), 200, np.uint8)
    request = JobRequest(kind="img2img", image=RawImage(64, 64, 4, layer.tobytes()), strength=0.5, steps=40)
    with running_server(engine, tmp_path, max_queue_bytes=int(1.5 * layer.nbytes)) as (server, url), \
            Client(url) as client:
        first = client.submit(request).job_id
        with pytest.raises(ClientError) as caught:
            client.submit(request)
        assert caught.value.code == "queue_full" and "MiB" in caught.value.message
        assert len(list((tmp_path / "state").rglob("*.pixels"))) == 1  # the refused one wrote nothing
        client.submit(JobRequest(width=64, height=64, steps=1))  # no images: not counted
        client.cancel(first)
        deadline = time.monotonic() + 60
        while server.queue.pixel_bytes and time.monotonic() < deadline:
            time.sleep(0.05)
        client.submit(JobRequest(kind="img2img", image=RawImage(64, 64, 4, layer.tobytes()), strength=0.5, steps=1))
