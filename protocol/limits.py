"""The sizes a request will produce, known before it runs.

A request's bytes do not bound its work: `width: 0` takes the input image's
size, one given side derives the other from the image's aspect ratio, hires
fix and upscale multiply, a batch repeats, a plot repeats again. These pure
functions compute every size the engine will make, by the engine's own
rules (engine/jobs.py `_size`, `_hires`, `_upscale`), so the server refuses
an oversized result before queueing instead of finding out by running out of
memory. Kept beside `requests.py` so clients can check the same way.
"""

from __future__ import annotations

from protocol.errors import invalid

# The side the engine generates at most (txt2img, img2img, hires, upscale
# results). Inpainting returns the input's own size (up to images.MAX_SIDE);
# what it generates is the masked area at about the model's native size.
MAX_GENERATE_SIDE = 8192
MAX_NATIVE = 1024  # the largest native size of a supported family (SDXL); used when the model is not known yet
RESULT_OVERHEAD = 4096  # bytes per image besides its pixels (seed, labels, msgpack framing), before its texts


def round8(value: float) -> int:
    """The engine's rounding of a derived side (engine/masks.py)."""
    return max(64, round(value / 8) * 8)


def base_size(request, native: int) -> tuple[int, int]:
    """(width, height) of the first pass: the engine's `_size`."""
    if request.width and request.height:
        return request.width, request.height
    if request.image is not None:
        w, h = request.image.width, request.image.height
    else:
        w = h = native
    if request.width:
        return request.width, round8(request.width * h / w)
    if request.height:
        return round8(request.height * w / h), request.height
    return (round8(w), round8(h)) if request.image is not None else (w, h)


def result_size(request, native: int = MAX_NATIVE) -> tuple[int, int]:
    """(width, height) of each image the request returns (a request without a plot)."""
    kind = request.kind
    if kind == "inpaint":
        return request.image.width, request.image.height  # composited back into the whole layer
    if kind == "upscale":
        options = request.upscale
        scale = options.scale if options is not None else 2.0
        keep = options.keep_size if options is not None else True
        w, h = request.image.width, request.image.height
        if not keep and request.width:
            w, h = request.width, request.height or h
        return max(1, round(w * scale)), max(1, round(h * scale))
    width, height = base_size(request, native)
    if kind == "img2img" and not (request.width or request.height):
        return request.image.width, request.image.height  # given back at the layer's exact size
    if getattr(request, "resolution", "exact") == "auto":
        return width, height  # the area: a smaller first pass is brought to it (protocol/resolution.py)
    if request.hires is not None:
        rw, rh = request.hires.resize_width, request.hires.resize_height
        if rw or rh:  # a hires target size instead of a factor; one side keeps the first pass's aspect
            return rw or round8(rh * width / height), rh or round8(rw * height / width)
        return round8(width * request.hires.scale), round8(height * request.hires.scale)
    return width, height


def working_sides(request, native: int = MAX_NATIVE) -> tuple[int, int]:
    """The largest (width, height) the diffusion model works at for this request."""
    if request.kind == "inpaint":
        return native, native  # the masked area at about native size (engine/masks.working_size)
    if request.kind == "upscale":
        return result_size(request, native)
    width, height = base_size(request, native)
    if request.hires is not None:
        return result_size(request, native)
    return width, height


def image_count(request) -> int:
    return 1 if request.kind == "upscale" else request.batch_size * request.batch_count


def result_bytes(request, native: int = MAX_NATIVE, labels: list[str] | None = None) -> int:
    """An upper estimate of the `result` frame's size, in bytes (`labels`: a
    plot cell's captions, which every image of the cell carries)."""
    w, h = result_size(request, native)
    text = len(request.prompt.encode()) + len(request.negative_prompt.encode())
    captions = sum(len(label.encode()) + 8 for label in labels or [])
    # Each image carries its own infotext (prompt, negative prompt and settings) and captions.
    return image_count(request) * (w * h * 4 + 2 * text + captions + RESULT_OVERHEAD)


def check_sides(request, native: int = MAX_NATIVE) -> None:
    """Every side the engine would generate is at most MAX_GENERATE_SIDE."""
    for (w, h), what in ((working_sides(request, native), "work at"), (result_size(request, native), "return")):
        if request.kind == "inpaint" and what == "return":
            continue  # the input's own size, already within the image limit
        if max(w, h) > MAX_GENERATE_SIDE:
            field = _size_field(request)
            raise invalid(field, f"the job would {what} {w}x{h} pixels; at most {MAX_GENERATE_SIDE} on a side "
                                 f"({_size_hint(request)})")


def _size_field(request) -> str:
    if request.kind == "upscale":
        return "upscale.scale"
    if request.hires is not None:
        return "hires.scale"
    if request.width and not request.height:
        return "width"
    if request.height and not request.width:
        return "height"
    return "image" if request.image is not None and not request.width else "width"


def _size_hint(request) -> str:
    if request.kind == "upscale":
        return "lower the scale"
    if request.hires is not None:
        return "lower hires.scale or the size"
    if request.image is not None and not (request.width and request.height):
        return f"the image is {request.image.width}x{request.image.height}; give both width and height"
    return "lower the size"


def check_result_bytes(cells: list[tuple[object, int, list[str]]], max_bytes: int) -> None:
    """The whole result (every cell of a plot, every image of every batch) fits
    in one message. `cells`: (request, the native size of its model, its labels)."""
    total = sum(result_bytes(cell, native, labels) for cell, native, labels in cells)
    if total > max_bytes:
        first, native, _ = cells[0]
        w, h = result_size(first, native)
        count = sum(image_count(c) for c, _, _ in cells)
        field = "plot" if len(cells) > 1 else "batch_size" if image_count(first) > 1 else _size_field(first)
        raise invalid(field, f"the result would be {total / 2**20:.0f} MiB ({count} images of about {w}x{h}); "
                             f"the largest message is {max_bytes / 2**20:.0f} MiB: lower the batch or the size")


def request_bytes(request) -> int:
    """Bytes a queued request holds (its pixels)."""
    return sum(len(im.data) for im in (request.image, request.mask) if im is not None)
