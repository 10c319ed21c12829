"""One msgpack codec for every message: bytes in, typed message out."""

from __future__ import annotations

import msgpack

from protocol.errors import ErrorCode, ProtocolError
from protocol.fields import from_wire, to_wire
from protocol.messages import MESSAGE_TYPES, Message
from protocol.requests import JobRequest


def encode(message: Message) -> bytes:
    wire = to_wire(message)
    wire["type"] = message.type
    return msgpack.packb(wire, use_bin_type=True)


def decode(frame: bytes) -> Message:
    """Parse one frame. Raises ProtocolError with a stable code, never anything else."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "frames must be binary msgpack, not text")
    try:
        # unpackb refuses trailing bytes (ExtraData) and bounds container sizes
        # by the frame length, so a small frame cannot claim a huge array.
        wire = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not a valid msgpack frame ({type(exc).__name__})") from None
    if not isinstance(wire, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message must be a msgpack map")
    kind = wire.pop("type", None)
    if type(kind) is not str:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message needs a string 'type'")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE, f"unknown message type {kind!r}")
    message = from_wire(cls, wire)
    request = getattr(message, "request", None)
    if isinstance(request, JobRequest):
        request.validate()
    return message
