"""One msgpack codec for every message: bytes in, typed message out."""

from __future__ import annotations

import msgpack

from protocol import oob
from protocol.errors import ErrorCode, ProtocolError, clip, invalid
from protocol.fields import MAX_TEXT, from_wire, to_wire
from protocol.messages import MESSAGE_TYPES, Message, Submit
from protocol.requests import JobRequest


def encode(message: Message) -> bytes:
    wire = to_wire(message)
    wire["type"] = message.type
    return msgpack.packb(wire, use_bin_type=True)


def encode_parts(message: Message) -> list[oob.Buffer]:
    """Protocol 3: [head, *payloads], the big bins out of band (protocol/oob.py)."""
    wire = to_wire(message)
    wire["type"] = message.type
    return oob.encode_parts(wire)


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
    return decode_wire(wire)


def decode_wire(wire: object) -> Message:
    """An unpacked map (protocol 2's frame, or protocol 3's head with its payloads attached) -> message."""
    if not isinstance(wire, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message must be a msgpack map")
    kind = wire.pop("type", None)
    if type(kind) is not str:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message needs a string 'type'")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_MESSAGE, f"unknown message type {clip(repr(kind), 60)}")
    if cls is Submit:
        return _submit(wire)
    return from_wire(cls, wire)


def _submit(wire: dict) -> Submit:
    """A submit, its request read at the root: every `field` of a refused
    submit is named relative to the request ("steps", "hires.scale",
    "image.width"), as the later checks (validate, the engine's names) name
    theirs, and the error carries the submit's `ref` so a client with several
    submits in flight can pair the two."""
    ref = wire.get("ref", "")
    try:
        if type(ref) is not str:
            ref = ""
            raise invalid("ref", "ref must be a string")
        message = from_wire(Submit, {**wire, "request": {}})  # ref and unknown keys; the request below
        body = wire.get("request")
        if not isinstance(body, dict):
            raise invalid("request", "missing field 'request'" if body is None else "request must be a map")
        message.request = from_wire(JobRequest, body)
        message.request.validate()
    except ProtocolError as exc:
        exc.ref = ref if len(ref) <= MAX_TEXT else ""
        raise
    return message
