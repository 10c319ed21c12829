"""The live picture popped out into a window of its own: its rules (plain Python, no Qt).

At 1280x800 under Krita's default dockers the docker has about 56 px for the live
picture (fit.py): too small to judge. krita-ai-diffusion's painters put the preview on
a second screen or a window beside the canvas; PaintBridge's "Pop out" opens a tool
window above Krita's main window. Here: where that window goes (remembered in the
plugin's settings, kept on the screen) and where the picture lies inside it (as large as
the window allows, aspect kept). The Qt side: live_view.py.
"""

from __future__ import annotations

from dataclasses import dataclass

STORE_KEY = "live_window"  # kritarc key of the pop-out's geometry: "x,y,width,height"
MIN_WIDTH, MIN_HEIGHT = 200, 160  # px: below that the picture is no better than the docker's
DEFAULT_SHARE = 0.7  # of the screen's available height, for the picture when nothing is remembered
LEFT_MARGIN = 48  # px: past Krita's toolbox, over the canvas (the dockers are on the right)


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels: a window's geometry, a screen's available area, a picture's place."""

    x: int
    y: int
    width: int
    height: int

    def to_text(self) -> str:
        return f"{self.x},{self.y},{self.width},{self.height}"

    @classmethod
    def parse(cls, text: str) -> Box | None:
        """A stored geometry, or None for nothing usable (empty, garbage, not positive)."""
        try:
            x, y, width, height = (int(v) for v in text.split(","))
        except ValueError:
            return None
        return cls(x, y, width, height) if width > 0 and height > 0 else None


def fit_picture(image_w: int, image_h: int, box_w: int, box_h: int) -> Box:
    """Where an image_w x image_h picture is drawn in a box_w x box_h area: as large as fits,
    aspect kept, centred (scaled up too: the point of the window is to see it large)."""
    if image_w <= 0 or image_h <= 0 or box_w <= 0 or box_h <= 0:
        return Box(0, 0, 0, 0)
    scale = min(box_w / image_w, box_h / image_h)
    width, height = max(1, round(image_w * scale)), max(1, round(image_h * scale))
    return Box((box_w - width) // 2, (box_h - height) // 2, width, height)


def default_geometry(screen: Box, aspect: float, chrome_h: int) -> Box:
    """A first window: the picture DEFAULT_SHARE of the screen's height (less when the screen
    is too narrow for its aspect), plus chrome_h px of buttons below it; over the canvas, at
    the left, vertically centred."""
    aspect = aspect if aspect > 0 else 1.0
    picture_h = round(screen.height * DEFAULT_SHARE) - chrome_h
    width = round(picture_h * aspect)
    most_w = screen.width - 2 * LEFT_MARGIN
    if width > most_w:
        width, picture_h = most_w, round(most_w / aspect)
    width, height = max(MIN_WIDTH, width), max(MIN_HEIGHT, picture_h + chrome_h)
    return placed(Box(screen.x + LEFT_MARGIN, screen.y + (screen.height - height) // 2, width, height), screen)


def placed(saved: Box, screen: Box) -> Box:
    """A remembered geometry made to fit the screen it opens on now (a smaller screen, a
    screen gone): no larger than the screen, no smaller than the minimum, wholly on it."""
    width = max(min(saved.width, screen.width), min(MIN_WIDTH, screen.width))
    height = max(min(saved.height, screen.height), min(MIN_HEIGHT, screen.height))
    x = min(max(saved.x, screen.x), screen.x + screen.width - width)
    y = min(max(saved.y, screen.y), screen.y + screen.height - height)
    return Box(x, y, width, height)


def geometry_for(stored: str, screen: Box, aspect: float, chrome_h: int) -> Box:
    """The window's geometry when it opens: the remembered one on this screen, else a default."""
    saved = Box.parse(stored)
    return placed(saved, screen) if saved is not None else default_geometry(screen, aspect, chrome_h)
