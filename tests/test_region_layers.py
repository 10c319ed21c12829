"""Region layers -> request regions (krita_plugin/paintbridge/region_layers.py), no Krita needed."""

from __future__ import annotations

import pytest

from krita_plugin.paintbridge import requests
from krita_plugin.paintbridge.region_layers import RegionLayer, TooManyRegions, alpha_mask, regions, with_regions
from protocol.fields import from_wire, to_wire
from protocol.requests import JobRequest


def _bgra(w: int, h: int, alpha) -> bytes:
    return bytes(v for i in range(w * h) for v in (10, 20, 30, alpha(i % w, i // w)))


def test_the_alpha_is_the_mask_in_every_supported_colour_space():
    assert alpha_mask(_bgra(2, 1, lambda x, y: 0 if x == 0 else 200), "RGBA", "U8") == bytes([0, 200])
    u16 = (1000).to_bytes(2, "little") + (65535).to_bytes(2, "little")  # GRAYA U16: gray, alpha
    assert alpha_mask(u16, "GRAYA", "U16") == bytes([255])


def test_layers_become_regions_and_empty_or_hidden_ones_are_left_out():
    half = _bgra(8, 4, lambda x, y: 255 if x < 4 else 0)
    layers = [
        RegionLayer("a red hat", half, weight=1.5, negative_prompt="blurry"),
        RegionLayer("nothing painted", _bgra(8, 4, lambda x, y: 0)),
        RegionLayer("hidden", half, visible=False),
        RegionLayer("  ", half),  # no prompt: an ordinary layer
    ]
    found = regions(layers, 8, 4)
    assert [r.prompt for r in found] == ["a red hat"]
    mask = found[0].mask
    assert (mask.width, mask.height, mask.channels) == (8, 4, 1) and mask.data[:8] == bytes([255] * 4 + [0] * 4)
    assert found[0].weight == 1.5 and found[0].negative_prompt == "blurry"
    with pytest.raises(ValueError):
        regions(layers[:1], 16, 4)
    with pytest.raises(TooManyRegions):
        regions([layers[0]] * 17, 8, 4)


def test_refine_and_generate_requests_carry_them_and_pass_the_servers_checks():
    from protocol import RawImage

    half = _bgra(64, 64, lambda x, y: 255 if x < 32 else 0)
    layers = [RegionLayer("snow", half)]
    image = RawImage(64, 64, 4, bytes(64 * 64 * 4))
    settings = requests.Settings(prompt="a house", strength=0.5)
    for request in (requests.generate_request(settings, 64, 64, image),
                    requests.generate_request(requests.Settings(prompt="a house"), 61, 64, None)):
        sent = with_regions(request, layers, 64, 64)
        again = from_wire(JobRequest, to_wire(sent))  # what the server decodes
        again.validate()
        assert [r.prompt for r in again.regions] == ["snow"]
    plain = requests.generate_request(settings, 64, 64, image)
    assert with_regions(plain, [RegionLayer("x", _bgra(64, 64, lambda x, y: 0))], 64, 64).regions == []
