"""Big transfers to and from Krita a strip at a time (krita_plugin/paintbridge/strips.py), without Krita."""

from __future__ import annotations

import pytest

from krita_plugin.paintbridge import strips


@pytest.mark.parametrize("height,row_bytes,budget", [(4096, 4096 * 4, strips.STRIP_BYTES), (1, 16, 1024),
                                                     (1000, 3000, 7000), (7, 10_000, 100), (4096, 4096 * 8, 2 << 20)])
def test_row_strips_cover_every_row_once_within_the_budget(height, row_bytes, budget):
    parts = strips.row_strips(height, row_bytes, budget)
    rows = [y for top, count in parts for y in range(top, top + count)]
    assert rows == list(range(height))
    assert all(count * row_bytes <= budget or count == 1 for _top, count in parts)
    assert all(count >= 1 for _top, count in parts)


def test_a_4096_layer_goes_in_2_mib_strips():
    parts = strips.row_strips(4096, 4096 * 4)
    assert len(parts) == 32 and {count for _top, count in parts} == {128}


def _image(width, height, size):
    return bytes((x * 7 + y * 13 + c) % 256 for y in range(height) for x in range(width) for c in range(size))


def test_read_strips_reassembles_the_rows_and_converts_each_strip():
    width, height = 37, 23
    data = _image(width, height, 4)
    asked = []

    def read(y, rows):
        asked.append((y, rows))
        return data[y * width * 4:(y + rows) * width * 4]

    def swap(part, rows):  # BGRA -> RGBA, like the Qt conversion kritadoc hands in
        out = bytearray(part)
        out[0::4], out[2::4] = part[2::4], part[0::4]
        return bytes(out)

    out = strips.read_strips(read, width, height, 4, swap, 4, budget=width * 4 * 5)
    expected = bytearray(data)
    expected[0::4], expected[2::4] = data[2::4], data[0::4]
    assert out == expected
    assert len(asked) == 5 and all(rows <= 5 for _y, rows in asked)


def test_read_strips_changes_the_pixel_size():
    width, height = 5, 9
    gray = _image(width, height, 2)  # gray + alpha -> RGBA

    def to_rgba(part, rows):
        out = bytearray(width * rows * 4)
        out[0::4] = out[1::4] = out[2::4] = part[0::2]
        out[3::4] = part[1::2]
        return bytes(out)

    out = strips.read_strips(lambda y, rows: gray[y * width * 2:(y + rows) * width * 2], width, height, 2, to_rgba, 4, budget=40)
    assert len(out) == width * height * 4 and out[3::4] == gray[1::2] and out[0::4] == gray[0::2]


def test_a_short_read_is_an_error_not_a_shifted_image():
    with pytest.raises(strips.ShortRead):
        strips.read_strips(lambda y, rows: b"" if y else b"\0" * 40 * rows, 10, 8, 4, budget=80)


def test_write_strips_writes_every_row_at_its_place():
    width, height = 11, 17
    data = _image(width, height, 4)
    target = bytearray(len(data))
    calls = []

    def write(part, y, rows):
        calls.append((y, rows))
        assert isinstance(part, bytes) and len(part) == width * rows * 4
        target[y * width * 4:(y + rows) * width * 4] = part

    assert strips.write_strips(write, memoryview(data), width, height, 4, budget=width * 4 * 4) == 5
    assert target == data and calls[0] == (0, 4) and calls[-1] == (16, 1)


def test_write_strips_refuses_a_buffer_of_the_wrong_size():
    with pytest.raises(ValueError):
        strips.write_strips(lambda *a: None, b"\0" * 10, 2, 2, 4)
