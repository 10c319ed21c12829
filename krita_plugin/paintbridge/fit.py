"""Rules that keep Krita's window inside a 1280x800 screen (plain Python, no Qt).

Measured in the real Krita 5.1.5 under Xvfb at 1280x800 with Krita's default dockers:
every docker of the right column (Advanced Color Selector 110 px, Layers 184, Brush
Presets 118, PaintBridge) sits at its minimum height, and Krita's window is as tall as
the screen. Any pixel of minimum height the PaintBridge docker adds makes the window a
pixel taller than the screen: the Generate button, the status line and Krita's own
status bar then lie below its bottom. Qt grows the window the moment a minimum rises
(inside QWidget.setVisible, synchronously) and never shrinks it back when it falls. So:

- every part whose height varies asks for no more than one row (`extras_heights`) or for
  nothing at all (`shows_inline`), and scrolls or moves to a drawer;
- on a switch, what goes away is hidden before what comes is shown (`hide_first`).

The Qt side: docker.py, drawer.py, extras.py, live_ui.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")

INLINE_HEIGHT = 160  # px of tab content below which the Regions/Options/Server tabs go to the drawer
SPACING = 2  # px between the rows of the scrolled extras


def shows_inline(room: int, tab_bar: int) -> bool:
    """Whether a holder `room` px tall shows the tabs inline (their bar and enough of a page)."""
    return room - tab_bar >= INLINE_HEIGHT


def extras_heights(first_rows: list[int], full: list[int], spacing: int = SPACING) -> tuple[int, int]:
    """(minimum, maximum) height of the scroll area for the shown panels: the first panel's
    first row at least (so something is always seen), all of them at most."""
    if not first_rows:
        return 0, 0
    return first_rows[0], max(first_rows[0], sum(full) + spacing * (len(full) - 1))


def hide_first(changes: Iterable[tuple[T, bool]]) -> list[tuple[T, bool]]:
    """(widget, visible) changes in a safe order: every hide before any show, else in order."""
    changes = list(changes)
    return [c for c in changes if not c[1]] + [c for c in changes if c[1]]
