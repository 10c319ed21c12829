"""Automatic resolution (protocol/resolution.py): area x family -> first pass, final."""

from __future__ import annotations

import pytest

from protocol.resolution import AS_IS, DOWNSCALE, HIRES, NATIVE_SIZE, plan, plan_for_family

TABLE = [
    # area,        family, first pass,   final,        mode
    ((512, 512), "sd15", (512, 512), (512, 512), AS_IS),
    ((512, 768), "sd15", (512, 768), (512, 768), AS_IS),  # SD 1.5's usual portrait
    ((600, 500), "sd15", (600, 504), (600, 500), AS_IS),  # a layer's odd size: work at x8, give back the area
    ((1024, 768), "sd15", (592, 440), (1024, 768), HIRES),  # the canvas
    ((2048, 1536), "sd15", (592, 440), (2048, 1536), HIRES),
    ((1000, 700), "sd15", (608, 432), (1000, 700), HIRES),
    ((256, 256), "sd15", (512, 512), (256, 256), DOWNSCALE),
    ((320, 200), "sd15", (648, 408), (320, 200), DOWNSCALE),
    ((768, 768), "sd2", (768, 768), (768, 768), AS_IS),
    ((1920, 1080), "sd2", (1024, 576), (1920, 1080), HIRES),
    ((512, 512), "sd2", (768, 768), (512, 512), DOWNSCALE),
    ((1024, 1024), "sdxl", (1024, 1024), (1024, 1024), AS_IS),
    ((1152, 896), "sdxl", (1152, 896), (1152, 896), AS_IS),  # an SDXL bucket
    ((2048, 1536), "sdxl", (1184, 888), (2048, 1536), HIRES),
    ((4096, 4096), "sdxl", (1024, 1024), (4096, 4096), HIRES),
    ((512, 512), "sdxl", (1024, 1024), (512, 512), DOWNSCALE),
]


@pytest.mark.parametrize(("area", "family", "first", "final", "mode"), TABLE)
def test_plan_table(area, family, first, final, mode):
    result = plan_for_family(*area, family)
    assert (result.first, result.final, result.mode) == (first, final, mode)


@pytest.mark.parametrize("family", sorted(NATIVE_SIZE))
@pytest.mark.parametrize("area", [(3000, 2000), (2000, 3000), (1600, 1600), (300, 200), (4096, 1024), (64, 64)])
def test_first_pass_is_native_sized_with_the_area_aspect(family, area):
    native = NATIVE_SIZE[family]
    result = plan_for_family(*area, family)
    w, h = result.first
    assert w % 8 == 0 and h % 8 == 0 and min(w, h) >= 64
    assert result.final == area
    if result.mode != AS_IS:
        assert abs(w / h - area[0] / area[1]) / (area[0] / area[1]) < 0.08  # aspect kept (x8 rounding)
        if min(area) * (native * native / (area[0] * area[1])) ** 0.5 >= native / 2:
            assert 0.9 < w * h / native**2 < 1.1  # near the native pixel count
    if result.mode == HIRES:
        assert w < area[0] and h < area[1]
    if result.mode == DOWNSCALE:
        assert w > area[0] and h > area[1]


def test_thin_strips_keep_a_drawable_short_side():
    result = plan(4096, 512, 512)  # a banner on SD 1.5
    assert result.mode == HIRES and min(result.first) >= 256


def test_bad_input():
    with pytest.raises(ValueError):
        plan(0, 512, 512)
