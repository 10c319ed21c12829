"""The rules that keep Krita's window inside a 1280x800 screen (krita_plugin/paintbridge/fit.py).

The real Krita checks the outcome (tests/test_krita_real.py: every mode's window frame
<= 800 px); these check the rules on their own, without Krita.
"""

from __future__ import annotations

from krita_plugin.paintbridge import fit


def test_the_tabs_show_inline_only_with_room_for_a_page():
    assert not fit.shows_inline(0, 37)  # a 1280x800 screen: the docker has no room, the drawer opens
    assert not fit.shows_inline(37 + fit.INLINE_HEIGHT - 1, 37)
    assert fit.shows_inline(37 + fit.INLINE_HEIGHT, 37)


def test_the_extras_need_one_row_and_ask_for_all():
    assert fit.extras_heights([], []) == (0, 0)  # nothing shown: no height at all
    assert fit.extras_heights([29], [29]) == (29, 29)  # one control row
    # SUPIR ticked (two rows, 49 px) and two control rows with a gear open: the first row needed
    low, high = fit.extras_heights([24, 29], [49, 29 + 52])
    assert low == 24 and high == 49 + 81 + fit.SPACING
    assert fit.extras_heights([30], [20]) == (30, 30)  # never a maximum below the minimum


def test_what_goes_is_hidden_before_what_comes_is_shown():
    # Live on: the queue's widgets hide first, then the picture shows (never both at once)
    changes = [("tabs", False), ("picture", True), ("progress", False), ("message", False)]
    assert fit.hide_first(changes) == [("tabs", False), ("progress", False), ("message", False), ("picture", True)]
    # Live off: the picture first, then the queue's widgets come back, in their order
    assert fit.hide_first([("tabs", True), ("progress", True), ("picture", False)]) == [
        ("picture", False), ("tabs", True), ("progress", True)]
