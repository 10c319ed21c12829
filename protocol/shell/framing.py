"""Client frames without a big pure-Python XOR: how large images leave the client.

RFC 6455 (section 5.3) makes a client mask every frame it sends: the payload
is XORed with a 4-byte key. The Krita plugin carries `websockets` without its
C speed-ups (Krita's Python has no compiler or pip), and the pure-Python
fallback (`websockets.utils.apply_mask`) XORs the whole message as one big
integer: 0.8-2 s for a 64 MiB 4096x4096 RGBA layer, in a handful of C calls
that each hold the GIL the whole time, so Krita's UI thread stalls with it.

Two ways round it, chosen per connection by where the server is:

- A server on a loopback address gets the **zero masking key**. XOR with
  zeros is the identity, so the payload goes out as it is (no copy, no
  pass over the bytes) and the frame is still a legal masked frame: the MASK
  bit is set and the key field is present. Masking exists to stop
  attacker-chosen bytes (a browser page's script) from reading as HTTP to a
  caching proxy between client and server (RFC 6455 section 10.3); a native
  client talking to a server on the same machine has no proxy in between
  and sends no attacker-framed bytes, so an unpredictable key protects
  nothing there. (The WebSocket RFC's own "MUST be unpredictable" is about
  that proxy threat.)
- Any other server gets a random key, as the RFC asks, applied with
  `bytes.translate` in 256 KiB chunks: each of the four key bytes is a
  256-entry table over one stride of the chunk. Every step is one C call on
  at most a 256 KiB chunk, so the GIL is released between them (a UI thread
  waits at most about a millisecond) instead of for the whole message.

Small frames (control frames, ordinary messages) go through websockets'
own code unchanged. The hook is one method on the sans-I/O protocol object
(`send_frame`), installed by `ClientConnection` subclass below; everything
else (handshake, reading, closing) is websockets' own.
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
from typing import Any

BIG_FRAME = 64 * 1024  # smaller frames: websockets' own serialisation
CHUNK = 1 << 18  # bytes XORed per C call on the remote path (a multiple of 4: the key's phase stays put)
ZERO_KEY = b"\x00\x00\x00\x00"
_TABLES: dict[int, bytes] = {}


def _table(key_byte: int) -> bytes:
    if key_byte not in _TABLES:
        _TABLES[key_byte] = bytes(i ^ key_byte for i in range(256))
    return _TABLES[key_byte]


def masked_chunks(data: Any, key: bytes, chunk: int = CHUNK) -> list[bytes]:
    """`data` XOR the repeated 4-byte `key` (RFC 6455 section 5.3), as a list
    of `chunk`-sized pieces that are sent one after another.

    Written here because websockets' pure-Python fallback holds the GIL for
    the whole message and numpy is not in Krita's Python; `bytes.translate`
    with one table per key byte is the fastest standard-library XOR. No
    buffer of the message's size is ever allocated (zeroing or copying 64 MiB
    in one C call is itself a GIL stall of tens of milliseconds).
    """
    if len(key) != 4 or chunk % 4:
        raise ValueError("the key has 4 bytes and the chunk is a multiple of 4")
    view = memoryview(data).cast("B")
    tables = [_table(b) for b in key]
    pieces = []
    for start in range(0, len(view), chunk):
        piece = view[start : start + chunk].tobytes()
        out = bytearray(len(piece))
        for j in range(4):
            out[j::4] = piece[j::4].translate(tables[j])
        pieces.append(bytes(out))
    return pieces


def header(opcode: int, fin: bool, rsv: int, length: int, key: bytes) -> bytes:
    """A masked frame's header (RFC 6455 section 5.2): FIN, RSV, opcode, MASK + length, key."""
    head1 = (0x80 if fin else 0) | (rsv << 4) | opcode
    if length < 126:
        return struct.pack("!BB", head1, 0x80 | length) + key
    if length < 1 << 16:
        return struct.pack("!BBH", head1, 0x80 | 126, length) + key
    return struct.pack("!BBQ", head1, 0x80 | 127, length) + key


def is_local(sock: Any) -> bool:
    """Is the socket's peer on a loopback address (or a Unix socket)?"""
    try:
        peer = sock.getpeername()
    except OSError:
        return False
    if isinstance(peer, (str, bytes)):  # AF_UNIX
        return True
    try:
        return ipaddress.ip_address(peer[0].split("%")[0]).is_loopback
    except ValueError:
        return False


def install(protocol: Any, zero_key: bool) -> None:
    """Route `protocol`'s big outgoing frames through `send_big_frame`."""
    original = protocol.send_frame

    def send_frame(frame: Any) -> None:
        if len(frame.data) < BIG_FRAME or protocol.extensions:
            original(frame)
            return
        frame.check()
        key = ZERO_KEY if zero_key else secrets.token_bytes(4)
        rsv = (frame.rsv1 << 2) | (frame.rsv2 << 1) | frame.rsv3
        protocol.writes.append(header(frame.opcode.value, frame.fin, rsv, len(frame.data), key))
        # Separate writes: the payload (or its masked pieces) goes to sendall as it is; the socket call
        # releases the GIL while the kernel copies.
        if zero_key:
            protocol.writes.append(frame.data)
        else:
            protocol.writes.extend(masked_chunks(frame.data, key))

    protocol.send_frame = send_frame


def connection_class() -> type:
    """A websockets `ClientConnection` that masks big frames as above."""
    from websockets.sync.client import ClientConnection

    class FastMaskingConnection(ClientConnection):
        def __init__(self, socket: Any, protocol: Any, **kwargs: Any) -> None:
            install(protocol, zero_key=is_local(socket))
            self.zero_mask = is_local(socket)
            super().__init__(socket, protocol, **kwargs)

    return FastMaskingConnection
