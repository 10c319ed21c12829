"""Hardening: hostile input, limits and faults, against the real server."""

from __future__ import annotations

import re
import signal
import time

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from websockets.sync.client import connect

from bridge_server.client import Client, ClientError
from engine.errors import EngineError
from protocol import PROTOCOL_VERSION, ErrorCode, Hello, JobRequest, ProtocolError, RawImage, Welcome, decode, encode
from tests.conftest import ServerProcess, run_cli

pytestmark = pytest.mark.slow


def test_non_loopback_host_requires_a_token(demo_models):
    proc = ServerProcess("--demo", "--no-preload", "--host", "0.0.0.0")
    try:
        token = re.search(r"must send this token:\s+(\S+)", proc.log()).group(1)
        with pytest.raises(ClientError) as caught:
            Client(proc.url).connect()
        assert caught.value.code == "unauthorized"
        with Client(proc.url, token=token) as client:
            assert client.run(JobRequest(width=64, height=64, steps=1)).images
    finally:
        proc.stop()


def test_idle_sockets_do_not_lock_out_a_real_client(server):
    idle = [connect(server.url) for _ in range(200)]  # handshake done, never say hello
    try:
        with Client(server.url) as client:
            assert client.run(JobRequest(width=64, height=64, steps=1)).images
    finally:
        for ws in idle:
            ws.close()


def test_oversized_message_is_refused_and_the_server_goes_on(demo_models):
    proc = ServerProcess("--demo", "--no-preload", "--max-message-mib", "1")
    try:
        with Client(proc.url) as client:
            assert client.welcome.capabilities.max_message_bytes == 1024 * 1024
            big = RawImage(1024, 1024, 4, bytes(1024 * 1024 * 4))
            with pytest.raises(ClientError) as caught:
                client.run(JobRequest(kind="img2img", image=big, steps=1))
            assert caught.value.code in ("too_large", "connection_lost")
        with Client(proc.url) as client:
            assert client.run(JobRequest(width=64, height=64, steps=1)).images
    finally:
        proc.stop()


def test_evil_checkpoint_never_runs(tmp_path):
    import pickle

    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    (tmp_path / "Stable-diffusion").mkdir()
    (tmp_path / "Stable-diffusion" / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    (tmp_path / "Stable-diffusion" / "renamed.safetensors").write_bytes(pickle.dumps({"a": Evil()}))
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.params import JobParams
    from engine.registry import Registry

    engine = Engine(Registry(tmp_path).scan(), ModelManager(device="cpu"))
    assert [e.name for e in engine.registry.list()] == ["evil"]  # the fake .safetensors is not a model
    with pytest.raises(EngineError) as caught:
        engine.run(JobParams(model="evil", steps=1))
    assert caught.value.code == "unsafe_file" and "pickled code" in caught.value.message
    with pytest.raises(EngineError) as caught:
        engine.run(JobParams(model="renamed", steps=1))
    assert caught.value.code == "unknown_model"
    assert not sentinel.exists()


def test_real_cpu_out_of_memory_is_recognised():
    import torch

    from engine.models import is_out_of_memory

    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**50, dtype=torch.uint8)
    assert is_out_of_memory(caught.value)


def test_double_cancel_and_cancel_racing_completion(server):
    with Client(server.url) as client:
        job = client.submit(JobRequest(width=256, height=256, steps=60))
        client.cancel(job.job_id)
        client.cancel(job.job_id)
        with pytest.raises(ClientError) as caught:
            client.follow(job.job_id)
        assert caught.value.code == "cancelled"
        for _ in range(5):  # cancel right as tiny jobs finish: a result or a cancel, never a hang
            quick = client.submit(JobRequest(width=64, height=64, steps=1))
            client.cancel(quick.job_id)
            try:
                client.follow(quick.job_id)
            except ClientError as exc:
                assert exc.code == "cancelled"
        assert client.run(JobRequest(width=64, height=64, steps=1)).images


def test_one_client_cannot_cancel_anothers_job(server):
    owner, other = Client(server.url), Client(server.url)
    with owner, other:
        job = owner.submit(JobRequest(width=128, height=128, steps=8, seed=3))
        other.cancel(job.job_id)
        with pytest.raises(ClientError) as caught:
            other.status(job.job_id)
        assert caught.value.code == "not_found"
        assert owner.follow(job.job_id).seeds == [3]


def test_killed_server_job_is_reported_lost(demo_models, tmp_path):
    first = ServerProcess("--demo", "--no-preload")
    client = Client(first.url)
    client.connect()
    job = client.submit(JobRequest(width=512, height=512, steps=150))
    client.close()
    first.proc.send_signal(signal.SIGKILL)
    first.stop()
    second = ServerProcess("--demo", "--no-preload", "--port", str(first.port))
    try:
        again = Client(second.url, client_id=client.client_id)
        with again, pytest.raises(ClientError) as caught:
            again.fetch(job.job_id)
        assert caught.value.code == "job_lost" and "restarted" in caught.value.message
        done = run_cli("result", "--server", second.url, "--job", job.job_id, "--out", str(tmp_path / "x.png"))
        assert done.returncode == 1 and "[job_lost]" in done.stderr
    finally:
        second.stop()


def test_cli_reconnects_when_the_server_restarts_mid_job_and_gets_the_result(demo_models, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    state = ("--state-dir", str(tmp_path / "state"))  # a durable queue: the job survives the kill
    first = ServerProcess("--demo", "--no-preload", *state)
    cli = subprocess.Popen(
        [sys.executable, "-m", "bridge_server", "generate", "--server", first.url, "--steps", "60", "--seed", "5",
         "--width", "64", "--height", "64", "--out", str(tmp_path / "x.png")], cwd=ROOT, stderr=subprocess.PIPE,
        text=True,
    )
    first.wait_for_log(r"job \S+ running")
    time.sleep(1)
    first.proc.send_signal(signal.SIGKILL)
    first.stop()
    second = ServerProcess("--demo", "--no-preload", "--port", str(first.port), *state)
    try:
        _, stderr = cli.communicate(timeout=400)
        assert cli.returncode == 0, stderr
        assert "runs again" in second.log()
        assert Image.open(tmp_path / "x.png").info["parameters"].count("Seed: 5") == 1
    finally:
        second.stop()


def test_slow_reader_previews_are_dropped_results_never():
    import asyncio

    from bridge_server.server import Session

    class Stalled:
        async def send(self, frame):
            await asyncio.sleep(3600)

    async def scenario():
        session = Session(Stalled(), max_pending=4)  # type: ignore[arg-type]
        for _ in range(100):
            session.send(b"preview", droppable=True)
        for _ in range(3):
            session.send(b"result")
        return list(session._outbox)

    outbox = asyncio.run(scenario())
    assert outbox.count(b"preview") == 4 and outbox.count(b"result") == 3


fuzz_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=30)
    | st.binary(max_size=64),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
FIELDS = ["kind", "prompt", "steps", "cfg_scale", "seed", "width", "height", "strength", "batch_size", "image",
          "mask", "sampler", "model", "hires", "upscale", "mask_blur", "preview"]
request_maps = st.dictionaries(st.sampled_from(FIELDS), fuzz_values, max_size=8)


@settings(max_examples=10_000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(request=request_maps)
def test_fuzz_request_validator_10k(request):
    frame = msgpack.packb({"type": "submit", "request": request}, use_bin_type=True)
    try:
        decode(frame)
    except ProtocolError as exc:
        assert exc.code in ErrorCode and exc.message


def test_fuzzed_frames_against_the_live_server(server):
    rng = np.random.default_rng(0)
    with connect(server.url, max_size=None) as ws:
        ws.send(encode(Hello(protocol=PROTOCOL_VERSION)))
        assert isinstance(decode(ws.recv()), Welcome)
        for i in range(1000):
            if i % 2:
                frame = rng.bytes(int(rng.integers(0, 200)))
            else:
                body = {k: v for k, v in {"steps": int(rng.integers(-5, 500)), "width": int(rng.integers(-5, 9000)),
                        "cfg_scale": float(rng.normal(0, 100)), "kind": "img2img" if i % 3 else "x"}.items()}
                frame = msgpack.packb({"type": "submit", "request": body})
            ws.send(frame)
            reply = decode(ws.recv(timeout=10))
            assert reply.type in ("error", "accepted")
    with Client(server.url) as client:
        assert client.run(JobRequest(width=64, height=64, steps=1)).images


def test_a_job_longer_than_the_ping_timeout_keeps_the_connection(engine):
    """Server pings every 0.2 s with a 0.5 s timeout; a ~3 s job must not drop the client."""
    import asyncio
    import threading

    from bridge_server.config import ServerConfig
    from bridge_server.server import PaintBridgeServer

    config = ServerConfig(models_dir=engine.registry.root, port=0, preload=False, ping_interval_s=0.2,
                          ping_timeout_s=0.5)
    server = PaintBridgeServer(config, engine)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(30)
    try:
        with Client(f"ws://127.0.0.1:{server.port}") as client:
            started = time.monotonic()
            result = client.run(JobRequest(width=512, height=512, steps=12, seed=1))
            assert time.monotonic() - started > 1.0 and result.seeds == [1]
            assert client.run(JobRequest(width=64, height=64, steps=1)).images  # still connected
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
