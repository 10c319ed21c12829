"""Infotext as the WebUI 1.6-1.10 writes and reads it: Schedule type, RNG, ENSD,
seed resize, JSON-quoted values, any Unicode."""

from __future__ import annotations

import pytest

from engine.jobs import infotext
from engine.samplers import SAMPLERS
from protocol.infotext import WEBUI19_AUTOMATIC, parse_infotext, quote, sampler_and_schedule, unquote
from protocol.requests import SCHEDULE_TYPES

WEBUI_110 = (
    "a castle, (masterpiece:1.2)\nNegative prompt: blurry, lowres\n"
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, "
    'Model hash: abc, Model: "v1-5, pruned", Variation seed: 99, Variation seed strength: 0.3, '
    "Seed resize from: 512x512, RNG: CPU, ENSD: 31337, Version: v1.10.1"
)


def test_reads_a_webui_110_text():
    fields = parse_infotext(WEBUI_110)
    assert fields["Prompt"] == "a castle, (masterpiece:1.2)" and fields["Negative prompt"] == "blurry, lowres"
    assert fields["Model"] == "v1-5, pruned" and fields["Schedule type"] == "Karras"
    assert fields["RNG"] == "CPU" and fields["ENSD"] == "31337" and fields["Seed resize from"] == "512x512"
    assert sampler_and_schedule(fields, SCHEDULE_TYPES) == ("DPM++ 2M", "Karras")


@pytest.mark.parametrize(("sampler", "given", "expected"), [
    ("DPM++ 2M", "Automatic", "Karras"),  # 1.9+: Automatic meant the sampler's own default
    ("DPM++ 2M SDE", "Automatic", "Exponential"),
    ("Euler a", "Automatic", "Automatic"),
    ("DPM++ 2M Karras", "", "Automatic"),  # 1.6-1.8: the name says it
    ("Euler", "karras", "Karras"),  # 1.6-1.8's global override, lowercase
    ("Euler", "sgm_uniform", "SGM Uniform"),
])
def test_schedule_type_honoured(sampler, given, expected):
    fields = {"Sampler": sampler, **({"Schedule type": given} if given else {})}
    assert sampler_and_schedule(fields, SCHEDULE_TYPES) == (sampler, expected)


def test_webui19_defaults_agree_with_the_engines_table():
    engine_table = {s.name: s.webui19_schedule for s in SAMPLERS.values() if s.webui19_schedule}
    assert engine_table == {k: v for k, v in WEBUI19_AUTOMATIC.items() if k != "Restart"}
    assert SAMPLERS["Restart"].schedule == WEBUI19_AUTOMATIC["Restart"]


@pytest.mark.parametrize("value", ["plain", "a, b", 'say "hi": now', "line\nbreak", "Ünïcödé 模型, ✓", "back\\slash, x"])
def test_quoted_values_are_json_strings(value):
    written = quote(value)
    assert unquote(written) == value
    if any(c in value for c in ",:\n"):
        assert written.startswith('"') and "\\u" not in written  # Unicode kept, as the WebUI writes it
    assert unquote('"\\u00fc"') == "ü" and unquote('"broken') == '"broken'


def test_our_text_round_trips_with_unicode_and_every_new_field():
    p = {"kind": "txt2img", "prompt": "ein Schloß, 城堡 (art:1.1)", "negative_prompt": "ぼやけた", "steps": 20,
         "sampler": "DPM++ 2M SDE Heun", "schedule_type": "SGM Uniform", "cfg_scale": 7.0, "seed": 5,
         "width": 512, "height": 512, "model": "Modèle, spécial: v2", "subseed": 9, "subseed_strength": 0.25,
         "seed_resize_from": (256, 384), "rng": "nv", "ensd": 31337, "vae": "vä, e"}
    text = infotext(p)
    assert "Sampler: DPM++ 2M SDE Heun, Schedule type: SGM Uniform," in text
    assert "RNG: NV" in text and "ENSD: 31337" in text and "Seed resize from: 256x384" in text
    fields = parse_infotext(text)
    assert fields["Prompt"] == p["prompt"] and fields["Negative prompt"] == p["negative_prompt"]
    assert fields["Model"] == p["model"] and fields["VAE"] == p["vae"]
    assert sampler_and_schedule(fields, SCHEDULE_TYPES) == ("DPM++ 2M SDE Heun", "SGM Uniform")
    assert fields["Variation seed strength"] == "0.25"


def test_cli_reads_every_field_from_a_png(tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from bridge_server.cli import build_parser, settings_from_png

    info = PngInfo()
    info.add_text("parameters", WEBUI_110.replace("Schedule type: Karras", "Schedule type: Automatic"))
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png", pnginfo=info)
    settings = settings_from_png(tmp_path / "in.png")
    assert settings["sampler"] == "DPM++ 2M" and settings["schedule_type"] == "Karras"  # 1.9+'s Automatic
    assert settings["rng"] == "cpu" and settings["ensd"] == 31337 and settings["seed_resize_from"] == "512x512"
    assert settings["model"] == "v1-5, pruned" and settings["subseed_strength"] == 0.3
    parser = build_parser()
    parser.commands["generate"].set_defaults(**settings)
    args = parser.parse_args(["generate", "--out", str(tmp_path / "o.png"), "--schedule-type", "Beta"])
    assert args.schedule_type == "Beta" and args.rng == "cpu"  # a flag given still wins
