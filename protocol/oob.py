"""Protocol 3: pixel payloads out of band, beside a small msgpack head.

In protocol 2 a 4096x4096 RGBA layer travels inside the msgpack map: the
sender copies its 64 MiB into msgpack's buffer, the receiver copies it out
again, and the websocket library copies the one huge frame a few more times
(reassembly buffer, slice, unmask). Protocol 3 sends a message as

    head        one binary websocket message: the msgpack map, in which every
                `bin` of at least MIN_OUT_OF_BAND bytes is replaced by the
                msgpack extension `ext(EXT_PAYLOAD, uint64 big-endian length)`
    payloads    one binary websocket message per extension, in the order the
                extensions appear in the head (msgpack's document order), each
                holding exactly the announced number of bytes

so the sender hands the pixels to the socket as they are (memoryview slices:
no copy) and the receiver gets each payload as its own `bytes` object.
Senders split a payload into websocket fragments of FRAGMENT bytes: every
per-frame copy the websocket library makes is then of a cache-sized piece
instead of a fresh 64 MiB buffer.

Announced lengths are only ever *compared* with bytes that arrived: nothing
is allocated from them. A head may announce at most MAX_PAYLOADS payloads and
at most the receiver's message limit in total; a payload whose length differs
from its announcement ends the connection (the stream is out of step).

`pack` / `unpack` give the same thing as one buffer (`ENVELOPE` + head length
+ head + payloads): the server's queue stores and passes final frames in this
form, and sends its parts to protocol-3 clients without copying them again.
Written here because msgpack has no out-of-band buffers (its ext types are
the documented way to carry application data, which is what we use).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import msgpack

from protocol.errors import ErrorCode, ProtocolError

EXT_PAYLOAD = 1  # msgpack extension type: "the next payload message, of this many bytes"
MIN_OUT_OF_BAND = 4096  # smaller `bin` fields stay in the head (a frame each would cost more than the copy)
MAX_PAYLOADS = 256  # per message: a batch of 16 images + masks + control images fits many times over
FRAGMENT = 1 << 20  # websocket fragment size for payloads (measured: 1 MiB beat 256 KiB, 4 MiB and unfragmented)
# A stored/passed envelope starts with msgpack's never-used byte 0xc1: no protocol-2 frame starts with it,
# and a protocol-2 decoder given one fails with a clean "not a valid msgpack frame".
ENVELOPE = b"\xc1PB3"
_LEN = struct.Struct("!I")
_EXT_LEN = struct.Struct("!Q")

Buffer = bytes | bytearray | memoryview


class OutOfStep(ProtocolError):
    """A head or payload after which the receiver cannot tell where the next
    message starts (too many or too big payloads announced, a payload of the
    wrong length): the connection must end."""


class Slot:
    """Where a payload goes in a decoded head, until it has arrived."""

    __slots__ = ("index", "length")

    def __init__(self, index: int, length: int) -> None:
        self.index, self.length = index, length


def split(wire: Any, payloads: list[Buffer]) -> Any:
    """`wire` (plain maps/lists from fields.to_wire) with every big bin replaced
    by an extension; the bins are appended to `payloads` in document order."""
    if isinstance(wire, dict):
        return {k: split(v, payloads) for k, v in wire.items()}
    if isinstance(wire, list):
        return [split(v, payloads) for v in wire]
    if isinstance(wire, (bytes, bytearray, memoryview)):
        view = memoryview(wire).cast("B") if isinstance(wire, memoryview) else wire
        if len(view) >= MIN_OUT_OF_BAND:
            payloads.append(view)
            return msgpack.ExtType(EXT_PAYLOAD, _EXT_LEN.pack(len(view)))
        return bytes(view) if isinstance(view, memoryview) else view
    return wire


def encode_parts(wire: dict) -> list[Buffer]:
    """[head, *payloads] for a message already turned into plain maps."""
    payloads: list[Buffer] = []
    head = msgpack.packb(split(wire, payloads), use_bin_type=True)
    return [head, *payloads]


def read_head(frame: Buffer, max_total: int) -> tuple[Any, list[Slot]]:
    """Unpack a protocol-3 head; its payloads' places are `Slot`s. Raises
    ProtocolError for a malformed head, an unknown extension, too many
    payloads or more announced bytes than `max_total`."""
    slots: list[Slot] = []

    def ext_hook(code: int, data: bytes) -> Slot:
        if code != EXT_PAYLOAD or len(data) != _EXT_LEN.size:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown msgpack extension {code}")
        if len(slots) >= MAX_PAYLOADS:
            raise OutOfStep(ErrorCode.BAD_MESSAGE, f"more than {MAX_PAYLOADS} payloads in one message")
        slot = Slot(len(slots), _EXT_LEN.unpack(data)[0])
        slots.append(slot)
        return slot

    try:
        wire = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True, ext_hook=ext_hook)
    except ProtocolError as exc:
        if slots and not isinstance(exc, OutOfStep):  # its announced payloads will still come
            raise OutOfStep(exc.code, exc.message) from None
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        error = OutOfStep if slots else ProtocolError
        raise error(ErrorCode.BAD_MESSAGE, f"not a valid msgpack frame ({type(exc).__name__})") from None
    total = sum(s.length for s in slots)
    if total > max_total:
        raise OutOfStep(ErrorCode.TOO_LARGE, f"the message announces {total} bytes of payloads; the limit is {max_total}")
    return wire, slots


def attach(wire: Any, payloads: Sequence[Buffer]) -> Any:
    """Put the arrived payloads in their slots (no copy)."""
    if isinstance(wire, Slot):
        return payloads[wire.index]
    if isinstance(wire, dict):
        return {k: attach(v, payloads) for k, v in wire.items()}
    if isinstance(wire, list):
        return [attach(v, payloads) for v in wire]
    return wire


def check_payload(slot: Slot, payload: Any) -> None:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise OutOfStep(ErrorCode.BAD_MESSAGE, "a payload must be a binary message, not text")
    if len(payload) != slot.length:
        raise OutOfStep(ErrorCode.BAD_MESSAGE,
                            f"payload {slot.index} has {len(payload)} bytes; its head announced {slot.length}")


def fragments(payload: Buffer, size: int = FRAGMENT) -> list[memoryview]:
    """A payload as websocket fragments (views, no copy). An empty payload is one empty fragment."""
    view = memoryview(payload).cast("B")
    return [view[i : i + size] for i in range(0, len(view), size)] or [view]


class Parts(tuple):
    """An encoded message as [head, *payloads], not joined: what the server's
    engine thread hands to the sessions (each sends it as its client's protocol
    wants) and writes to the result file piece by piece."""

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self) + (8 if len(self) > 1 else 0)


# -- the one-buffer form (queue storage, Redis) --------------------------------------------
def pieces(parts: Sequence[Buffer]) -> list[Buffer]:
    """The buffers that, one after another, make pack(parts) (for writelines: no join)."""
    if len(parts) == 1:
        return [parts[0]]
    return [ENVELOPE + _LEN.pack(len(parts[0])), *parts]


def pack(parts: Sequence[Buffer]) -> bytes:
    """[head, *payloads] -> ENVELOPE + head length + head + payloads (one join).
    A message without payloads stays its plain head: a protocol-2 frame."""
    if len(parts) == 1:
        return bytes(parts[0])
    return b"".join(pieces(parts))


def is_envelope(frame: Any) -> bool:
    return isinstance(frame, (bytes, bytearray, memoryview)) and bytes(frame[:4]) == ENVELOPE


def unpack(frame: Buffer) -> list[memoryview]:
    """ENVELOPE form -> [head, *payloads] as views into `frame` (checked against its head)."""
    view = memoryview(frame).cast("B")
    if bytes(view[:4]) != ENVELOPE or len(view) < 8:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "not a PaintBridge envelope")
    (head_len,) = _LEN.unpack(view[4:8])
    head = view[8 : 8 + head_len]
    _, slots = read_head(head, len(view))
    parts, offset = [head], 8 + head_len
    for slot in slots:
        end = offset + slot.length
        if end > len(view):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "the envelope is shorter than its head announces")
        parts.append(view[offset:end])
        offset = end
    if offset != len(view):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "the envelope has bytes its head does not announce")
    return parts


def split_frame(frame: Buffer | Parts) -> Sequence[Buffer]:
    """Parts, an envelope or a plain frame -> [head, *payloads] (views, no copy)."""
    if isinstance(frame, Parts):
        return frame
    return unpack(frame) if is_envelope(frame) else [frame]


def to_plain(frame: Buffer | Parts) -> bytes:
    """A stored frame as protocol 2 sends it: payloads back inside the msgpack map (one copy)."""
    head, *payloads = split_frame(frame)
    if not payloads:
        return bytes(head)
    wire, _ = read_head(head, 1 << 62)
    return msgpack.packb(attach(wire, payloads), use_bin_type=True)
