"""The popped-out live picture's rules (krita_plugin/paintbridge/popout.py), no Krita needed."""

from __future__ import annotations

from krita_plugin.paintbridge import popout
from krita_plugin.paintbridge.popout import Box
from krita_plugin.paintbridge.prefs import Store

SCREEN = Box(0, 0, 1280, 800)  # Xvfb's screen, no panels


def test_the_picture_fills_the_window_keeping_its_aspect_centred():
    assert popout.fit_picture(256, 256, 600, 400) == Box(100, 0, 400, 400)
    assert popout.fit_picture(512, 256, 600, 400) == Box(0, 50, 600, 300)
    assert popout.fit_picture(64, 48, 640, 480) == Box(0, 0, 640, 480)  # scaled up: the window is for seeing it large
    place = popout.fit_picture(1000, 333, 301, 97)
    assert abs(place.width / place.height - 1000 / 333) < 0.02 and place.width <= 301 and place.height <= 97
    assert popout.fit_picture(0, 10, 100, 100) == Box(0, 0, 0, 0)
    assert popout.fit_picture(10, 10, 0, 100) == Box(0, 0, 0, 0)


def test_geometry_round_trips_through_the_settings_and_garbage_is_ignored():
    store = Store.memory()
    store.set(popout.STORE_KEY, Box(-20, 35, 640, 480).to_text())
    assert Box.parse(store.get(popout.STORE_KEY)) == Box(-20, 35, 640, 480)
    for bad in ("", "1,2,3", "a,b,c,d", "1,2,0,5", "1,2,3,-4", "1.5,2,3,4"):
        assert Box.parse(bad) is None, bad


def test_the_first_window_is_large_on_a_1280x800_screen_and_on_it():
    chrome = 36
    square = popout.default_geometry(SCREEN, 1.0, chrome)
    assert square.height - chrome >= 400 and square.height <= 800  # the picture: 560 - 36 px tall
    assert square.width == square.height - chrome  # a square picture, no bars beside it
    assert popout.placed(square, SCREEN) == square
    wide = popout.default_geometry(SCREEN, 4.0, chrome)  # too wide for the screen at that height
    assert wide.width == 1280 - 2 * popout.LEFT_MARGIN and wide.x + wide.width <= 1280
    assert abs(wide.width / (wide.height - chrome) - 4.0) < 0.02
    tiny = popout.default_geometry(Box(0, 0, 300, 200), 1.0, chrome)
    assert popout.placed(tiny, Box(0, 0, 300, 200)) == tiny and tiny.width >= popout.MIN_WIDTH


def test_a_remembered_window_is_brought_back_onto_the_screen_it_opens_on():
    assert popout.placed(Box(100, 50, 500, 400), SCREEN) == Box(100, 50, 500, 400)  # as left
    assert popout.placed(Box(1900, 900, 500, 400), SCREEN) == Box(780, 400, 500, 400)  # a second screen gone
    assert popout.placed(Box(-300, -10, 500, 400), SCREEN) == Box(0, 0, 500, 400)
    assert popout.placed(Box(0, 0, 2560, 1440), SCREEN) == SCREEN  # from a larger screen: no larger than this one
    assert popout.placed(Box(10, 10, 20, 20), SCREEN) == Box(10, 10, popout.MIN_WIDTH, popout.MIN_HEIGHT)
    offset = Box(1280, 0, 1920, 1080)  # a second screen to the right
    assert popout.placed(Box(1400, 100, 800, 600), offset) == Box(1400, 100, 800, 600)


def test_the_stored_geometry_wins_over_the_default():
    assert popout.geometry_for("100,50,500,400", SCREEN, 1.0, 36) == Box(100, 50, 500, 400)
    assert popout.geometry_for("", SCREEN, 1.0, 36) == popout.default_geometry(SCREEN, 1.0, 36)
    assert popout.geometry_for("garbage", SCREEN, 1.0, 36) == popout.default_geometry(SCREEN, 1.0, 36)
