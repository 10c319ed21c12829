"""Stable error codes shared by the server, the CLI and the plugin.

The codes are part of the protocol: clients branch on them, so a code is never
renamed. The human message may change freely.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    BAD_MESSAGE = "bad_message"  # not msgpack, not a map, trailing bytes
    UNKNOWN_MESSAGE = "unknown_message"  # a "type" this version does not know
    INVALID_REQUEST = "invalid_request"  # a field missing, mistyped or out of range
    VERSION_MISMATCH = "version_mismatch"
    HELLO_REQUIRED = "hello_required"
    UNAUTHORIZED = "unauthorized"
    TOO_LARGE = "too_large"
    NOT_FOUND = "not_found"  # unknown (or not your) job id
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_SAMPLER = "unknown_sampler"
    MODEL_LOAD_FAILED = "model_load_failed"
    UNSAFE_FILE = "unsafe_file"  # a weights file that would need unpickling code
    QUEUE_FULL = "queue_full"
    CANCELLED = "cancelled"
    OUT_OF_MEMORY = "out_of_memory"
    JOB_LOST = "job_lost"  # the server restarted: the job is gone
    CLIENT_QUEUE_FULL = "client_queue_full"  # this client has too many jobs queued
    SUPERSEDED = "superseded"  # a newer live job of the same client replaced this one
    INTERNAL = "internal_error"


# An error echoes parts of what the client sent (a field name, a value, an
# unknown type): capped, so a reply is never bigger than a few KiB however
# long the input was.
MAX_ECHO = 200  # characters of a client's string quoted in an error
MAX_ERROR_MESSAGE = 4_000  # characters of an error's message
MAX_ERROR_FIELD = 200  # characters of an error's field path


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """`text`, or its start and a note of how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


class ProtocolError(Exception):
    """A typed failure that travels to the peer as an `error` message.

    `ref` is the `ref` of the `submit` it refuses, when known (so a client with
    several submits in flight can pair the two)."""

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        *,
        field: str = "",
        job_id: str = "",
        ref: str = "",
    ) -> None:
        message, field = clip(message, MAX_ERROR_MESSAGE), clip(field, MAX_ERROR_FIELD)
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.field = field
        self.job_id = job_id
        self.ref = ref

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


def invalid(field: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_REQUEST, message, field=field)
