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

from engine.errors import EngineError
from protocol import PROTOCOL_VERSION, ErrorCode, Hello, JobRequest, ProtocolError, RawImage, Welcome, decode, encode
from protocol.shell.client import Client, ClientError
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
    idle = [connect(server.url).__enter__() for _ in range(200)]  # handshake done, never say hello
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
        return [frame for frame, _ in session._outbox]

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


def test_a_job_longer_than_the_ping_timeout_keeps_the_connection(engine, tmp_path):
    """Server pings every 0.2 s with a 0.5 s timeout; a ~3 s job must not drop the client."""
    from tests.conftest import running_server

    with running_server(engine, tmp_path, ping_interval_s=0.2, ping_timeout_s=0.5) as (_server, url):
        with Client(url) as client:
            started = time.monotonic()
            result = client.run(JobRequest(width=512, height=512, steps=12, seed=1))
            assert time.monotonic() - started > 1.0 and result.seeds == [1]
            assert client.run(JobRequest(width=64, height=64, steps=1)).images  # still connected


# -- second pass (issue 14): bounded memory against hostile requests -----------------------------
from protocol import limits  # noqa: E402
from tests import hostile  # noqa: E402

MiB = 2**20
SLACK = 16 * MiB  # allocator noise of a busy Python process: arenas, msgpack buffers, log records


def _raw(url: str):
    ws = connect(url, max_size=None).__enter__()
    hostile.hello(ws)
    return ws


def _reply(ws, request: dict, ref: str = "r") -> dict:
    return hostile.submit(ws, request, ref)[1]


def test_prompt_sr_is_sized_before_it_is_built(server):
    # 300 KB frame: a 20,000-letter prompt, each letter replaced by 20,000 letters (400 M characters a cell before).
    out = hostile.peak_delta(server.proc.pid, lambda: hostile.prompt_sr(server.url))
    assert out.answer == "invalid_request" and out.reply["field"] == "plot.axes" and out.reply["ref"] == "r1"
    assert "at most 20000" in out.reply["message"]
    assert out.peak_delta < out.bound + SLACK, (out.peak_delta, out.bound)
    with _raw(server.url) as ws:  # a legal S/R still expands, each cell checked
        plot = {"axes": [{"name": "Prompt S/R", "values": ["cat", "dog", ""]}]}
        reply = _reply(ws, {"prompt": "a cat", "steps": 1, "width": 64, "height": 64, "plot": plot, "preview": False})
        assert reply["type"] == "accepted", reply


def test_every_produced_size_is_checked_before_queueing(server):
    img = hostile.raw_image
    refused = [
        ({"kind": "img2img", "image": img(8, 1100), "width": 64}, "width", "64x8800"),  # derived from the aspect ratio
        ({"kind": "img2img", "image": img(1, 16384, 3), "width": 8192}, "width", "8192x134217728"),
        ({"kind": "img2img", "image": img(8200, 8)}, "image", "8200"),  # width 0: the image's own size
        ({"kind": "img2img", "image": img(2000, 8), "height": 8192}, "height", "2048000x8192"),
        ({"width": 4096, "hires": {"scale": 2.5}}, "hires.scale", "10240"),
        ({"kind": "upscale", "image": img(4000, 8), "upscale": {"scale": 2.1}}, "upscale.scale", "8400"),
        # The whole result in one message: 1600 layers, or two 8192^2 images (512 MiB > 300 MiB).
        ({"kind": "img2img", "image": img(512, 512), "batch_size": 16, "batch_count": 100}, "batch_size", "MiB"),
        ({"width": 8192, "height": 8192, "batch_size": 2}, "batch_size", "MiB"),
        ({"width": 4096, "height": 4096, "plot": {"prompts": ["a"] * 8}}, "plot", "MiB"),
        # Tiles through the UNet at once: 64 tiles of 2048 px.
        ({"kind": "upscale", "image": img(64, 64), "upscale": {"tile": 256, "tile_batch": 64}}, "upscale.tile_batch",
         "tile_batch"),
    ]
    with _raw(server.url) as ws:
        for i, (request, field, text) in enumerate(refused):
            reply = _reply(ws, {"steps": 1, **request}, ref=f"s{i}")
            assert reply["type"] == "error" and reply["code"] == "invalid_request", (request.keys(), reply)
            assert reply["field"] == field and text in reply["message"] and reply["ref"] == f"s{i}", reply
        # What fits runs, at the size it said, in a message no bigger than the estimate the check used.
        fits = {"kind": "img2img", "image": img(64, 32), "width": 128, "steps": 1, "preview": False, "batch_size": 2,
                "prompt": "a cat " * 50}
        reply = _reply(ws, fits)
        assert reply["type"] == "accepted", reply
        while reply["type"] != "result":
            reply = msgpack.unpackb(ws.recv(timeout=120))
            assert reply["type"] in ("progress", "result"), reply
        assert (reply["images"][0]["width"], reply["images"][0]["height"]) == (128, 64)
        estimate = limits.result_bytes(decode(msgpack.packb({"type": "submit", "request": fits})).request, 512)
        assert len(msgpack.packb(reply)) <= estimate


def test_a_kept_result_is_its_frame_on_disk_not_pixels_in_memory(tmp_path):
    """A finished job's input layer is dropped and its result lives as the one
    frame fetch_result sends, in the state folder: nothing image-sized stays in
    the server's memory for a kept result (the durable queue, issue 17)."""
    from bridge_server.convert import to_raw
    from bridge_server.queue.records import JobRecord
    from bridge_server.queue.sqlite_store import Retention, SqliteStore
    from protocol import Result, encode

    store = SqliteStore(tmp_path, Retention())
    image = RawImage(256, 256, 4, bytes(256 * 256 * 4))
    store.insert(JobRecord("x-000001", "owner", JobRequest(kind="img2img", image=image, steps=1), seq=1))
    frame = encode(Result("x-000001", [to_raw(np.zeros((256, 256, 4), np.uint8))], [1]))
    store.finish("x-000001", "finished", frame)
    assert store.request("x-000001") is None  # the input layer is gone once the job is over
    assert store.frame("x-000001") == frame and len(frame) > 256 * 256 * 4  # the whole frame, from disk
    store.close()


def test_long_thin_inpaint_works_at_a_bounded_size():
    from engine.masks import working_size

    assert working_size(16384, 8, 512) == (2048, 64)  # was 65536 x 64
    assert working_size(512, 512, 512) == (512, 512) and working_size(300, 200, 512) == (624, 416)


def test_a_client_that_never_reads_is_disconnected_and_its_result_kept(server):
    client_id = "never-reads-0001"
    with connect(server.url, max_size=None) as ws:
        hostile.hello(ws, client_id)
        accepted = _reply(ws, {"width": 64, "height": 64, "steps": 1, "seed": 5, "preview": False})
    out = hostile.peak_delta(server.proc.pid, lambda: hostile.never_reads(server.url, frames=20_000, type_len=100))
    assert out.answer.startswith("closed"), out.answer
    assert out.peak_delta < 64 * MiB + out.bound + SLACK, out.peak_delta >> 20
    server.wait_for_log(r"disconnecting client \S+: 1024 frames")
    # An unknown type is echoed only up to 60 characters, however long it was.
    with _raw(server.url) as ws:
        ws.send(msgpack.packb({"type": "y" * 50_000}))
        reply = msgpack.unpackb(ws.recv(timeout=10))
        assert reply["code"] == "unknown_message" and len(reply["message"]) < 200
    # The job of a client that was cut off still finishes and is fetchable by id.
    with Client(server.url, client_id=client_id) as again:
        assert again.fetch(accepted["job_id"]).seeds == [5]


def test_only_small_frames_before_hello(server):
    from websockets.exceptions import ConnectionClosed

    out = hostile.peak_delta(server.proc.pid, lambda: hostile.big_frame_before_hello(server.url, 100 * MiB, 3))
    assert out.answer == "closed 1009", out.answer
    assert out.peak_delta < SLACK, out.peak_delta >> 20  # nothing of the 300 MiB was buffered
    with connect(server.url, max_size=None) as ws, pytest.raises(ConnectionClosed) as caught:
        ws.send(msgpack.packb({"type": "hello", "protocol": PROTOCOL_VERSION, "client": "x" * 70_000}))
        ws.recv(timeout=10)
    assert caught.value.rcvd.code == 1009
    with _raw(server.url) as ws:  # past hello, the full limit: a 1 MiB frame gets an answer
        reply = _reply(ws, {"prompt": "x" * (1024 * 1024)}, ref="big")
        assert reply["code"] == "invalid_request" and reply["field"] == "prompt" and reply["ref"] == "big"


def test_list_models_in_a_loop_does_not_rescan_each_time():
    from bridge_server.queue.base import EngineCatalog

    class Registry:
        scans = 0

        def scan(self):
            Registry.scans += 1

    class FakeEngine:
        registry = Registry()

    catalog = EngineCatalog(FakeEngine())
    for _ in range(1000):
        catalog.rescan()
    assert Registry.scans == 1
    catalog._last_scan -= 0.6  # half a second later: the next one scans again
    catalog.rescan()
    assert Registry.scans == 2


def test_booleans_and_integral_floats_are_not_integers(server):
    img = hostile.raw_image(8, 8)
    cases = [
        ({"kind": "img2img", "image": {**img, "channels": 4.0}}, "image.channels"),
        ({"kind": "img2img", "image": {**img, "channels": True}}, "image.channels"),
        ({"kind": "img2img", "image": {**img, "width": 8.0}}, "image.width"),
        ({"steps": 1.0}, "steps"),
        ({"batch_size": True}, "batch_size"),
        ({"hires": {"steps": 2.0}}, "hires.steps"),
        ({"upscale": {"tile": True}, "kind": "upscale", "image": img}, "upscale.tile"),
        ({"plot": {"axes": [{"name": "Steps", "values": ["1.0"]}]}}, "plot.axes[0].values"),
    ]
    with _raw(server.url) as ws:
        for i, (request, field) in enumerate(cases):
            reply = _reply(ws, request, ref=f"t{i}")
            assert (reply["code"], reply["field"], reply["ref"]) == ("invalid_request", field, f"t{i}"), reply
        ws.send(msgpack.packb({"type": "hello", "protocol": 2.0}))
        reply = msgpack.unpackb(ws.recv(timeout=10))
        assert (reply["code"], reply["field"]) == ("invalid_request", "protocol")
        ws.send(msgpack.packb({"type": "hello", "protocol": 2}))
        assert msgpack.unpackb(ws.recv(timeout=10))["code"] == "bad_message"  # a second hello; the session goes on


def test_origin_and_host_are_parsed_strictly(server, demo_models):
    port = server.port
    assert hostile.http_handshake(port, f"127.0.0.1:{port}") == "101"
    assert hostile.http_handshake(port, f"127.0.0.1:{port}", "http://localhost:3000") == "101"
    for host, origin in [
        (f"127.0.0.1:{port}", "http://evil.com@127.0.0.1"),  # user info: a lenient parser sees 127.0.0.1
        (f"127.0.0.1:{port}", "http://127.0.0.1:abc"),
        (f"127.0.0.1:{port}", "http://127.0.0.1/x"),
        (f"127.0.0.1:{port}", "null"),
        (f"127.0.0.1:{port}", "uxp://com.example.plugin"),
        ("127.0.0.1:abc", None),
        ("127.0.0.1:99999", None),
        ("evil.com@127.0.0.1", None),
        ("evil.example", None),
    ]:
        assert hostile.http_handshake(port, host, origin) == "403", (host, origin)
    allowing = ServerProcess("--demo", "--no-preload", "--allow-origin", "uxp://com.example.plugin")
    try:
        assert hostile.http_handshake(allowing.port, f"127.0.0.1:{allowing.port}", "uxp://com.example.plugin") == "101"
        assert hostile.http_handshake(allowing.port, f"127.0.0.1:{allowing.port}", "uxp://com.example.other") == "403"
    finally:
        allowing.stop()


def _evil_models(root, sentinel):
    import shutil

    import torch

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    def evil(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            torch.save({"w": Evil()}, f, pickle_protocol=2)

    from engine.demo.builder import demo_models_dir

    demo = demo_models_dir()
    shutil.copytree(demo / "Stable-diffusion", root / "Stable-diffusion")
    evil(root / "Lora" / "evil.pt")
    evil(root / "VAE" / "evil.pt")
    evil(root / "embeddings" / "evilword.pt")
    folder = root / "Stable-diffusion" / "a-evil-diffusers"  # first by name: the old default
    shutil.copytree(demo / "Stable-diffusion" / "paintbridge-demo.config", folder)
    for sub, name in (("unet", "diffusion_pytorch_model.bin"), ("vae", "diffusion_pytorch_model.bin"),
                      ("text_encoder", "pytorch_model.bin")):
        evil(folder / sub / name)


def test_refused_pickles_everywhere_are_unsafe_file_and_the_default_loads(tmp_path):
    sentinel = tmp_path / "pwned"
    _evil_models(tmp_path / "models", sentinel)
    proc = ServerProcess("--models", str(tmp_path / "models"))
    try:
        proc.wait_for_log(r"loaded paintbridge-demo", timeout=180)
        assert re.search(r"default checkpoint a-evil-diffusers does not load \(unsafe_file", proc.log())
        with Client(proc.url) as client:
            assert client.welcome.capabilities.default_model == "paintbridge-demo"
            small = {"width": 64, "height": 64, "steps": 1, "model": "paintbridge-demo"}
            for request, field in [
                (JobRequest(**{**small, "prompt": "<lora:evil:1>"}), "prompt"),
                (JobRequest(**{**small, "vae": "evil"}), "vae"),
                (JobRequest(**{**small, "prompt": "evilword"}), "prompt"),
                (JobRequest(**{**small, "model": "a-evil-diffusers"}), "model"),
            ]:
                with pytest.raises(ClientError) as caught:
                    client.run(request)
                assert caught.value.code == "unsafe_file", (request, caught.value)
                assert "pickled code" in caught.value.message and caught.value.field in (field, "")
            assert client.run(JobRequest(width=64, height=64, steps=1)).images  # the default: the one that loads
    finally:
        proc.stop()
    assert not sentinel.exists()
