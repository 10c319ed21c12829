"""Plots drawn as the WebUI's labelled grids, for the CLI.

The server runs a plot (protocol/plots.py) as one job and sends every image
back with its labels; the CLI lays them out and writes the captions.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from protocol.plots import AXES, PlotAxis


class GridError(ValueError):
    pass


def parse_axis(spec: str) -> PlotAxis:
    """'Steps=10,20,30' -> PlotAxis('Steps', ['10', '20', '30']); the server checks the values."""
    name, _, values = spec.partition("=")
    parsed = [v.strip() for v in values.split(",") if v.strip()]
    if not name.strip() or not parsed:
        raise GridError(f"axis {spec!r}: write NAME=v1,v2,... with NAME one of {', '.join(sorted(AXES))}")
    return PlotAxis(name.strip(), parsed)


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
