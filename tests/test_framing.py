"""protocol/shell/framing.py: big client frames without websockets' pure-Python XOR."""

from __future__ import annotations

import os
import threading

import pytest
import websockets.frames
import websockets.utils
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect
from websockets.sync.server import serve

from protocol.shell import framing

OP_BINARY = Opcode.BINARY


@pytest.mark.parametrize("length", [0, 1, 5, 4096, 262_147, 600_001])
def test_xor_mask_is_rfc_6455_masking(length):
    data = os.urandom(length)
    key = os.urandom(4)
    pieces = framing.masked_chunks(data, key, chunk=65_536)
    assert b"".join(pieces) == websockets.utils.apply_mask(data, key)
    assert all(len(p) <= 65_536 for p in pieces)


@pytest.mark.parametrize("length", [10, 125, 126, 65_535, 65_536, 200_000])
def test_header_is_the_one_websockets_writes(length, monkeypatch):
    key = b"\x01\x02\x03\x04"
    monkeypatch.setattr(websockets.frames.secrets, "token_bytes", lambda n: key)
    data = bytes(length)
    serialized = Frame(OP_BINARY, data).serialize(mask=True, extensions=[])
    ours = framing.header(OP_BINARY.value, True, 0, length, key)
    assert serialized[: len(ours)] == ours


@pytest.fixture
def echo_server():
    """A websockets server (the same library's strict frame parser) that answers each message's length and hash."""
    import hashlib

    def handler(ws):
        for message in ws:
            ws.send(f"{len(message)} {hashlib.sha256(message).hexdigest()}")

    with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        server.shutdown()


@pytest.mark.parametrize("zero_key", [True, False])
def test_big_frames_arrive_intact(echo_server, zero_key):
    import hashlib

    cls = framing.connection_class()
    payload = os.urandom(3 << 20)

    class Forced(cls):
        def __init__(self, socket, protocol, **kwargs):
            super().__init__(socket, protocol, **kwargs)
            framing.install(protocol, zero_key=zero_key)  # outermost hook wins

    with connect(echo_server, max_size=None, compression=None, create_connection=Forced) as ws:
        assert ws.zero_mask  # the server is on 127.0.0.1
        for message in (payload, b"small", bytearray(payload[:100_000])):
            ws.send(message)
            assert ws.recv() == f"{len(message)} {hashlib.sha256(message).hexdigest()}"


def test_local_zero_key_sends_the_payload_without_copying_it(echo_server):
    payload = os.urandom(1 << 20)
    with connect(echo_server, max_size=None, compression=None, create_connection=framing.connection_class()) as ws:
        writes = []
        send_data = ws.send_data

        def spy():
            writes.extend(ws.protocol.writes)
            send_data()

        ws.send_data = spy
        ws.send(payload)
        ws.recv()
    assert any(w is payload for w in writes)  # handed to sendall as it is: no XOR pass, no copy
    assert writes[0][1] & 0x80 and writes[0][-4:] == framing.ZERO_KEY  # still a masked frame (MASK bit, key)


def test_the_client_uses_it(server):
    from protocol.shell.client import Client

    with Client(server.url) as client:
        assert getattr(client._ws, "zero_mask", False)
