"""torch's process-wide knobs (engine/runtime.py)."""

from __future__ import annotations


def test_threads_default_to_the_usable_cpus_and_can_be_divided():
    import torch

    from engine import runtime

    before = torch.get_num_threads()
    try:
        assert runtime.configure("cpu", 1) == 1 and torch.get_num_threads() == 1
        assert runtime.configure("cpu") == runtime.usable_cpus() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_serve_takes_a_thread_count():
    from bridge_server.cli import build_parser

    args = build_parser().parse_args(["serve", "--demo", "--threads", "1"])
    assert args.threads == 1


def _channels_last(module) -> list[bool]:
    import torch

    return [m.weight.is_contiguous(memory_format=torch.channels_last) for m in module.modules()
            if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]


def test_on_the_cpu_the_vae_and_the_upscaler_are_channels_last_and_the_unet_is_not(engine):
    """runtime.cpu_layout as the loaders apply it: oneDNN's layout for the networks it speeds up
    (VAE, upscaler: bench/cpu_knobs.py --knob layout), the UNet left as it is (neutral there)."""
    model = engine.load_default()
    assert all(_channels_last(model.base.vae)) and not any(_channels_last(model.base.unet))
    upscaler = engine.upscalers.load(engine.upscalers.resolve(""))
    assert all(_channels_last(upscaler.model.model))


def test_channels_last_gives_the_same_picture():
    """The layout changes how memory is laid out, not the result: to float32 rounding."""
    import copy

    import torch
    from diffusers import AutoencoderTiny

    from engine import runtime

    torch.manual_seed(0)
    vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8)).eval()
    fast = runtime.cpu_layout(copy.deepcopy(vae), "cpu")
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        expected, got = vae.decode(vae.encode(image).latents).sample, fast.decode(fast.encode(image).latents).sample
    assert torch.allclose(got, expected, atol=1e-5)
