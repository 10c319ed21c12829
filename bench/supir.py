"""SUPIR's cost per sampling step, against a plain SDXL step on the same tile.

    .venv/bin/python bench/supir.py                 # tiny SDXL-shaped model, CPU (runs anywhere)
    .venv/bin/python bench/supir.py --shapes sdxl   # SDXL base's real architecture, CUDA fp16

One step of the SUPIR job on one latent tile is the adaptor (GLVControl) plus
the connector-modulated UNet (engine/supir.py), for the unconditional and
conditional halves in one batch. The baseline is what a plain SDXL job runs
for that tile: one call of diffusers' UNet2DConditionModel on the same batch,
same weights, same inputs. The two are timed alternately (so drift in the
machine's load hits both), and the ratio is reported as the median of the
per-pair ratios with its min..max spread. Random-init weights: speed does not
depend on their values. The SUPIR modules have the authors' shapes (ZeroSFT
hidden 128, 64-channel attention heads) for `--shapes sdxl`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def models(shapes: str, device: str, dtype):
    import torch
    from diffusers import UNet2DConditionModel

    from engine.supir import Adaptor, Connectors, connector_slots

    if shapes == "sdxl":
        from engine.families import FAMILIES

        config = json.loads((FAMILIES["sdxl"].config_dir / "unet" / "config.json").read_text())
        nhidden, pooled, size = 128, 1280, 128  # a 1024-pixel tile, as the authors' 128-latent tiles
    else:
        from engine.demo.builder import build_sdxl_folder

        folder = build_sdxl_folder(Path(tempfile.mkdtemp()) / "tiny-xl")
        config = json.loads((folder / "unet" / "config.json").read_text())
        nhidden, pooled, size = 32, 32, 64
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).to(device, dtype).eval()
    depth = config.get("transformer_layers_per_block", 1)
    depths = list(depth) if isinstance(depth, list) else [depth] * len(config["block_out_channels"])
    adaptor = Adaptor(config, depths).to(device, dtype).eval()
    slots = connector_slots(config)
    connectors = Connectors(slots, nhidden, {s.index: max(1, s.channels // 64) for s in slots if s.kind == "cross"})
    connectors.to(device, dtype).eval()
    g = torch.Generator("cpu").manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    x, lq = rand(2, 4, size, size), rand(2, 4, size, size)
    context = rand(2, 77, config["cross_attention_dim"])
    added = {"text_embeds": rand(2, pooled), "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * 2).to(device, dtype)}
    t = torch.tensor(500.0, device=device)
    return unet, adaptor, connectors, (x, lq, t, context, added), size


def main() -> None:
    import torch

    from engine.supir import unet_forward

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", choices=["tiny", "sdxl"], default="tiny")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    if args.shapes == "sdxl" and not cuda:
        sys.exit("--shapes sdxl needs CUDA (a 2.6B-parameter UNet plus the adaptor)")
    unet, adaptor, connectors, (x, lq, t, context, added), size = models(args.shapes, device, dtype)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def plain() -> None:
        unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added)

    def supir() -> None:
        control = adaptor(lq, x, t, context, added)
        unet_forward(unet, connectors, control, x, t, context, added)

    def timed(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    with torch.inference_mode():
        for _ in range(2):  # warm-up: kernels, allocator
            plain()
            supir()
        pairs = [(timed(plain), timed(supir)) for _ in range(args.repeats)]
    ratios = sorted(s / p for p, s in pairs)
    plain_ms = statistics.median(p for p, _ in pairs) * 1000
    supir_ms = statistics.median(s for _, s in pairs) * 1000
    params = sum(p.numel() for p in adaptor.parameters()) + sum(p.numel() for p in connectors.parameters())
    print(f"{args.shapes} shapes, {device} {str(dtype).removeprefix('torch.')}, one {size}x{size} latent tile, "
          f"CFG batch 2, {args.repeats} alternating pairs")
    print(f"  plain SDXL UNet step   {plain_ms:9.1f} ms (median)")
    print(f"  SUPIR step             {supir_ms:9.1f} ms (adaptor + modulated UNet; {params / 1e6:.0f}M SUPIR parameters)")
    print(f"  SUPIR / plain          {statistics.median(ratios):9.2f}x  (spread {ratios[0]:.2f}..{ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
