"""Every message of the protocol (see protocol/version.py), as a typed dataclass.

Direction: C = client to server, S = server to client. The wire form of a
message is a msgpack map with a "type" key plus the dataclass fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from protocol.fewstep import FewStepDefaults
from protocol.fields import bounded
from protocol.images import RawImage
from protocol.requests import JobRequest


@dataclass
class Message:
    type: ClassVar[str] = ""


@dataclass
class Hello(Message):
    """C: first message on every connection."""

    type: ClassVar[str] = "hello"
    protocol: int
    client: str = ""  # e.g. "paintbridge-cli/0.1"
    token: str = ""  # required when the server has one
    client_id: str = ""  # stable per client install; "" = server assigns one


@dataclass
class ModelInfo:
    name: str
    kind: str  # checkpoint | vae | lora | upscaler | embedding | controlnet
    family: str = ""  # sd15 | sd2 | sdxl (checkpoints)
    native_size: int = 0  # 512 | 768 | 1024 (checkpoints)
    few_step: FewStepDefaults | None = None  # LCM / Turbo / Lightning / Hyper checkpoints and LoRAs: their settings


@dataclass
class Capabilities:
    models: list[ModelInfo]
    default_model: str
    samplers: list[str]
    upscalers: list[str]
    max_message_bytes: int
    max_image_side: int
    max_batch: int
    max_queue: int
    result_retention: int  # finished results kept per server, oldest dropped
    max_queued_per_client: int = 0  # queued jobs one client may have (0 = no own limit)
    durable: bool = False  # jobs and results survive a restart of the server


@dataclass
class Welcome(Message):
    """S: answer to a valid hello."""

    type: ClassVar[str] = "welcome"
    protocol: int
    server: str
    client_id: str
    capabilities: Capabilities


@dataclass
class Submit(Message):
    """C: queue a job. `ref` is echoed in `accepted` to pair the two."""

    type: ClassVar[str] = "submit"
    request: JobRequest
    ref: str = ""


@dataclass
class Accepted(Message):
    """S: the job is queued; `position` 0 means it runs next."""

    type: ClassVar[str] = "accepted"
    job_id: str
    position: int
    ref: str = ""


@dataclass
class Progress(Message):
    """S: one sampling step done. `preview` is a small RGBA image, if any."""

    type: ClassVar[str] = "progress"
    job_id: str
    step: int
    total: int
    stage: str = "sampling"  # sampling | hires | upscaling | tiled diffusion | decoding
    preview: RawImage | None = None
    tile: int = 0  # tiled stages: tiles done in this step, of `tiles`
    tiles: int = 0
    cell: int = 0  # plots: the image being made (1-based), of `cells`
    cells: int = 0


@dataclass
class Result(Message):
    """S: the finished job. `seeds[i]` made `images[i]`."""

    type: ClassVar[str] = "result"
    job_id: str
    images: list[RawImage]
    seeds: list[int]
    parameters: dict[str, Any] = field(default_factory=dict)
    infotext: str = ""  # WebUI-style "parameters" text (of the first image)
    infotexts: list[str] = field(default_factory=list)  # each image's own
    labels: list[list[str]] = field(default_factory=list)  # plots: each image's captions ("Steps: 20", ...)


@dataclass
class Error(Message):
    """S: a failure. `job_id` is set when it ends a job; `field` names bad input."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    job_id: str = ""
    field: str = ""
    ref: str = ""  # the `ref` of a refused `submit`


@dataclass
class Cancel(Message):
    """C: cancel a queued or running job of this client."""

    type: ClassVar[str] = "cancel"
    job_id: str


@dataclass
class Cancelled(Message):
    """S: the job stopped on request; it ends the job."""

    type: ClassVar[str] = "cancelled"
    job_id: str


@dataclass
class FetchResult(Message):
    """C: get a finished result, or follow a queued/running job to its end."""

    type: ClassVar[str] = "fetch_result"
    job_id: str


@dataclass
class JobStatus(Message):
    """S: answer to fetch_result for a job that has not finished yet."""

    type: ClassVar[str] = "job_status"
    job_id: str
    state: str  # queued | running
    position: int = bounded(0, 0, 1_000_000)


@dataclass
class ListModels(Message):
    """C: rescan the models folder and list it."""

    type: ClassVar[str] = "list_models"


@dataclass
class Models(Message):
    type: ClassVar[str] = "models"
    models: list[ModelInfo]
    default_model: str = ""


@dataclass
class Restarting(Message):
    """S: the server is stopping and will be back (SIGTERM, an upgrade). The
    listed jobs of this client are kept: reconnect with the same client_id and
    `fetch_result` them. The connection then closes with code 1012."""

    type: ClassVar[str] = "restarting"
    message: str
    job_ids: list[str] = field(default_factory=list)
    retry_after_s: float = bounded(1.0, 0.0, 3600.0)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.type: cls
    for cls in (
        Hello,
        Welcome,
        Submit,
        Accepted,
        Progress,
        Result,
        Error,
        Cancel,
        Cancelled,
        FetchResult,
        JobStatus,
        ListModels,
        Models,
        Restarting,
    )
}
