"""CPU knobs, measured on the real layouts (random init from the bundled
configs; speed does not depend on the weights' values), interleaved
repetitions, each ratio with its spread:

- `--knob bf16`: bf16 autocast against float32 for SD1.5's UNet (859.5M
  parameters), one denoising step (batch 2: cond + uncond), and how far bf16's
  output drifts. bf16 only pays where the CPU has bf16 dot products
  (AVX512_BF16, AMX-BF16); elsewhere oneDNN emulates it. The script prints
  which the CPU has.
- `--knob layout`: channels-last weights against PyTorch's default (NCHW)
  for SD's VAE (decode a size/8 latent, encode a size image), an ESRGAN x4
  (64 filters, 23 blocks; a size/4 input) and SD1.5's UNet (one step): what
  engine/runtime.cpu_layout decides by.

    .venv/bin/python bench/cpu_knobs.py [--knob bf16|layout] [--size 256] [--reps 3]

Writes bench/cpu-knobs-results.json (bf16) or bench/cpu-layout-results.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--knob", choices=("bf16", "layout"), default="bf16")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--nets", nargs="*", help="layout: only these (vae_decode vae_encode esrgan_x4 unet_step)")
    args = parser.parse_args()
    (layout if args.knob == "layout" else bf16)(args)


def spread_of(pairs: list[float]) -> dict:
    pairs = sorted(pairs)
    return {"median": statistics.median(pairs), "spread": [pairs[0], pairs[-1]]}


def layout(args) -> None:
    """Channels-last weights against NCHW, per network, interleaved."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from spandrel.architectures.ESRGAN import ESRGAN

    from engine import runtime
    from engine.families import SD15

    runtime.configure("cpu")
    torch.manual_seed(0)
    config = SD15.config_dir
    vae = AutoencoderKL.from_config(json.loads((config / "vae" / "config.json").read_text())).eval()
    unet = UNet2DConditionModel.from_config(json.loads((config / "unet" / "config.json").read_text())).eval()
    esrgan = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4).eval()
    side = args.size
    latent, image = torch.randn(1, 4, side // 8, side // 8), torch.rand(1, 3, side, side) * 2 - 1
    small = torch.rand(1, 3, side // 4, side // 4)
    noisy, context = torch.randn(2, 4, side // 8, side // 8), torch.randn(2, 77, 768)
    # Each network twice, one copy per layout: switching one copy's layout between runs would make
    # every timed call the first after a reformat.
    work = {
        "vae_decode": (vae, lambda m: m.decode(latent).sample),
        "vae_encode": (vae, lambda m: m.encode(image).latent_dist.mean),
        "esrgan_x4": (esrgan, lambda m: m(small)),
        "unet_step": (unet, lambda m: m(noisy, 500, encoder_hidden_states=context).sample),
    }
    work = {name: item for name, item in work.items() if not args.nets or name in args.nets}
    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "size": side, "reps": args.reps}
    with torch.inference_mode():
        for name, (net, run) in work.items():
            times: dict[str, list[float]] = {"nchw": [], "channels_last": []}
            outputs = {}
            copies = {"nchw": net, "channels_last": copy.deepcopy(net).to(memory_format=torch.channels_last)}
            for _ in range(args.reps + 1):  # the first round warms both layouts up and is not counted
                for fmt, model in copies.items():
                    started = time.perf_counter()
                    outputs[fmt] = run(model)
                    times[fmt].append(time.perf_counter() - started)
            del copies
            ratio = spread_of([c / n for c, n in zip(times["channels_last"][1:], times["nchw"][1:], strict=True)])
            results[name] = {"nchw_s": statistics.median(times["nchw"][1:]), "channels_last_vs_nchw": ratio["median"],
                             "spread": ratio["spread"],
                             "max_abs_diff": (outputs["channels_last"] - outputs["nchw"]).abs().max().item()}
            print(f"{name:<11} NCHW {results[name]['nchw_s']:7.2f} s   channels-last / NCHW "
                  f"{ratio['median']:.3f} ({ratio['spread'][0]:.3f}..{ratio['spread'][1]:.3f})   "
                  f"max |diff| {results[name]['max_abs_diff']:.1e}")
    (ROOT / "bench" / "cpu-layout-results.json").write_text(json.dumps(results, indent=2) + "\n")


def bf16(args) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    from engine import runtime
    from engine.families import SD15

    runtime.configure("cpu")
    config = json.loads((SD15.config_dir / "unet" / "config.json").read_text())
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).eval()
    side = args.size // 8
    latent = torch.randn(2, 4, side, side)
    context = torch.randn(2, 77, config["cross_attention_dim"])

    def step(bf16: bool) -> torch.Tensor:
        with torch.inference_mode(), runtime.cpu_autocast(bf16):
            return unet(latent, 500, encoder_hidden_states=context).sample.float()

    reference, lowered = step(False), step(True)  # warm both (oneDNN primitives, allocator)
    drift = ((lowered - reference).abs().max() / reference.abs().max()).item()
    # Wall seconds, and CPU seconds of this process (all its threads): on a machine shared with other work
    # the CPU time is the steadier of the two (it does not count the time others hold the cores).
    times: dict[str, list[float]] = {"fp32": [], "bf16": [], "fp32_cpu": [], "bf16_cpu": []}
    for _ in range(args.reps):
        for name in ("fp32", "bf16"):
            started, cpu = time.perf_counter(), time.process_time()
            step(name == "bf16")
            times[name].append(time.perf_counter() - started)
            times[name + "_cpu"].append(time.process_time() - cpu)
    pairs = sorted(b / f for b, f in zip(times["bf16"], times["fp32"], strict=True))
    cpu_pairs = sorted(b / f for b, f in zip(times["bf16_cpu"], times["fp32_cpu"], strict=True))
    results = {
        "cpu_bf16_flags": cpu_flags(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "fp32_step_s": statistics.median(times["fp32"]),
        "bf16_step_s": statistics.median(times["bf16"]),
        "bf16_vs_fp32_time_ratio": statistics.median(pairs),
        "bf16_vs_fp32_time_ratio_spread": [pairs[0], pairs[-1]],
        "bf16_vs_fp32_cpu_time_ratio": statistics.median(cpu_pairs),
        "bf16_vs_fp32_cpu_time_ratio_spread": [cpu_pairs[0], cpu_pairs[-1]],
        "bf16_max_rel_drift": drift,
    }
    (ROOT / "bench" / "cpu-knobs-results.json").write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key:<34} {value}")


if __name__ == "__main__":
    main()
