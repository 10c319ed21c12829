"""Plots and batches drawn as the WebUI's labelled grids, for the CLI.

The server runs a plot (protocol/plots.py) as one job and sends every image
back with its labels; the CLI lays them out as the WebUI does: X values as
column headers above the grid, Y values as row headers on its left, and one
sub-grid per Z value side by side, each under its Z title. Prompt matrices and
prompt lists caption each cell; a plain batch is a grid without captions.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from protocol.plots import AXES, Plot, PlotAxis

PAD = 6
ROW_HEADER_MAX = 240  # px: longer Y labels wrap


class GridError(ValueError):
    pass


def parse_axis(spec: str, flag: str = "--xyz") -> PlotAxis:
    """'Steps=10,20,30' -> PlotAxis('Steps', ['10', '20', '30']); the server checks the values."""
    name, _, values = spec.partition("=")
    parsed = [v.strip() for v in values.split(",") if v.strip()]
    if not name.strip() or not parsed:
        raise GridError(f"{flag} {spec!r}: write NAME=v1,v2,... with NAME one of {', '.join(sorted(AXES))}")
    return PlotAxis(name.strip(), parsed)


@dataclass(frozen=True)
class Layout:
    columns: int
    rows: int
    planes: int = 1  # Z values: one sub-grid each
    headers: bool = False  # column/row/plane headers instead of per-cell captions


def layout(plot: Plot | None, prompt: str, count: int) -> Layout:
    """Where each image goes: X fastest, then Y, then Z (the order of `plots.cells`)."""
    if plot is not None and plot.axes:
        sizes = [len(a.values) for a in plot.axes] + [1, 1]
        return Layout(sizes[0], sizes[1], sizes[2], headers=True)
    if plot is not None and plot.prompt_matrix:
        columns = 2 ** math.ceil((len(prompt.split("|")) - 1) / 2)
    else:  # a prompt list or a batch: as square as it gets, as the WebUI's grids
        columns = math.ceil(math.sqrt(count))
    return Layout(columns, math.ceil(count / columns))


def _font(size: int = 16) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, width_px: int, font) -> list[str]:
    """Lines that fit width_px: wrapped at spaces, long words cut, never clipped."""
    avg = max(font.getlength("abcdefghijklmnopqrstuvwxyz") / 26, 1.0)
    chars = max(int(width_px / avg), 4)
    lines: list[str] = []
    for line in textwrap.wrap(text, chars, break_long_words=True) or [""]:
        while font.getlength(line) > width_px and len(line) > 1:  # proportional glyphs wider than average
            cut = max(len(line) * width_px // int(font.getlength(line) + 1), 1)
            lines.append(line[:cut])
            line = line[cut:]
        lines.append(line)
    return lines


def _line_px(font) -> int:
    return int(getattr(font, "size", 11) * 1.25) + 1


def _text_block(draw: ImageDraw.ImageDraw, lines: list[str], box: tuple[int, int, int], font) -> None:
    """Centred lines in a box of (x, y, width)."""
    x, y, width = box
    for i, line in enumerate(lines):
        draw.text((x + (width - font.getlength(line)) / 2, y + i * _line_px(font)), line, fill="black", font=font)


def draw_grid(images: list[Image.Image], labels: list[list[str]], grid: Layout) -> Image.Image:
    """One image: the cells, and the headers or captions that say what each is."""
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    font = _font(min(max((cell_w + cell_h) // 32, 11), 32))  # text in proportion to the pictures
    line_px = _line_px(font)
    per_plane = grid.columns * grid.rows

    def label(index: int, axis: int) -> str:
        return labels[index][axis] if index < len(labels) and axis < len(labels[index]) else ""

    if grid.headers:
        col_text = [_wrap(label(c, 0), cell_w - 2 * PAD, font) for c in range(grid.columns)]
        row_text = [label(r * grid.columns, 1) for r in range(grid.rows)]
        plane_text = [label(z * per_plane, 2) for z in range(grid.planes)]
        row_w = 0 if not any(row_text) else min(max(int(font.getlength(t)) for t in row_text) + 2 * PAD,
                                                 max(cell_w, ROW_HEADER_MAX))
        row_lines = [_wrap(t, max(row_w - 2 * PAD, 8), font) for t in row_text]
        head_h = max(len(lines) for lines in col_text) * line_px + 2 * PAD
        plane_lines = [_wrap(t, grid.columns * cell_w, font) for t in plane_text]
        title_h = 0 if not any(plane_text) else max(len(lines) for lines in plane_lines) * line_px + 2 * PAD
        caption_h = 0
    else:
        row_w = head_h = title_h = 0
        captions = [_wrap(" / ".join(lbl), cell_w - 2 * PAD, font) for lbl in labels]
        caption_h = max((len(c) for c in captions if any(c)), default=0) * line_px + (2 * PAD if any(labels) else 0)
    plane_w = row_w + grid.columns * cell_w
    plane_h = title_h + head_h + grid.rows * (cell_h + caption_h)
    gap = 2 * PAD if grid.planes > 1 else 0
    out = Image.new("RGB", (grid.planes * plane_w + (grid.planes - 1) * gap, plane_h), "white")
    draw = ImageDraw.Draw(out)
    for z in range(grid.planes):
        left = z * (plane_w + gap)
        if grid.headers:
            if title_h:
                _text_block(draw, plane_lines[z], (left + row_w, PAD, grid.columns * cell_w), font)
            for c in range(grid.columns):
                _text_block(draw, col_text[c], (left + row_w + c * cell_w, title_h + PAD, cell_w), font)
            for r in range(grid.rows):
                top = title_h + head_h + r * cell_h + (cell_h - len(row_lines[r]) * line_px) // 2
                _text_block(draw, row_lines[r], (left, top, row_w), font)
        for i in range(per_plane):
            index = z * per_plane + i
            if index >= len(images):
                break
            x = left + row_w + (i % grid.columns) * cell_w
            y = title_h + head_h + (i // grid.columns) * (cell_h + caption_h)
            if not grid.headers and caption_h:
                _text_block(draw, captions[index], (x, y + PAD, cell_w), font)
            out.paste(images[index].convert("RGB"), (x, y + caption_h))
    return out
