"""The Redis queue with Debian's real redis-server (started here on a loopback
port), real front ends (`serve --queue redis://...`) and real workers
(`paintbridge worker --demo`), each a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from protocol import Accepted, Cancelled, JobRequest, Progress, Result, Submit
from protocol.shell.client import Client
from tests.conftest import ROOT, ServerProcess, stop_process
from tests.test_queue import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (apt-get install redis-server)"),
]


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="paintbridge-redis-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class WorkerProcess:
    def __init__(self, url: str, name: str) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix=f"paintbridge-{name}-", suffix=".log")[1])
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge_server", "worker", "--queue", url, "--demo", "--name", name,
             "--threads", "1", "--heartbeat", "0.3", "--claim-after", "2"],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ),
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, pattern: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.log()):
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@pytest.fixture(scope="module")
def studio(demo_models):
    redis = Redis()
    workers, front = [], None
    try:
        workers = [WorkerProcess(redis.url, f"w{i}") for i in range(3)]
        front = ServerProcess("--queue", redis.url)
        for w in workers:
            w.wait_for_log(r"worker \S+ ready")
        time.sleep(1.5)  # the front end sees the workers' first heartbeats
        yield redis, front, workers
    finally:
        for w in workers:
            w.stop()
        if front is not None:
            front.stop()
        redis.stop()


def test_thirty_jobs_five_clients_three_workers_one_killed(studio):
    redis, front, workers = studio
    clients = [Client(front.url) for _ in range(5)]
    for c in clients:
        c.connect()
    assert clients[0].welcome.capabilities.default_model == "paintbridge-demo"
    ids: dict[str, Client] = {}
    for i in range(6):
        for k, c in enumerate(clients):
            seed = 100 * k + i
            c.send(Submit(JobRequest(width=64, height=64, steps=12 if i == 0 else 3, seed=seed), ref=str(seed)))
    finals: dict[str, list] = {}
    killed = None
    deadline = time.monotonic() + 300
    while len(finals) < 30 or killed is None:
        assert time.monotonic() < deadline, (len(finals), [w.log() for w in workers])
        for c in clients:
            message = c.poll(0.02)
            if isinstance(message, Accepted):
                ids[message.job_id] = c
            elif isinstance(message, (Result, Cancelled)) or getattr(message, "code", ""):
                finals.setdefault(message.job_id, []).append(message)
            elif isinstance(message, Progress) and killed is None and message.step >= 2:
                # kill -9 the worker that runs this job, mid-job
                victim = next((w for w in workers if re.search(rf"job {message.job_id} running", w.log())), None)
                if victim is not None:
                    victim.proc.send_signal(signal.SIGKILL)
                    victim.proc.wait(10)
                    killed = (victim, message.job_id)
    time.sleep(1.0)  # nothing more arrives: every job ended once
    for c in clients:
        while (message := c.poll(0.05)) is not None:
            if isinstance(message, (Result, Cancelled)):
                finals.setdefault(message.job_id, []).append(message)
    assert len(ids) == 30 and set(finals) == set(ids)
    assert all(len(v) == 1 and isinstance(v[0], Result) for v in finals.values())
    victim, job_id = killed
    survivors = "".join(w.log() for w in workers if w is not victim)
    assert f"job {job_id}: its worker stopped; runs again here" in survivors
    assert finals[job_id][0].seeds and finals[job_id][0].images[0].width == 64

    # a second front end serves a fetch for a job submitted through the first
    second = ServerProcess("--queue", redis.url)
    try:
        owner = ids[job_id]
        with Client(second.url, client_id=owner.client_id) as again:
            fetched = again.fetch(job_id)
        assert fetched.images[0].data == finals[job_id][0].images[0].data
    finally:
        second.stop()
    for c in clients:
        c.close()


def test_cancel_reaches_the_worker_within_one_step(studio):
    _, front, _ = studio
    with Client(front.url) as client:
        job = client.submit(JobRequest(width=128, height=128, steps=100, seed=1))
        steps = []

        def on_progress(p: Progress) -> None:
            steps.append(p.step)
            if len(steps) == 1:
                client.cancel(job.job_id)

        with pytest.raises(Exception) as caught:
            client.follow(job.job_id, on_progress)
        assert getattr(caught.value, "code", "") == "cancelled"
        assert max(steps) - steps[0] <= 3, steps  # the cancel travels client -> front end -> Redis -> worker
        assert client.status(job.job_id).type == "cancelled"
        assert client.run(JobRequest(width=64, height=64, steps=2, seed=3)).seeds == [3]  # workers go on
