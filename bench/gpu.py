"""GPU figures next to published anchors, in one run (where CUDA is present,
e.g. through the library's device tool):

    .venv/bin/python bench/gpu.py [--compile] [--no-e2e]

- the real SD1.5 UNet at 512x512 and the real SDXL UNet at 1024x1024 (random
  init from the bundled configs: speed and memory do not depend on the
  weights' values), fp16, batch 2 (one CFG step): it/s and peak VRAM;
- end to end through our engine (registry, loader, KPipeline, Euler a, CFG 7,
  text encoders and VAE decode included, as the anchors are): a real-
  architecture single-file checkpoint per family, 20 steps; it/s = steps /
  the whole job's seconds, and the job's peak VRAM; beside it plain
  diffusers' own pipeline built independently from the same file doing the
  same job, interleaved (3 repetitions), and the time ratio with its spread;
- peak VRAM of a 4096x4096 tiled VAE decode vs a 512x512 plain decode;
- then the published figures below, each with its GPU, setup and source.

Without CUDA it is a dry run on the CPU at tiny sizes (UNets with their
channels cut to a tenth, 64x64, 2 steps, the demo models end to end), so
the script is known to work before a GPU is lent; its numbers mean nothing.
Writes bench/gpu-results.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAL = "fal-ai/stable-diffusion-benchmarks README (A100 80G SXM, fp16, 50 steps, end to end, torch 2.1)"
DIFFUSERS_TUTORIAL = ("diffusers docs, tutorials/fast_diffusion 'Accelerate inference of text-to-image diffusion "
                      "models' (A100 80GB 400W, SDXL 1024, 30 steps, batch 1; it/s = 30 / its seconds); the "
                      "figures are in sayakpaul/sample-datasets collated_results_sdxl.csv")
ALEXEIGOR = "alexeigor/sd-benchmarks README (A100-SXM4-40GB, SD1.5 512x512, fp16, batch 1; VRAM only)"

# (figure, setup, GPU, it/s or None, peak VRAM GiB or None, source). Published end-to-end it/s include the
# text encoders and the VAE decode, as our e2e figure does; the UNet-only figure runs a little faster.
# No H100 figure with a comparable, stated setup was found in the sources at hand: an H100 run prints
# ours beside the A100 anchors (H100 dense fp16 tensor throughput is about 3.2x an A100's: 989.5 vs
# 312 TFLOPS, NVIDIA's data sheets as quoted by Baseten's H100 TensorRT post).
ANCHORS = [
    ("sd15_512", "diffusers fp16, SDPA", "A100", 31.44, None, FAL),
    ("sd15_512", "diffusers fp16, SDPA, torch.compile", "A100", 37.01, None, FAL),
    ("sd15_512", "diffusers fp16, SDPA, torch.compile, channels last", "A100", 46.95, None, FAL),
    ("sd15_512", "stable-fast (torch 2.1)", "A100", 55.51, None, FAL + ", an earlier revision of the table"),
    ("sd15_512", "TensorRT 9.0 (CUDA graphs, static shapes)", "A100", 61.14, None, FAL),
    ("sd15_512", "PyTorch 2.0 fp16, xformers", "A100 40GB", None, 4.54 * 1e9 / 2**30, ALEXEIGOR),
    ("sdxl_1024", "diffusers fp16, SDPA", "A100", 8.43, None, FAL),
    ("sdxl_1024", "diffusers fp16, SDPA, torch.compile", "A100", 9.59, None, FAL),
    ("sdxl_1024", "diffusers fp16, SDPA, torch.compile, channels last", "A100", 9.73, None, FAL),
    ("sdxl_1024", "TensorRT 9.0 (CUDA graphs, static shapes)", "A100", 12.18, None, FAL),
    ("sdxl_1024", "diffusers bf16, SDPA", "A100", 30 / 3.315, 8.958 * 1e9 / 2**30, DIFFUSERS_TUTORIAL),
    ("sdxl_1024", "diffusers bf16, SDPA, torch.compile max-autotune", "A100", 30 / 2.538, 8.817 * 1e9 / 2**30,
     DIFFUSERS_TUTORIAL),
]


class Setup:
    def __init__(self, cuda: bool) -> None:
        import torch

        self.cuda = cuda
        self.device = "cuda" if cuda else "cpu"
        self.dtype = torch.float16 if cuda else torch.float32
        self.sizes = {"sd15": 512, "sdxl": 1024} if cuda else {"sd15": 64, "sdxl": 64}
        self.steps = 20 if cuda else 2

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> int:
        import torch

        if not self.cuda:
            return 0
        gc.collect()  # a finished engine's cycles hold its models' VRAM until collected
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak_gib(self, base: int) -> float | None:
        import torch

        return (torch.cuda.max_memory_allocated() - base) / 2**30 if self.cuda else None


def unet_config(family: str, cuda: bool) -> dict:
    from engine.families import FAMILIES

    config = json.loads((FAMILIES[family].config_dir / "unet" / "config.json").read_text())
    if not cuda:  # the dry run: the same blocks, a tenth of the channels
        config["block_out_channels"] = [max(32, c // 10 // 32 * 32) for c in config["block_out_channels"]]
        heads = config.get("attention_head_dim")
        config["attention_head_dim"] = [8] * len(heads) if isinstance(heads, list) else 8
        config["cross_attention_dim"] = 64
        config["norm_num_groups"] = 32
        if family == "sdxl":
            config["projection_class_embeddings_input_dim"] = 6 * config["addition_time_embed_dim"] + 64
    return config


def unet_its(setup: Setup, family: str, compile_unet: bool) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    from engine import runtime

    config = unet_config(family, setup.cuda)
    unet = UNet2DConditionModel.from_config(config).to(setup.device, setup.dtype).eval()
    if setup.cuda:
        unet = unet.to(memory_format=torch.channels_last)
    if compile_unet:
        unet = runtime.compile_unet(unet)
    size = setup.sizes[family]
    latent = torch.randn(2, 4, size // 8, size // 8, device=setup.device, dtype=setup.dtype)
    context = torch.randn(2, 77, config["cross_attention_dim"], device=setup.device, dtype=setup.dtype)
    added = None
    if family == "sdxl":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        added = {"text_embeds": torch.randn(2, pooled, device=setup.device, dtype=setup.dtype),
                 "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=setup.device,
                                          dtype=setup.dtype)}
    with torch.inference_mode():
        for _ in range(3):  # warm: kernels, cuDNN autotuning, compilation
            unet(latent, 500, encoder_hidden_states=context, added_cond_kwargs=added)
        setup.sync()
        base = setup.reset_peak()
        started = time.perf_counter()
        for _ in range(setup.steps):
            unet(latent, 500, encoder_hidden_states=context, added_cond_kwargs=added)
        setup.sync()
        seconds = time.perf_counter() - started
    peak = setup.peak_gib(base)
    del unet
    setup.reset_peak()
    return {"it_s": setup.steps / seconds, "peak_vram_gib": peak}


def engine_its(setup: Setup, family: str, compile_unet: bool, reps: int) -> dict:
    """A whole txt2img job through our engine against plain diffusers doing the
    same work, interleaved: steps / the job's seconds, the job's peak VRAM.

    The baseline is diffusers' own pipeline built independently from the same
    file (its own `from_single_file` with the bundled config, offline, its own
    EulerAncestralDiscreteScheduler, the same dtype and channels-last), called
    as its documentation calls it; only the tokenizers come from
    engine.tokenizers, because the hub that from_single_file would fetch them
    from is unreachable."""
    import statistics

    import diffusers
    import torch

    from engine.families import FAMILIES
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.params import JobParams
    from engine.registry import Registry

    if setup.cuda:
        from engine.demo.builder import build_real_architecture_checkpoint

        folder = Path(tempfile.mkdtemp(prefix="paintbridge-gpu-"))
        path = build_real_architecture_checkpoint(folder / "Stable-diffusion" / f"{family}.safetensors", family)
    else:  # the dry run: the demo models (tiny SD1.5-shaped), end to end
        from engine.demo.builder import demo_models_dir

        folder = demo_models_dir()
        path = next((folder / "Stable-diffusion").glob("*.safetensors"))
    engine = Engine(Registry(folder).scan(), ModelManager(device=setup.device, compile=compile_unet))
    size = setup.sizes[family]
    job = JobParams(prompt="a cat", width=size, height=size, steps=setup.steps, seed=1, sampler="Euler a",
                    cfg_scale=7.0, preview=False)

    pipeline_class = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    config = FAMILIES[family].config_dir if setup.cuda else None
    if config is None:  # the demo checkpoint carries its own tiny config beside it
        config = path.with_suffix(".config") if path.with_suffix(".config").is_dir() else FAMILIES["sd15"].config_dir
    plain = pipeline_class.from_single_file(
        str(path), config=str(config), local_files_only=True, torch_dtype=setup.dtype,
        **ModelManager._tokenizers(Path(config), family), **extra).to(setup.device)
    if setup.cuda:
        plain.unet.to(memory_format=torch.channels_last)
    if compile_unet:
        plain.unet = torch.compile(plain.unet)
    plain.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(plain.scheduler.config,
                                                                           timestep_spacing="linspace")
    plain.set_progress_bar_config(disable=True)

    def ours() -> None:
        engine.run(job)

    def baseline() -> None:
        plain("a cat", negative_prompt="", num_inference_steps=setup.steps, guidance_scale=7.0, width=size,
              height=size, generator=torch.Generator(setup.device).manual_seed(1), output_type="np")

    ours(), baseline()  # load and warm both
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    peaks: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for _ in range(reps):
        for name, fn in (("ours", ours), ("diffusers", baseline)):
            base = setup.reset_peak()
            started = time.perf_counter()
            fn()
            setup.sync()
            times[name].append(time.perf_counter() - started)
            peaks[name].append(setup.peak_gib(base) or 0.0)
    ratios = sorted(o / d for o, d in zip(times["ours"], times["diffusers"], strict=True))
    return {"it_s": setup.steps / statistics.median(times["ours"]),
            "peak_vram_gib": max(peaks["ours"]) if setup.cuda else None,
            "diffusers_it_s": setup.steps / statistics.median(times["diffusers"]),
            "diffusers_peak_vram_gib": max(peaks["diffusers"]) if setup.cuda else None,
            "time_ratio": statistics.median(ratios), "time_ratio_spread": [ratios[0], ratios[-1]], "reps": reps}


def vae_peak(setup: Setup, size: int, tile: int) -> float | None:
    import torch
    from diffusers import AutoencoderKL

    from engine import tiled
    from engine.families import SD15

    if not setup.cuda:
        size, tile = size // 32, tile // 32  # the dry run: 128 tiled at 16 vs 16 plain
    vae = AutoencoderKL.from_config(json.loads((SD15.config_dir / "vae" / "config.json").read_text()))
    vae = vae.to(setup.device, setup.dtype)
    latent = torch.randn(1, 4, size // 8, size // 8, device=setup.device, dtype=setup.dtype)
    base = setup.reset_peak()
    with torch.inference_mode():
        tiled.decode(vae, latent, tile)
    peak = setup.peak_gib(base)
    del vae
    setup.reset_peak()
    return None if peak is None else peak * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (dynamic shapes) as serve --compile")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end engine jobs (they build 2 + 7 GB files)")
    parser.add_argument("--family", choices=["sd15", "sdxl", "both"], default="both")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of each end-to-end job")
    args = parser.parse_args()

    import torch

    from engine import runtime

    cuda = torch.cuda.is_available()
    setup = Setup(cuda)
    runtime.configure(setup.device)
    results: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu (dry run: tiny sizes, not comparable)",
                     "torch": torch.__version__, "dtype": str(setup.dtype), "compile": args.compile}
    for family, figure in (("sd15", "sd15_512"), ("sdxl", "sdxl_1024")):
        if args.family not in (family, "both"):
            continue
        unet = unet_its(setup, family, args.compile)
        results[f"{figure}_unet_it_s"], results[f"{figure}_unet_peak_vram_gib"] = unet["it_s"], unet["peak_vram_gib"]
        if not args.no_e2e and (cuda or family == "sd15"):
            e2e = engine_its(setup, family, args.compile, args.reps)
            results[f"{figure}_engine_it_s"] = e2e["it_s"]
            results[f"{figure}_engine_peak_vram_gib"] = e2e["peak_vram_gib"]
            results[f"{figure}_diffusers_it_s"] = e2e["diffusers_it_s"]
            results[f"{figure}_diffusers_peak_vram_gib"] = e2e["diffusers_peak_vram_gib"]
            results[f"{figure}_engine_vs_diffusers_time"] = e2e["time_ratio"]
            results[f"{figure}_engine_vs_diffusers_time_spread"] = e2e["time_ratio_spread"]
    results["vae_decode_512_plain_peak_mib"] = vae_peak(setup, 512, 4096)
    results["vae_decode_4096_tiled_peak_mib"] = vae_peak(setup, 4096, 512)
    (ROOT / "bench" / "gpu-results.json").write_text(json.dumps({**results, "anchors": ANCHORS}, indent=2) + "\n")

    print(f"device: {results['device']}, torch {results['torch']}, {results['dtype']}"
          f"{', torch.compile' if args.compile else ''}")
    for figure in ("sd15_512", "sdxl_1024"):
        print(f"\n{figure}: {'it/s':>8} {'VRAM GiB':>9}  setup")
        for what in ("unet", "engine", "diffusers"):
            its = results.get(f"{figure}_{what}_it_s")
            if its is not None:
                vram = results.get(f"{figure}_{what}_peak_vram_gib")
                label = {"unet": "ours, UNet only, batch 2", "engine": "ours, whole job through the engine",
                         "diffusers": "plain diffusers pipeline, same file and job, same run"}[what]
                print(f"{'':10}{its:>8.2f} {vram if vram is None else round(vram, 2)!s:>9}  {label}")
        if f"{figure}_engine_vs_diffusers_time" in results:
            spread = results[f"{figure}_engine_vs_diffusers_time_spread"]
            print(f"{'':10}engine / diffusers job time {results[f'{figure}_engine_vs_diffusers_time']:.3f} "
                  f"(spread {spread[0]:.3f}-{spread[1]:.3f}, {args.reps} interleaved reps)")
        for name, setup_text, gpu, its, vram, _source in ANCHORS:
            if name == figure:
                its_text = f"{its:.2f}" if its is not None else "-"
                vram_text = f"{vram:.2f}" if vram is not None else "-"
                print(f"{'':10}{its_text:>8} {vram_text:>9}  {gpu}: {setup_text}")
    print(f"\nVAE decode peak: 512 plain {results['vae_decode_512_plain_peak_mib']} MiB, "
          f"4096 tiled {results['vae_decode_4096_tiled_peak_mib']} MiB")
    print("sources:\n  " + "\n  ".join(sorted({a[5] for a in ANCHORS})))


if __name__ == "__main__":
    main()
