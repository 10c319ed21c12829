"""An upscale's PNG records the VAE that decoded it where it is not the model's own (the
WebUI's "VAE Encoder" / "VAE Decoder" keys), and `upscale --from-png` reads its settings back."""

from __future__ import annotations

import numpy as np
import pytest

from engine.jobs import infotext
from protocol.infotext import parse_infotext
from tests.conftest import run_cli

UPSCALE = {"kind": "upscale", "prompt": "a castle", "negative_prompt": "blur", "steps": 8, "sampler": "DPM++ 2M",
           "cfg_scale": 5.0, "seed": 42, "width": 1024, "height": 768, "model": "demo", "upscale_by": 2.0,
           "upscaler": "4x-UltraSharp", "denoising_strength": 0.3, "tile": 96, "overlap": 24, "tile_batch": 4,
           "color_fix": "wavelet"}


def write_png(path, text: str) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)


def test_upscale_infotext_names_taesd_as_the_webui_does():
    both = infotext({**UPSCALE, "vae_encoder": "TAESD", "vae_decoder": "TAESD"})
    fields = parse_infotext(both)
    assert fields["VAE Encoder"] == "TAESD" and fields["VAE Decoder"] == "TAESD"
    decoder_only = parse_infotext(infotext({**UPSCALE, "vae_decoder": "TAESD"}))  # no TAESD encoder: SD's VAE encoded
    assert decoder_only["VAE Decoder"] == "TAESD" and "VAE Encoder" not in decoder_only
    own = parse_infotext(infotext(UPSCALE))  # the model's own VAE: nothing written, as the WebUI's default "Full"
    assert "VAE Decoder" not in own and "VAE Encoder" not in own


@pytest.mark.parametrize("decoder", ["TAESD", ""])
def test_upscale_from_png_reads_the_settings_back(tmp_path, decoder):
    from bridge_server.cli import build_parser, settings_from_png

    write_png(tmp_path / "in.png", infotext({**UPSCALE, **({"vae_decoder": decoder} if decoder else {})}))
    parser = build_parser()
    parser.commands["upscale"].set_defaults(**settings_from_png(tmp_path / "in.png", "upscale"))
    args = parser.parse_args(["upscale", "--image", "x.png", "--out", "o.png", "--steps", "12"])
    assert args.fast_vae is bool(decoder)
    assert (args.scale, args.upscaler, args.denoise, args.tile, args.overlap) == (2.0, "4x-UltraSharp", 0.3, 96, 24)
    assert (args.prompt, args.negative, args.seed, args.cfg, args.sampler) == ("a castle", "blur", 42, 5.0, "DPM++ 2M")
    assert args.color_fix == "wavelet" and args.steps == 12  # a flag given still wins
    assert not hasattr(args, "subseed") and not hasattr(args, "width")  # generate's keys stay out


def test_upscaler_only_png_reads_back_as_denoise_0(tmp_path):
    from bridge_server.cli import build_parser, settings_from_png

    write_png(tmp_path / "in.png", infotext({**UPSCALE, "denoising_strength": 0.0}))
    parser = build_parser()
    parser.commands["upscale"].set_defaults(**settings_from_png(tmp_path / "in.png", "upscale"))
    args = parser.parse_args(["upscale", "--image", "x.png", "--out", "o.png"])
    assert (args.scale, args.upscaler, args.denoise, args.fast_vae) == (2.0, "4x-UltraSharp", 0.0, False)


@pytest.mark.slow  # starts the real server
def test_cli_upscale_from_png_round_trip(server, tmp_path):
    """Through the real server: an upscale's PNG, read back by `upscale --from-png`, upscales alike."""
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    common = ["--server", server.url, "--image", str(tmp_path / "in.png")]
    first = run_cli("upscale", *common, "--scale", "2", "--upscaler", "Lanczos", "--denoise", "0.3", "--steps", "2",
                    "--seed", "7", "--tile", "16", "--overlap", "4", "--out", str(tmp_path / "a.png"))
    assert first.returncode == 0, first.stderr
    again = run_cli("upscale", *common, "--from-png", str(tmp_path / "a.png"), "--out", str(tmp_path / "b.png"))
    assert again.returncode == 0, again.stderr
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in "ab")
    assert a.shape == b.shape == (64, 96, 3) and np.array_equal(a, b)
