"""Protocol 3 on the wire: pixel payloads as their own websocket messages
(protocol/oob.py), protocol-2 clients still served, the limits enforced on
announced payloads, and the embedded store keeping pixels out of SQLite."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bridge_server.queue.records import FINISHED, JobRecord
from bridge_server.queue.sqlite_store import Retention, SqliteStore
from protocol import Error, Hello, JobRequest, ProtocolError, RawImage, Result, Submit, Welcome, decode, encode, oob
from protocol.codec import decode_wire, encode_parts
from protocol.shell.client import Client
from protocol.version import PROTOCOL_VERSION
from tests.conftest import running_server


def _image(side: int, channels: int = 4, seed: int = 0) -> RawImage:
    data = np.random.default_rng(seed).integers(0, 256, side * side * channels, np.uint8).tobytes()
    return RawImage(side, side, channels, data)


def _ext(length: int) -> msgpack.ExtType:
    return msgpack.ExtType(oob.EXT_PAYLOAD, struct.pack("!Q", length))


# -- the codec, no sockets ---------------------------------------------------------------
def test_big_bins_leave_the_head_and_come_back_in_order():
    image, mask = _image(64), _image(64, 1, seed=1)
    submit = Submit(request=JobRequest(kind="inpaint", image=image, mask=mask, prompt="x"), ref="r1")
    head, *payloads = encode_parts(submit)
    assert len(head) < 1024 and [len(p) for p in payloads] == [64 * 64 * 4, 64 * 64]
    assert payloads[0] == image.data and payloads[1] == mask.data  # the caller's own buffers: not copied
    wire, slots = oob.read_head(head, 1 << 30)
    assert [s.length for s in slots] == [64 * 64 * 4, 64 * 64]
    assert decode_wire(oob.attach(wire, [bytes(p) for p in payloads])) == submit
    # The one-buffer form (the queue's) unpacks to the same parts, and to protocol 2's frame.
    packed = oob.pack(oob.Parts([head, *payloads]))
    assert oob.is_envelope(packed) and [bytes(p) for p in oob.unpack(packed)] == [head, *payloads]
    assert decode(oob.to_plain(packed)) == submit == decode(encode(submit))
    with pytest.raises(ProtocolError) as refused:  # an envelope is never mistaken for a protocol-2 frame
        decode(packed)
    assert refused.value.code.value == "bad_message"


def test_small_bins_and_messages_without_pixels_stay_plain_msgpack():
    small = RawImage(8, 8, 4, bytes(256))
    parts = encode_parts(Submit(request=JobRequest(kind="img2img", image=small), ref="r"))
    assert len(parts) == 1 and decode(parts[0]).request.image == small
    assert oob.pack(encode_parts(Hello(protocol=3))) == encode(Hello(protocol=3))


def test_announcements_are_checked_before_anything_arrives():
    head = msgpack.packb({"type": "submit", "a": _ext(2**60)})
    with pytest.raises(oob.OutOfStep) as too_big:
        oob.read_head(head, 300 * 2**20)
    assert too_big.value.code.value == "too_large"
    many = msgpack.packb({"type": "submit", "a": [_ext(1)] * (oob.MAX_PAYLOADS + 1)})
    with pytest.raises(oob.OutOfStep):
        oob.read_head(many, 1 << 30)
    _, slots = oob.read_head(msgpack.packb({"a": _ext(10)}), 100)
    for wrong in (b"x" * 9, b"x" * 11, "ten chars!"):
        with pytest.raises(oob.OutOfStep):
            oob.check_payload(slots[0], wrong)
    # An unknown extension announces nothing: an ordinary bad message, the stream is still in step.
    with pytest.raises(ProtocolError) as unknown:
        oob.read_head(msgpack.packb({"a": msgpack.ExtType(7, b"12345678")}), 100)
    assert not isinstance(unknown.value, oob.OutOfStep)
    # An envelope that is longer or shorter than its head says.
    parts = [msgpack.packb({"a": _ext(4)}), b"abcd"]
    for bad in (oob.pack(parts) + b"!", oob.pack(parts)[:-1]):
        with pytest.raises(ProtocolError):
            oob.unpack(bad)


# -- the live server ---------------------------------------------------------------------
@pytest.fixture()
def live(engine, tmp_path):
    with running_server(engine, tmp_path, max_message_bytes=8 * 2**20) as (server, url):
        yield server, url


def _hello(ws, protocol: int) -> Welcome:
    ws.send(encode(Hello(protocol=protocol)))
    welcome = decode(ws.recv(timeout=10))
    assert isinstance(welcome, Welcome) and welcome.protocol == protocol
    return welcome


def _echo(image: RawImage) -> JobRequest:
    return JobRequest(kind="img2img", image=image, strength=0.0, steps=1, preview=False)  # strength 0: the layer back


def test_protocol3_round_trip_of_pixel_payloads_as_separate_messages(live):
    _, url = live
    image = _image(512)
    with connect(url, max_size=None) as ws:
        _hello(ws, 3)
        head, payload = encode_parts(Submit(request=_echo(image), ref="a"))
        ws.send(head)
        ws.send(oob.fragments(payload, 64 * 1024))  # fragmented, as the client sends it
        assert decode(ws.recv(timeout=30)).type == "accepted"
        result_head = ws.recv(timeout=60)
        wire, slots = oob.read_head(result_head, 1 << 30)
        assert wire["type"] == "result" and [s.length for s in slots] == [512 * 512 * 4]
        pixels = ws.recv(timeout=30)  # its own binary message, exactly the announced bytes
        assert isinstance(pixels, bytes) and pixels == image.data
    with Client(url) as client:  # the shared client speaks 3 by itself
        assert client.welcome.protocol == PROTOCOL_VERSION == 3
        result = client.run(_echo(image))
        assert isinstance(result.images[0].data, bytes) and result.images[0].data == image.data


def test_a_protocol2_client_is_still_served_with_one_frame_per_message(live):
    _, url = live
    image = _image(256)
    with connect(url, max_size=None) as ws:
        ws.send(encode(Hello(protocol=2, client_id="painter")))
        assert decode(ws.recv(timeout=10)).protocol == 2
        ws.send(encode(Submit(request=_echo(image), ref="b")))
        assert decode(ws.recv(timeout=30)).type == "accepted"
        result = decode(ws.recv(timeout=60))  # the whole result, pixels inside the msgpack map
        assert isinstance(result, Result) and result.images[0].data == image.data
        job_id = result.job_id
    with Client(url, protocol=2, client_id="painter") as old:
        assert old.welcome.protocol == 2 and old.run(_echo(image)).images[0].data == image.data
        # The stored result (kept in the queue's out-of-band form) fetched by id in either protocol.
        assert old.fetch(job_id).images[0].data == image.data
    with Client(url, client_id="painter") as new:
        assert new.protocol == 3 and new.fetch(job_id).images[0].data == image.data


def test_hostile_announcements_close_the_connection_without_allocating(live):
    _, url = live
    cases = [
        ({"type": "submit", "ref": "x", "request": {"kind": "img2img", "image": {
            "width": 4096, "height": 4096, "channels": 4, "data": _ext(2**62)}}}, "too_large", 1009),
        ({"type": "submit", "request": {"prompt": [_ext(1)] * (oob.MAX_PAYLOADS + 1)}}, "bad_message", 1008),
    ]
    for wire, code, close in cases:
        with connect(url, max_size=None) as ws:
            _hello(ws, 3)
            ws.send(msgpack.packb(wire, use_bin_type=True))  # announced; nothing follows, nothing allocated
            reply = decode(ws.recv(timeout=10))
            assert isinstance(reply, Error) and reply.code == code
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == close
    # A payload of another length than announced, and a text payload: out of step, closed.
    for payload in (b"\0" * 100, "text"):
        with connect(url, max_size=None) as ws:
            _hello(ws, 3)
            ws.send(msgpack.packb({"type": "submit", "ref": "y", "request": {"kind": "img2img", "image": {
                "width": 8, "height": 8, "channels": 4, "data": _ext(256)}}}, use_bin_type=True))
            ws.send(payload)
            reply = decode(ws.recv(timeout=10))
            assert isinstance(reply, Error) and reply.code == "bad_message" and "payload" in reply.message
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
    # The message limit holds for payloads as it did for one frame: 8 MiB here.
    with Client(url) as client, pytest.raises(Exception) as big:
        client.run(_echo(_image(2048)))  # 16 MiB
    assert "too_large" in str(big.value) or "limit" in str(big.value)
    with Client(url) as client:  # and the server goes on
        assert client.run(_echo(_image(64))).images[0].data == _image(64).data


def test_a_new_client_falls_back_to_protocol2_with_an_older_server(live, monkeypatch):
    import bridge_server.server as server_module

    _, url = live
    monkeypatch.setattr(server_module, "SUPPORTED_PROTOCOLS", (2,))  # the server as it was before protocol 3
    with Client(url) as client:
        assert client.protocol == 2 and client.welcome.protocol == 2
        image = _image(128)
        assert client.run(_echo(image)).images[0].data == image.data


# -- the embedded store ----------------------------------------------------------------------
def test_the_store_keeps_pixels_out_of_sqlite_and_restores_them(tmp_path):
    store = SqliteStore(tmp_path, Retention())
    image, mask = _image(256), _image(256, 1, seed=2)
    request = JobRequest(kind="inpaint", image=image, mask=mask, prompt="cat", seed=5)
    record = JobRecord(f"{store.queue_id}-000001", "me", request, 1)
    store.insert(record)
    (row,) = store.db.execute("SELECT length(request) FROM jobs").fetchone()
    assert row < 2048  # the head; the 320 KiB of pixels are in requests/<id>.pixels
    assert (tmp_path / "requests" / f"{record.id}.pixels").stat().st_size == 256 * 256 * 5
    store.close()
    again = SqliteStore(tmp_path, Retention())  # a restart
    (restored,) = again.unfinished()
    assert restored.request == request
    again.finish(record.id, FINISHED, oob.Parts(encode_parts(Result(record.id, images=[image], seeds=[5]))))
    assert not list((tmp_path / "requests").iterdir())  # the pixels go when the job is over
    assert decode(oob.to_plain(again.frame(record.id))).images[0].data == image.data
    second = JobRecord(f"{again.queue_id}-000002", "me", request, 2)
    again.insert(second)
    again.close()
    pixels = tmp_path / "requests" / f"{second.id}.pixels"
    pixels.write_bytes(pixels.read_bytes()[:1000])  # the machine stopped before the file reached the disk
    third = SqliteStore(tmp_path, Retention())
    assert third.unfinished() == []
    lost = decode(third.frame(second.id))
    assert isinstance(lost, Error) and lost.code == "job_lost"
    third.close()
