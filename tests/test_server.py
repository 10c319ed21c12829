"""The real server as a subprocess on a free port, driven by the CLI and client."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from protocol import PROTOCOL_VERSION, Error, Hello, JobRequest, Progress, Welcome, decode, encode
from protocol.shell.client import Client, ClientError
from tests.conftest import ServerProcess, run_cli

pytestmark = pytest.mark.slow


def test_cli_generate_img2img_inpaint_models_result(server, tmp_path):
    out = tmp_path / "gen.png"
    done = run_cli("generate", "--server", server.url, "--prompt", "a cat", "--steps", "3", "--seed", "11",
                   "--width", "128", "--height", "96", "--sampler", "DPM++ 2M Karras", "--exact-size", "--out", str(out))
    assert done.returncode == 0, done.stderr
    job_id = done.stderr.split("job ", 1)[1].split()[0]
    assert "3/3" in done.stderr
    image = Image.open(out)
    assert image.size == (128, 96)
    assert "Seed: 11" in image.info["parameters"] and "Sampler: DPM++ 2M Karras" in image.info["parameters"]

    again = run_cli("result", "--server", server.url, "--job", job_id, "--out", str(tmp_path / "again.png"))
    assert again.returncode == 0, again.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), np.asarray(image))

    refined = run_cli("img2img", "--server", server.url, "--image", str(out), "--strength", "0.5", "--steps", "4",
                      "--exact-size", "--out", str(tmp_path / "refined.png"))
    assert refined.returncode == 0, refined.stderr
    assert Image.open(tmp_path / "refined.png").size == (128, 96)

    mask = np.zeros((96, 128), np.uint8)
    mask[20:60, 30:90] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    painted = run_cli("inpaint", "--server", server.url, "--image", str(out), "--mask", str(tmp_path / "mask.png"),
                      "--steps", "3", "--strength", "1", "--exact-size", "--out", str(tmp_path / "inpaint.png"))
    assert painted.returncode == 0, painted.stderr
    before, after = np.asarray(image.convert("RGBA")), np.asarray(Image.open(tmp_path / "inpaint.png").convert("RGBA"))
    assert np.array_equal(after[mask == 0], before[mask == 0])
    assert not np.array_equal(after[mask == 255], before[mask == 255])

    listing = run_cli("models", "--server", server.url)
    assert listing.returncode == 0 and "paintbridge-demo" in listing.stdout and "sd15" in listing.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--sampler", "Nope"], "unknown sampler 'Nope'"),
        (["--steps", "0"], "--steps"),
        (["--cfg", "nan"], "--cfg"),
        (["--width", "100"], "--width"),
        (["--model", "../../x"], "not a plain name"),
    ],
)
def test_cli_errors_are_one_line(server, tmp_path, args, needle):
    done = run_cli("generate", "--server", server.url, *args, "--out", str(tmp_path / "x.png"))
    assert done.returncode == 1
    assert needle in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "x.png").exists()


def test_cli_no_server(tmp_path):
    done = run_cli("generate", "--server", "ws://127.0.0.1:9", "--out", str(tmp_path / "x.png"))
    assert done.returncode == 1 and "paintbridge serve" in done.stderr and "[unreachable]" in done.stderr


def test_cancel_a_running_job_within_a_step(server):
    with Client(server.url) as client:
        accepted = client.submit(JobRequest(width=512, height=512, steps=150, seed=1))
        steps = []

        def on_progress(p: Progress) -> None:
            steps.append(p.step)
            if len(steps) == 1:
                client.cancel(accepted.job_id)

        with pytest.raises(ClientError) as caught:
            client.follow(accepted.job_id, on_progress)
        assert caught.value.code == "cancelled"
        assert max(steps) <= 3  # stopped within a step or two, not 150
        # cancel after the end, and of an unknown id: clean answers
        assert client.status(accepted.job_id).type == "cancelled"
        client.cancel(accepted.job_id)
        with pytest.raises(ClientError) as caught:
            client.status("nope")
        assert caught.value.code == "not_found"
        # the server goes on
        assert client.run(JobRequest(width=64, height=64, steps=2)).images


def test_cancel_a_queued_job(server):
    with Client(server.url) as client:
        first = client.submit(JobRequest(width=512, height=512, steps=30))
        second = client.submit(JobRequest(width=64, height=64, steps=2))
        assert second.position >= 1
        client.cancel(second.job_id)
        client.cancel(first.job_id)
        for job in (second, first):
            with pytest.raises(ClientError) as caught:
                client.follow(job.job_id)
            assert caught.value.code == "cancelled"


def test_disconnect_mid_job_then_fetch_by_id(server):
    client = Client(server.url)
    client.connect()
    accepted = client.submit(JobRequest(width=256, height=256, steps=12, seed=77))
    client.follow  # noqa: B018 - first progress, then vanish
    while not isinstance(client._recv(), Progress):
        pass
    client.close()

    other = Client(server.url)  # another client id cannot see it
    with other, pytest.raises(ClientError) as caught:
        other.fetch(accepted.job_id)
    assert caught.value.code == "not_found"

    again = Client(server.url, client_id=client.client_id)
    with again:
        result = again.fetch(accepted.job_id)
    assert result.seeds == [77] and result.images[0].width == 256


def test_two_clients_fifo_and_isolated_progress(server):
    a, b = Client(server.url), Client(server.url)
    with a, b:
        job_a = a.submit(JobRequest(width=128, height=128, steps=6, seed=1))
        job_b = b.submit(JobRequest(width=64, height=64, steps=2, seed=2))
        seen_a = []
        a.follow(job_a.job_id, lambda p: seen_a.append(p.job_id))
        b_messages = []
        result_b = b.follow(job_b.job_id, lambda p: b_messages.append(p.job_id))
        assert set(seen_a) == {job_a.job_id} and set(b_messages) <= {job_b.job_id}
        assert result_b.seeds == [2]
        assert job_a.job_id < job_b.job_id  # ids are issued in order


def test_malformed_frames_get_typed_errors_and_the_connection_goes_on(server):
    with connect(server.url) as ws:
        ws.send(encode(Hello(protocol=PROTOCOL_VERSION)))
        assert isinstance(decode(ws.recv()), Welcome)
        for raw in (b"\xc1", msgpack.packb({"type": "submit", "request": {"steps": 0}}), msgpack.packb({"type": "x"})):
            ws.send(raw)
            reply = decode(ws.recv())
            assert isinstance(reply, Error) and reply.code in ("bad_message", "invalid_request", "unknown_message")
        ws.send("text frame")
        assert decode(ws.recv()).code == "bad_message"
        ws.send(msgpack.packb({"type": "list_models"}))
        assert decode(ws.recv()).type == "models"


def test_hello_required_and_version_mismatch(server):
    with connect(server.url) as ws:
        ws.send(msgpack.packb({"type": "list_models"}))
        assert decode(ws.recv()).code == "hello_required"
    with connect(server.url) as ws:
        ws.send(encode(Hello(protocol=PROTOCOL_VERSION + 1)))
        reply = decode(ws.recv())
        assert reply.code == "version_mismatch" and str(PROTOCOL_VERSION) in reply.message


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost.evil.example"])
def test_browser_origins_are_refused(server, origin):
    with pytest.raises(InvalidStatus) as caught:
        connect(server.url, additional_headers={"Origin": origin})
    assert caught.value.response.status_code == 403


def test_loopback_origin_and_no_origin_are_allowed(server):
    with connect(server.url, additional_headers={"Origin": "http://localhost:3000"}) as ws:
        ws.send(encode(Hello(protocol=PROTOCOL_VERSION)))
        assert isinstance(decode(ws.recv()), Welcome)


def test_foreign_host_header_is_refused(server):
    # DNS rebinding: a hostile name resolving to 127.0.0.1
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("GET", "/", skip_host=True)
    for name, value in {
        "Host": f"rebind.evil.example:{server.port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }.items():
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 403 and b"Host" in response.read()


def test_token_is_required_when_set(demo_models):
    proc = ServerProcess("--demo", "--token", "s3cret", "--no-preload")
    try:
        with pytest.raises(ClientError) as caught:
            Client(proc.url).connect()
        assert caught.value.code == "unauthorized"
        with pytest.raises(ClientError):
            Client(proc.url, token="wrong").connect()
        with Client(proc.url, token="s3cret") as client:
            assert client.welcome.capabilities.default_model == "paintbridge-demo"
    finally:
        proc.stop()


def test_pings_flow_during_a_long_job(server):
    with Client(server.url) as client:
        accepted = client.submit(JobRequest(width=512, height=512, steps=25))
        started = time.monotonic()
        latency = client._ws.ping().wait(5)  # answered by the event loop mid-job
        assert latency is True and time.monotonic() - started < 5
        client.follow(accepted.job_id)


def test_cli_upscale_and_hires(server, tmp_path):
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(source)
    done = run_cli("upscale", "--server", server.url, "--image", str(source), "--scale", "1.5", "--denoise", "0",
                   "--out", str(tmp_path / "up.png"))
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "up.png").size == (90, 60)
    assert "Upscaler: paintbridge-demo-x4" in Image.open(tmp_path / "up.png").info["parameters"]
    done = run_cli("upscale", "--server", server.url, "--image", str(source), "--scale", "2", "--denoise", "0.3",
                   "--steps", "6", "--tile", "16", "--overlap", "4", "--out", str(tmp_path / "up2.png"))
    assert done.returncode == 0, done.stderr
    assert "tiled diffusion" in done.stderr and "tiles" in done.stderr
    assert Image.open(tmp_path / "up2.png").size == (120, 80)
    done = run_cli("generate", "--server", server.url, "--width", "64", "--height", "64", "--steps", "2",
                   "--hires-scale", "2", "--hires-upscaler", "Lanczos", "--out", str(tmp_path / "h.png"))
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "h.png").size == (128, 128) and "hires" in done.stderr


def test_generate_from_png_reproduces_the_pixels(server, tmp_path):
    first = tmp_path / "first.png"
    done = run_cli("generate", "--server", server.url, "--prompt", "a (red:1.2) fox, BREAK snow", "--negative", "blur",
                   "--steps", "3", "--width", "96", "--height", "64", "--sampler", "DPM++ 2M", "--cfg", "5.5",
                   "--clip-skip", "2", "--exact-size", "--out", str(first))
    assert done.returncode == 0, done.stderr
    again = tmp_path / "again.png"
    done = run_cli("generate", "--server", server.url, "--from-png", str(first), "--out", str(again))
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    assert Image.open(again).info["parameters"] == Image.open(first).info["parameters"]
    override = run_cli("generate", "--server", server.url, "--from-png", str(first), "--seed", "5",
                       "--out", str(tmp_path / "other.png"))
    assert override.returncode == 0 and "Seed: 5," in Image.open(tmp_path / "other.png").info["parameters"]


def test_infotext_round_trip():
    from engine.jobs import infotext
    from protocol.infotext import parse_infotext

    text = infotext({"kind": "txt2img", "prompt": "a cat,\nsecond line", "negative_prompt": "bad", "steps": 20,
                     "sampler": "Euler a", "cfg_scale": 7.0, "seed": 42, "width": 512, "height": 768,
                     "model": "folder/a, b", "clip_skip": 2})
    fields = parse_infotext(text)
    assert fields["Prompt"] == "a cat,\nsecond line" and fields["Negative prompt"] == "bad"
    assert fields["Model"] == "folder/a, b" and fields["Size"] == "512x768" and fields["Clip skip"] == "2"


def test_xyz_plot_prompt_matrix_and_prompts_file(server, tmp_path):
    out = tmp_path / "xyz.png"
    done = run_cli("generate", "--server", server.url, "--prompt", "a cat", "--width", "64", "--height", "64",
                   "--seed", "3", "--xyz", "Steps=1,2,3", "CFG scale=4,8", "--exact-size", "--out", str(out))
    assert done.returncode == 0, done.stderr
    grid = Image.open(out)
    assert grid.width > 3 * 64 and grid.height > 2 * 64 and len(list(tmp_path.glob("xyz-*.png"))) == 6
    assert grid.mode == "RGB" and "Seed: 3" in grid.info["parameters"]  # the grid carries the plot's infotext
    assert "Steps: 3" in Image.open(tmp_path / "xyz-006.png").info["parameters"]
    assert "CFG scale: 8" in Image.open(tmp_path / "xyz-006.png").info["parameters"]
    done = run_cli("generate", "--server", server.url, "--prompt", "a cat|red|hat", "--width", "64", "--height", "64",
                   "--steps", "1", "--prompt-matrix", "--exact-size", "--out", str(tmp_path / "m.png"))
    assert done.returncode == 0, done.stderr
    assert len(list(tmp_path.glob("m-*.png"))) == 4
    assert Image.open(tmp_path / "m-004.png").info["parameters"].startswith("a cat, red, hat")
    (tmp_path / "prompts.txt").write_text("a fox\n# a comment\n\na dog\n")
    done = run_cli("generate", "--server", server.url, "--prompts-from-file", str(tmp_path / "prompts.txt"),
                   "--width", "64", "--height", "64", "--steps", "1", "--exact-size", "--out", str(tmp_path / "p.png"))
    assert done.returncode == 0 and len(list(tmp_path.glob("p-*.png"))) == 2
    bad = run_cli("generate", "--server", server.url, "--xyz", "Steps=1,999", "--out", str(tmp_path / "b.png"))
    assert bad.returncode == 1 and "Steps: 999" in bad.stderr and "1..150" in bad.stderr


def test_a_plot_is_one_job_with_labelled_images(server):
    from protocol.plots import Plot, PlotAxis

    plot = Plot(axes=[PlotAxis("Sampler", ["Euler", "DPM fast"]), PlotAxis("Steps", ["1", "2"])])
    progress = []
    with Client(server.url) as client:
        result = client.run(JobRequest(prompt="a cat", width=64, height=64, seed=5, batch_size=2, plot=plot),
                            on_progress=progress.append)
    assert len(result.images) == 8 and result.seeds == [5, 6] * 4  # one seed for all cells, as the WebUI
    assert result.labels[0] == ["Sampler: Euler", "Steps: 1"] and result.labels[1] == result.labels[0]
    assert result.labels[2] == ["Sampler: DPM fast", "Steps: 1"]  # X varies fastest
    assert result.labels[6] == ["Sampler: DPM fast", "Steps: 2"]
    assert "Sampler: DPM fast" in result.infotexts[2] and "Steps: 2" in result.infotexts[6]
    assert "Seed: 6," in result.infotexts[3]
    assert {(p.cell, p.cells) for p in progress} == {(1, 4), (2, 4), (3, 4), (4, 4)}
    # At 2 steps the samplers differ (at 1 step DPM fast is one Euler step, as k-diffusion makes it).
    first, second = (np.frombuffer(result.images[i].data, np.uint8) for i in (4, 6))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize(
    ("plot", "field", "words"),
    [
        ({"axes": [{"name": "Colour", "values": ["red"]}]}, "plot.axes", "unknown axis"),
        ({"axes": [{"name": "Steps", "values": ["1", "x"]}]}, "plot.axes[0].values", "int"),
        ({"axes": [{"name": "Steps", "values": ["1", "999"]}]}, "steps", "Steps: 999"),
        ({"axes": [{"name": "Sampler", "values": ["Euler", "Eular"]}]}, "sampler", "unknown sampler"),
        ({"prompt_matrix": True}, "prompt", "|"),
        ({"axes": [{"name": "Seed", "values": [str(i) for i in range(11)]}] * 2}, "plot", "at most 100"),
        ({"prompt_matrix": True, "prompts": ["a"]}, "plot", "exactly one"),
    ],
)
def test_bad_plots_are_refused_before_queueing(server, plot, field, words):
    with connect(server.url) as ws:
        ws.send(encode(Hello(protocol=PROTOCOL_VERSION)))
        assert isinstance(decode(ws.recv()), Welcome)
        wire = {"type": "submit", "ref": "r", "request": {"prompt": "a cat", "width": 64, "height": 64, "plot": plot}}
        ws.send(msgpack.packb(wire))
        reply = decode(ws.recv())
    assert isinstance(reply, Error) and reply.code in ("invalid_request", "unknown_sampler"), reply
    assert reply.field == field and words in reply.message, reply


def test_serve_refuses_an_unknown_default_vae():
    done = run_cli("serve", "--demo", "--port", "0", "--vae", "nope")
    assert done.returncode != 0 and "--vae: no VAE named 'nope'" in done.stderr


def test_ctrl_c_cancels_the_job_on_the_server_and_ends_the_line(server, tmp_path):
    """Ctrl-C once the job is running (its progress bar drawn, far from its
    last step): the CLI cancels it on the server, ends the bar's line, exits 130.
    The signal waits for the bar instead of a fixed sleep: on a loaded machine a
    sleep may end before the job starts or after it has finished."""
    import os
    import re
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    # A test run started in the background by a shell without job control inherits SIGINT ignored, and
    # Python then leaves it ignored (no KeyboardInterrupt): the CLI gets the default a terminal gives it.
    cli = subprocess.Popen(
        [sys.executable, "-m", "bridge_server", "generate", "--server", server.url, "--steps", "150", "--exact-size",
         "--width", "512", "--height", "512", "--out", str(tmp_path / "x.png")],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert cli.stderr is not None
    line = cli.stderr.readline()
    assert line.startswith("job "), line
    job = line.split()[1]
    drawn = ""  # the bar is redrawn in place ("\r...", no newline): read it a character at a time
    while not re.search(r"\] ([1-9]\d*)/150 ", drawn):  # a denoising step done, 150 to go at most
        char = cli.stderr.read(1)
        assert char, f"the CLI ended before the job ran a step: {drawn!r}"
        drawn += char
    cli.send_signal(signal.SIGINT)
    err = cli.stderr.read()
    assert cli.wait(30) == 130, drawn + err
    assert f"\npaintbridge: interrupted; cancelled job {job} on the server" in err  # on a line of its own
    assert not (tmp_path / "x.png").exists()
    done = run_cli("cancel", "--server", server.url, "--job", job)
    # Ended cancelled on the server: already, or (a 512x512 step on a loaded machine takes seconds)
    # while this second cancel waited for the step in progress to stop.
    assert done.stdout.strip() in (f"job {job}: not cancelled: the job is already cancelled", f"job {job}: cancelled"), \
        done.stdout + done.stderr


def test_cancel_and_a_mistyped_job_id_say_what_happened(server, tmp_path):
    for typo in ("banana", "3fa2c1-00004x", "3fa2c1-12"):  # only a well-formed id of another queue reads as lost
        done = run_cli("cancel", "--server", server.url, "--job", typo)
        assert done.returncode == 1 and f"no job '{typo}'" in done.stderr and "restarted" not in done.stderr
    done = run_cli("cancel", "--server", server.url, "--job", "3fa2c1-000004")
    assert done.returncode == 1 and "[job_lost]" in done.stderr
