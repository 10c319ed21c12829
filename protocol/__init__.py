"""PaintBridge wire protocol: typed messages and the msgpack codec.

Pure Python, no sockets, no torch: the server, the CLI client and the Krita
plugin all speak through this package (the plugin carries a copy of it).
"""

from protocol.codec import decode, encode
from protocol.errors import ErrorCode, ProtocolError
from protocol.images import RawImage
from protocol.messages import (
    Accepted,
    Cancel,
    Cancelled,
    Capabilities,
    Error,
    FetchResult,
    Hello,
    JobStatus,
    ListModels,
    Message,
    ModelInfo,
    Models,
    Progress,
    Restarting,
    Result,
    Submit,
    Welcome,
)
from protocol.requests import ControlUnit, HiresFix, JobKind, JobRequest, Restore, Upscale
from protocol.version import PROTOCOL_VERSION

__all__ = [
    "PROTOCOL_VERSION",
    "Accepted",
    "Cancel",
    "Cancelled",
    "Capabilities",
    "ControlUnit",
    "Error",
    "ErrorCode",
    "FetchResult",
    "Hello",
    "HiresFix",
    "JobKind",
    "JobRequest",
    "JobStatus",
    "ListModels",
    "Message",
    "ModelInfo",
    "Models",
    "Progress",
    "ProtocolError",
    "RawImage",
    "Restarting",
    "Restore",
    "Result",
    "Submit",
    "Upscale",
    "Welcome",
    "decode",
    "encode",
]
