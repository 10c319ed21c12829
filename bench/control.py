"""The cost of one ControlNet unit per denoising step, as a ratio to the plain
UNet step, on the real SD1.5 architecture (UNet 859.5M + its ControlNet
361M, random init, offline), with CFG (batch 2).

Three steps are timed interleaved, several repetitions:
- plain: `guided_unet` without units (the engine's step);
- ours: `guided_unet` with one unit (engine/control.py);
- diffusers: the same step written as StableDiffusionControlNetPipeline's loop
  does it (controlnet(...) then unet(..., down_block_additional_residuals=...)),
  the independent baseline for our overhead.

    python bench/control.py [--size 512] [--reps 5]

(bench/run calls `measure` in its own process, with the UNet its diffusers
phase loaded from the real-architecture checkpoint: the same layout.)

Prints the ratios with their spread (min..max over the repetitions) and
writes bench/control-results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    from engine.models import default_device

    device, dtype = default_device()
    results = measure(random_unet().to(device, dtype).eval(), args.size, args.reps)
    (ROOT / "bench" / "control-results.json").write_text(json.dumps(results, indent=2) + "\n")
    unit_spread, vs_spread = results["unit_step_ratio_spread"], results["ours_vs_diffusers_spread"]
    print(f"SD1.5 architecture, {args.size}x{args.size}, CFG, {device}, {args.reps} reps (median, min..max):")
    print(f"  plain UNet step            {results['plain_step_s']:.3f} s")
    print(f"  step with one unit / plain {results['unit_step_ratio']:.3f}  ({unit_spread[0]:.3f}..{unit_spread[1]:.3f})")
    print(f"  diffusers' loop / plain    {results['diffusers_unit_step_ratio']:.3f}")
    print(f"  ours / diffusers' loop     {results['ours_vs_diffusers_ratio']:.3f}  ({vs_spread[0]:.3f}..{vs_spread[1]:.3f})")


def random_unet():
    """SD1.5's UNet (the bundled config) at random init, seed 0, on the CPU in float32."""
    import torch
    from diffusers import UNet2DConditionModel

    from engine.families import SD15

    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(json.loads((SD15.config_dir / "unet" / "config.json").read_text()))


def measure(unet, side: int, reps: int) -> dict:
    """The three steps, interleaved, on `unet` (SD1.5's architecture, on its device) and a
    ControlNet made from it (diffusers' `from_unet`: the UNet's encoder plus the hint embedding).
    bench/run passes the UNet its diffusers phase loaded, so the 860M parameters are not built twice."""
    import numpy as np
    import torch
    from diffusers import ControlNetModel

    from engine.control import Control, Unit
    from engine.denoiser import Guidance, guided_unet

    device, dtype = str(unet.device), unet.dtype
    net = ControlNetModel.from_unet(unet).to(device, dtype).eval()
    x = torch.randn(1, 4, side // 8, side // 8, device=device, dtype=dtype)
    text = torch.randn(1, 77, 768, device=device, dtype=dtype)
    g = Guidance(text, torch.randn_like(text), 7.0)
    hint_image = (np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8)
    control = Control([Unit(net, hint_image)])
    t = torch.tensor(500.0, device=device)
    control.schedule([t.item()])

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def plain() -> None:
        guided_unet(unet, x, t, g)

    def ours() -> None:
        guided_unet(unet, x, t, g, control=control)

    def diffusers_loop() -> None:
        # StableDiffusionControlNetPipeline.__call__, one step with CFG.
        latent = torch.cat([x, x])
        hidden = torch.cat([g.uncond, g.cond])
        cond = control.units[0].hint(device, dtype).expand(2, -1, -1, -1)
        down, mid = net(latent, t, encoder_hidden_states=hidden, controlnet_cond=cond, conditioning_scale=1.0,
                        return_dict=False)
        out = unet(latent, t, encoder_hidden_states=hidden, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid).sample
        uncond, c = out.chunk(2)
        _ = uncond + 7.0 * (c - uncond)

    times: dict[str, list[float]] = {"plain": [], "ours": [], "diffusers": []}
    with torch.inference_mode():
        for fn in (plain, ours, diffusers_loop):  # warm-up
            fn()
        sync()
        for _ in range(reps):
            for name, fn in (("plain", plain), ("ours", ours), ("diffusers", diffusers_loop)):
                sync()
                started = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - started)
    unit_ratio = [o / p for o, p in zip(times["ours"], times["plain"], strict=True)]
    vs_diffusers = [o / d for o, d in zip(times["ours"], times["diffusers"], strict=True)]
    diffusers_ratio = [d / p for d, p in zip(times["diffusers"], times["plain"], strict=True)]
    return {
        "device": device, "size": side, "reps": reps,
        "plain_step_s": statistics.median(times["plain"]),
        "unit_step_ratio": statistics.median(unit_ratio),
        "unit_step_ratio_spread": [min(unit_ratio), max(unit_ratio)],
        "diffusers_unit_step_ratio": statistics.median(diffusers_ratio),
        "ours_vs_diffusers_ratio": statistics.median(vs_diffusers),
        "ours_vs_diffusers_spread": [min(vs_diffusers), max(vs_diffusers)],
        "params_unet_m": sum(p.numel() for p in unet.parameters()) / 1e6,
        "params_controlnet_m": sum(p.numel() for p in net.parameters()) / 1e6,
    }


if __name__ == "__main__":
    main()
