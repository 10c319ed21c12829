"""Prompt matrix and X/Y/Z plots for the CLI, drawn as the WebUI's labelled grids.

The server runs each cell as an ordinary job (each image comes back on its
own, with its parameters); the CLI lays them out and writes the labels.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from PIL import Image, ImageDraw, ImageFont

from protocol import ProtocolError
from protocol.fields import from_wire, to_wire
from protocol.requests import JobRequest

# WebUI axis names (case-insensitive) -> JobRequest field and type.
AXES = {
    "seed": ("seed", int),
    "steps": ("steps", int),
    "cfg scale": ("cfg_scale", float),
    "cfg": ("cfg_scale", float),
    "sampler": ("sampler", str),
    "checkpoint name": ("model", str),
    "model": ("model", str),
    "denoising": ("strength", float),
    "clip skip": ("clip_skip", int),
    "var. seed": ("subseed", int),
    "var. strength": ("subseed_strength", float),
    "vae": ("vae", str),
    "prompt s/r": ("prompt", str),
}


class GridError(ValueError):
    pass


def parse_axis(spec: str) -> tuple[str, str, list]:
    """'Steps=10,20,30' -> ('Steps', 'steps', [10, 20, 30])."""
    name, _, values = spec.partition("=")
    key = name.strip().lower()
    if key not in AXES or not values.strip():
        raise GridError(f"axis {spec!r}: write NAME=v1,v2,... with NAME one of {', '.join(sorted(AXES))}")
    field, kind = AXES[key]
    try:
        parsed = [kind(v.strip()) for v in values.split(",") if v.strip()]
    except ValueError as exc:
        raise GridError(f"axis {spec!r}: {exc}") from None
    return name.strip(), field, parsed


def axis_requests(base: JobRequest, axes: list[tuple[str, str, list]]) -> list[tuple[JobRequest, list[str]]]:
    """One request per cell (Z, then Y, then X varying fastest) with its labels."""
    cells = []
    search = {name: values[0] for name, field, values in axes if field == "prompt"}
    for combo in itertools.product(*[values for _, _, values in reversed(axes)]):
        combo = tuple(reversed(combo))
        changes, labels = {}, []
        for (name, field, _), value in zip(axes, combo, strict=True):
            if field == "prompt":
                changes["prompt"] = changes.get("prompt", base.prompt).replace(str(search[name]), str(value))
            else:
                changes[field] = value
            labels.append(f"{name}: {value}")
        try:
            request = checked(replace(base, **changes))
        except ProtocolError as exc:
            raise GridError(f"{', '.join(labels)}: {exc.message}") from None
        cells.append((request, labels))
    return cells


def checked(request: JobRequest) -> JobRequest:
    """Through the protocol's strict checks again (types, ranges, cross-field rules)."""
    request = from_wire(JobRequest, to_wire(request))
    request.validate()
    return request


def prompts_from_file(base: JobRequest, lines: list[str]) -> list[tuple[JobRequest, list[str]]]:
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise GridError("the prompts file has no prompts")
    return [(checked(replace(base, prompt=p)), [p[:60]]) for p in prompts]


def matrix_requests(base: JobRequest) -> list[tuple[JobRequest, list[str]]]:
    """WebUI prompt matrix: 'a|b|c' -> a; a, b; a, c; a, b, c (same seed)."""
    first, *options = [p.strip() for p in base.prompt.split("|")]
    if not options:
        raise GridError("--prompt-matrix needs a prompt with | between the parts to combine")
    cells = []
    for mask in range(2 ** len(options)):
        chosen = [o for i, o in enumerate(options) if mask & (1 << i)]
        prompt = ", ".join([first, *chosen])
        cells.append((replace(base, prompt=prompt), [("+ " + " + ".join(chosen)) if chosen else first]))
    return cells


def draw_grid(images: list[Image.Image], labels: list[list[str]], columns: int) -> Image.Image:
    """Cells left to right, top to bottom; each captioned with its labels."""
    font = ImageFont.load_default()
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    caption = 14 * max(len(lbl) for lbl in labels) + 6
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * cell_w, rows * (cell_h + caption)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, lines) in enumerate(zip(images, labels, strict=True)):
        x, y = (i % columns) * cell_w, (i // columns) * (cell_h + caption)
        for j, line in enumerate(lines):
            draw.text((x + 4, y + 3 + 14 * j), line, fill="black", font=font)
        grid.paste(image.convert("RGB"), (x, y + caption))
    return grid
