"""The wire protocol: round trips, and every malformed frame refused cleanly."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    PROTOCOL_VERSION,
    Accepted,
    Cancel,
    Capabilities,
    Error,
    ErrorCode,
    FetchResult,
    Hello,
    JobRequest,
    ListModels,
    ModelInfo,
    Progress,
    ProtocolError,
    RawImage,
    Result,
    Submit,
    Welcome,
    decode,
    encode,
)


def rgba(w: int, h: int, value: int = 7) -> RawImage:
    return RawImage(w, h, 4, bytes([value]) * (w * h * 4))


def gray(w: int, h: int) -> RawImage:
    return RawImage(w, h, 1, b"\xff" * (w * h))


MESSAGES = [
    Hello(protocol=PROTOCOL_VERSION, client="test", token="t", client_id="abc"),
    Welcome(
        protocol=1,
        server="paintbridge/0",
        client_id="abc",
        capabilities=Capabilities([ModelInfo("m", "checkpoint", "sd15", 512)], "m", ["Euler a"], [], 1, 2, 3, 4, 5),
    ),
    Submit(JobRequest(prompt="a (cat:1.2)", seed=12, steps=4), ref="r1"),
    Submit(JobRequest(kind="inpaint", image=rgba(8, 4), mask=gray(8, 4), strength=0.5)),
    Accepted("j1", 2, "r1"),
    Progress("j1", 3, 20, "sampling", rgba(4, 4)),
    Result("j1", [rgba(2, 2)], [42], {"seed": 42, "cfg_scale": 7.0, "nested": {"a": [1, 2]}}, "a cat\nSteps: 4"),
    Error("unknown_sampler", "no such sampler", "j1", "sampler"),
    Cancel("j1"),
    FetchResult("j1"),
    ListModels(),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.type)
def test_round_trip(message):
    assert decode(encode(message)) == message


def test_large_image_passes():
    image = rgba(4096, 4096)  # 64 MiB: a big Krita layer
    frame = encode(Submit(JobRequest(kind="img2img", image=image)))
    assert len(frame) > 64 * 1024 * 1024
    assert decode(frame).request.image.data == image.data


def frame(**fields) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def submit(**request) -> bytes:
    return frame(type="submit", request=request)


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        (b"\xc1", ErrorCode.BAD_MESSAGE, ""),  # never-used msgpack byte
        (b"", ErrorCode.BAD_MESSAGE, ""),
        (msgpack.packb([1, 2]), ErrorCode.BAD_MESSAGE, ""),
        (frame(type="cancel", job_id="x") + b"\x00", ErrorCode.BAD_MESSAGE, ""),  # trailing bytes
        (frame(job_id="x"), ErrorCode.BAD_MESSAGE, ""),
        (frame(type=5), ErrorCode.BAD_MESSAGE, ""),
        (frame(type="launch_missiles"), ErrorCode.UNKNOWN_MESSAGE, ""),
        (frame(type="cancel"), ErrorCode.INVALID_REQUEST, "job_id"),
        (frame(type="cancel", job_id=3), ErrorCode.INVALID_REQUEST, "job_id"),
        (frame(type="cancel", job_id="x", extra=1), ErrorCode.INVALID_REQUEST, "extra"),
        (frame(type="hello", protocol=True), ErrorCode.INVALID_REQUEST, "protocol"),
        (submit(steps=0), ErrorCode.INVALID_REQUEST, "steps"),
        (submit(steps=True), ErrorCode.INVALID_REQUEST, "steps"),
        (submit(steps=2**63), ErrorCode.INVALID_REQUEST, "steps"),
        (submit(cfg_scale=math.nan), ErrorCode.INVALID_REQUEST, "cfg_scale"),
        (submit(cfg_scale=math.inf), ErrorCode.INVALID_REQUEST, "cfg_scale"),
        (submit(strength=1.5), ErrorCode.INVALID_REQUEST, "strength"),
        (submit(seed=-2), ErrorCode.INVALID_REQUEST, "seed"),
        (submit(seed=2**40), ErrorCode.INVALID_REQUEST, "seed"),
        (submit(width=100), ErrorCode.INVALID_REQUEST, "width"),
        (submit(width=-8), ErrorCode.INVALID_REQUEST, "width"),
        (submit(batch_size=1000), ErrorCode.INVALID_REQUEST, "batch_size"),
        (submit(kind="dream"), ErrorCode.INVALID_REQUEST, "kind"),
        (submit(kind="img2img"), ErrorCode.INVALID_REQUEST, "image"),
        (submit(prompt="x" * 30_000), ErrorCode.INVALID_REQUEST, "prompt"),
        (submit(kind="img2img", image={"width": 2, "height": 2, "channels": 4, "data": b"12"}), ErrorCode.INVALID_REQUEST, "image.data"),
        (submit(kind="img2img", image={"width": 0, "height": 2, "channels": 4, "data": b""}), ErrorCode.INVALID_REQUEST, "image.width"),
        (submit(kind="img2img", image={"width": 1, "height": 1, "channels": 2, "data": b"12"}), ErrorCode.INVALID_REQUEST, "image.channels"),
        (submit(kind="inpaint", image=rgba(4, 4).to_wire(), mask=gray(2, 2).to_wire()), ErrorCode.INVALID_REQUEST, "mask"),
        (submit(kind="inpaint", image=rgba(4, 4).to_wire()), ErrorCode.INVALID_REQUEST, "mask"),
        (submit(kind="txt2img", mask=gray(2, 2).to_wire()), ErrorCode.INVALID_REQUEST, "mask"),
    ],
)
def test_malformed_frames_are_refused_with_a_code(raw, code, field):
    with pytest.raises(ProtocolError) as caught:
        decode(raw)
    assert caught.value.code == code
    assert caught.value.field == field
    assert caught.value.message


def test_text_frames_are_refused():
    with pytest.raises(ProtocolError) as caught:
        decode("hello")  # type: ignore[arg-type]
    assert caught.value.code == ErrorCode.BAD_MESSAGE


def test_out_of_range_names_field_and_range():
    with pytest.raises(ProtocolError) as caught:
        decode(submit(steps=500))
    assert caught.value.field == "steps" and "steps" in caught.value.message and "1..150" in caught.value.message


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
request_keys = st.sampled_from(["kind", "prompt", "steps", "cfg_scale", "seed", "width", "image", "mask", "strength", "batch_size"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["hello", "submit", "cancel", "fetch_result", "list_models", "result", "nope"]),
    body=st.dictionaries(request_keys | st.text(max_size=8), wire_values, max_size=6),
)
def test_fuzz_decode_never_crashes(kind, body):
    wire = {"type": kind, "request": body, **body} if kind == "submit" else {"type": kind, **body}
    try:
        decode(msgpack.packb(wire, use_bin_type=True))
    except ProtocolError as exc:
        assert exc.code in ErrorCode


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(raw):
    try:
        decode(raw)
    except ProtocolError:
        pass


def test_plot_cells_expand_as_the_webui_does():
    from protocol.plots import Plot, PlotAxis, cells, columns

    base = JobRequest(prompt="a cat in a hat", seed=4)
    xy = JobRequest(prompt=base.prompt, seed=4, plot=Plot(axes=[
        PlotAxis("steps", ["10", "20", "30"]), PlotAxis("Prompt S/R", ["cat", "dog"])]))
    xy.validate()
    out = cells(xy)
    assert [c.labels for c in out[:4]] == [["steps: 10", "Prompt S/R: cat"], ["steps: 20", "Prompt S/R: cat"],
                                           ["steps: 30", "Prompt S/R: cat"], ["steps: 10", "Prompt S/R: dog"]]
    assert out[4].request.prompt == "a dog in a hat" and out[4].request.steps == 20
    assert all(c.request.plot is None and c.request.seed == 4 for c in out) and columns(xy.plot, xy.prompt) == 3
    matrix = JobRequest(prompt="a cat|red|hat", plot=Plot(prompt_matrix=True))
    assert [c.request.prompt for c in cells(matrix)] == ["a cat", "a cat, red", "a cat, hat", "a cat, red, hat"]
    assert columns(matrix.plot, matrix.prompt) == 2
    listed = JobRequest(plot=Plot(prompts=["a fox", "a dog", "an owl"]))
    assert [c.labels for c in cells(listed)] == [["a fox"], ["a dog"], ["an owl"]]
    # Round trip through the codec.
    assert decode(encode(Submit(request=xy))).request == xy
