"""The `paintbridge` command: run the server, or talk to one.

Client commands print `job <id>` on stderr as soon as the server accepts the
job, draw a progress bar on stderr, and on failure exit non-zero with one
line saying what went wrong.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from bridge_server import __version__, control_args, sampler_args
from protocol.shell.client import Client, ClientError

DEFAULT_SERVER = "ws://127.0.0.1:8765"
EXIT_FAILED, EXIT_USAGE = 1, 2
RECONNECT_S = float(os.environ.get("PAINTBRIDGE_RECONNECT_S", "30"))  # how long to wait for a lost server


class CliError(Exception):
    """A one-line failure for the user, with its stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- argument parsing ----------------------------------------------------------
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help line (but not None/False/empty ones)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or not action.option_strings or default is None or default is False:
            return text
        if default is argparse.SUPPRESS or (isinstance(default, (str, list)) and not default):
            return text
        return f"{text} (default: %(default)s)"


ENVIRONMENT = """environment:
  PAINTBRIDGE_SERVER   the server for client commands (instead of --server)
  PAINTBRIDGE_TOKEN    the token (instead of --token; for serve: require it)
  PAINTBRIDGE_CACHE    where --demo models, the client id and state live (default ~/.cache/paintbridge)"""


def _samplers_epilog() -> str:
    import textwrap

    from engine.samplers import SAMPLER_NAMES

    names = textwrap.fill(", ".join(SAMPLER_NAMES), 78, initial_indent="  ", subsequent_indent="  ")
    return f"samplers (--sampler, the WebUI's names):\n{names}\n\n{ENVIRONMENT}"


# serve's and worker's --cpu-bf16 (figures: BENCHMARKS.md, "CPU knobs: bf16 autocast").
CPU_BF16_HELP = ("CPU: run the UNet under bf16 autocast: 0.68x the step time measured on an AVX512_BF16 CPU, "
                 "pictures drift ~1%% from float32's (the WebUI's on the CPU); no faster without AVX512_BF16/AMX")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paintbridge", description="AI painting for Krita: engine server and client.",
                                     epilog=ENVIRONMENT, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"paintbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices  # type: ignore[attr-defined]

    def command(name: str, help: str, epilog: str = ENVIRONMENT, description: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description or help, epilog=epilog, formatter_class=_Formatter)

    serve = command("serve", "run the engine server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind; 127.0.0.1 = this machine only "
                       "(any other address requires a token)")
    serve.add_argument("--port", type=int, default=8765, help="port to listen on (0 = any free port)")
    serve.add_argument("--models", type=Path, help="models folder (WebUI, ComfyUI or flat layout)")
    serve.add_argument("--demo", action="store_true", help="DEMO: serve tiny random-init models (pictures are noise)")
    serve.add_argument("--token", default=os.environ.get("PAINTBRIDGE_TOKEN", ""),
                       help="require this token from clients (PAINTBRIDGE_TOKEN)")
    serve.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="admit this Origin header, exactly as sent (a web page, or a host such as "
                       "uxp://com.example.plugin); repeatable")
    serve.add_argument("--vae", default="", help="VAE for requests that name none (the WebUI's \"SD VAE\"); "
                       "default: a checkpoint's own <name>.vae file if any, else its built-in VAE")
    serve.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    serve.add_argument("--no-preload", action="store_true", help="load the default model on the first job, not at start")
    serve.add_argument("--offload", action="store_true", help="CUDA: model CPU offload + tiled VAE, for small GPUs")
    serve.add_argument("--compile", action="store_true", help="CUDA: torch.compile the UNet (slower first job)")
    serve.add_argument("--cpu-bf16", action="store_true",
                       help=CPU_BF16_HELP)
    serve.add_argument("--threads", type=int, default=0,
                       help="CPU threads for torch (0 = the CPUs this process may use); divide a machine between "
                       "several servers or workers")
    serve.add_argument("--max-message-mib", type=int, default=300, help="largest accepted message, MiB")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every message")
    queue = serve.add_argument_group("queue (jobs survive restarts; see README: a studio with many GPUs)")
    queue.add_argument("--queue", default="embedded", metavar="URL",
                       help="'embedded' (default: SQLite in --state-dir) or redis://HOST:PORT/N (a front end; "
                       "run `paintbridge worker` processes for the jobs)")
    queue.add_argument("--state-dir", type=Path, help="embedded queue's folder (default: <cache>/state/<port>)")
    queue.add_argument("--max-queued-per-client", type=int, default=32, help="one client's queued jobs at most")
    queue.add_argument("--shutdown-grace", type=float, default=5.0,
                       help="on SIGTERM a running job may finish for this many seconds, else stops and re-runs later")

    worker = command("worker", "run jobs from a Redis queue (one per GPU; see README: a studio)")
    worker.add_argument("--queue", required=True, metavar="URL", help="redis://HOST:PORT/N, as given to serve --queue")
    worker.add_argument("--models", type=Path, help="models folder (WebUI, ComfyUI or flat layout)")
    worker.add_argument("--demo", action="store_true", help="DEMO: tiny random-init models (pictures are noise)")
    worker.add_argument("--device", help="torch device, e.g. cuda:1 (default: cuda if available, else cpu)")
    worker.add_argument("--offload", action="store_true", help="CUDA: model CPU offload + tiled VAE, for small GPUs")
    worker.add_argument("--compile", action="store_true", help="CUDA: torch.compile the UNet (slower first job)")
    worker.add_argument("--name", default="", help="this worker's name (default: host-pid)")
    worker.add_argument("--cpu-bf16", action="store_true",
                       help=CPU_BF16_HELP)
    worker.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0 = the CPUs this process may use); give each worker its share")
    worker.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    worker.add_argument("--claim-after", type=float, default=10.0,
                        help="a job whose worker sent no heartbeat for this many seconds runs again elsewhere")
    worker.add_argument("-v", "--verbose", action="store_true", help="log every job")

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", default=os.environ.get("PAINTBRIDGE_SERVER", DEFAULT_SERVER),
                       help="the server's URL (PAINTBRIDGE_SERVER)")
        p.add_argument("--token", default=os.environ.get("PAINTBRIDGE_TOKEN", ""),
                       help="the server's token, if it needs one (PAINTBRIDGE_TOKEN)")

    def detach_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--detach", action="store_true",
                       help="submit, print the job id on stdout and exit; `paintbridge result --job ID` fetches it")

    def model_args(p: argparse.ArgumentParser) -> None:
        """What every diffusion pass takes (also the tiled diffusion of an upscale)."""
        client_args(p)
        p.add_argument("--prompt", default="", help="the prompt, WebUI syntax: (word:1.2), [word], <lora:name:0.8>, BREAK")
        p.add_argument("--negative", default="", help="negative prompt")
        p.add_argument("--model", default="", help="checkpoint name (default: the server's)")
        p.add_argument("--sampler", default="Euler a", help="sampler, by its WebUI name (list below)")
        p.add_argument("--steps", type=int, default=20, help="sampling steps")
        p.add_argument("--cfg", type=float, default=7.0, help="CFG scale")
        p.add_argument("--seed", type=int, default=-1, help="-1 = random")
        p.add_argument("--eta", type=float, help="noise per step 0..1 (DDIM, default 0; ancestral samplers, default 1)")
        p.add_argument("--clip-skip", type=int, default=1, help="1 = last CLIP layer, 2 = the one before")
        p.add_argument("--vae", default="", help="a VAE from the models folder (default: the checkpoint's own)")
        p.add_argument("--schedule-type", default="Automatic",
                       help="sigma spacing: Automatic (the sampler's own), Uniform, Karras, Exponential, "
                            "Polyexponential, 'SGM Uniform', 'KL Optimal', 'Align Your Steps', Simple, Normal, DDIM, Beta")
        p.add_argument("--rng", default="gpu", choices=("gpu", "cpu", "nv"),
                       help="noise source as the WebUI's: gpu, cpu, nv (NVIDIA's generator on any machine)")
        p.add_argument("--ensd", type=int, default=0, help="WebUI 'Eta noise seed delta' (e.g. 31337)")
        sampler_args.add_args(p)
        control_args.add_control_args(p)

    def job_args(p: argparse.ArgumentParser) -> None:
        model_args(p)
        p.add_argument("--width", type=int, default=0, help="0 = the model's native size / the image's size")
        p.add_argument("--height", type=int, default=0, help="0 = the model's native size / the image's size")
        p.add_argument("--batch", type=int, default=1, help="images in one batch")
        p.add_argument("--batch-count", type=int, default=1, help="batches one after another (seeds continue)")
        p.add_argument("--subseed", type=int, default=-1, help="variation seed (-1 = random)")
        p.add_argument("--subseed-strength", type=float, default=0.0, help="variation strength 0..1")
        p.add_argument("--seed-resize-from", default="", metavar="WxH", help="WebUI 'Resize seed from width/height'")
        p.add_argument("--out", type=Path,
                       help="output PNG (required unless --detach); several images: OUT-001.png, OUT-002.png, ... "
                       "and OUT is their grid")
        detach_arg(p)
        p.add_argument("--region", action="append", default=[], metavar="MASK.png[@WEIGHT]=PROMPT[||NEGATIVE]",
                       help="a prompt for the mask's white (or opaque) pixels; repeatable. The base --prompt covers "
                       "the rest. With --from-png, MASK.png alone takes the PNG's prompt for that region")
        p.add_argument("--few-step", nargs="?", const="auto", choices=["auto", "lcm", "turbo", "lightning", "hyper"],
                       help="settings for a few-step model (steps, CFG 1, sampler): 'auto' (the default with no "
                       "value) asks the server which the model or a LoRA in the prompt is; flags given win")
        if p.prog.split()[-1] != "upscale":
            p.add_argument("--exact-size", action="store_true",
                           help="draw at exactly --width x --height (or the image's size); by default an area far "
                                "from the model's native size is drawn near native, then hires-fixed or scaled to it")

    generate = command("generate", "text to image", _samplers_epilog())
    job_args(generate)
    generate.add_argument("--from-png", type=Path, metavar="PNG",
                          help="take the settings from a PNG's WebUI 'parameters' text (other flags override)")
    grids = generate.add_argument_group("grids (one job; --out gets the labelled grid, OUT-001.png... each cell)")
    grids.add_argument("--xyz", nargs="+", metavar="AXIS=V1,V2",
                       help="X/Y/Z plot, e.g. Steps=10,20 'CFG scale=5,7' Seed=1,2 (axes: Seed, Steps, CFG scale, "
                       "Sampler, Checkpoint name, Denoising, Clip skip, Var. seed, Var. strength, Eta, VAE, Prompt S/R)")
    grids.add_argument("--prompt-matrix", action="store_true", help="combine the parts of a prompt split by |")
    grids.add_argument("--prompts-from-file", type=Path, metavar="FILE",
                       help="one prompt per line (# comments and empty lines skipped)")
    hires = generate.add_argument_group("hires fix (two passes: generate, upscale, img2img at the new size)")
    hires.add_argument("--hires-scale", type=float, default=0,
                       help="upscale by (e.g. 2; --width/--height are then the first pass, as in the WebUI); "
                            "0 = no hires fix, or the automatic one for a large area")
    hires.add_argument("--hires-upscaler", default="Latent",
                       help="Latent (in latent space), Lanczos, Nearest, or an upscaler model name (paintbridge models)")
    hires.add_argument("--hires-steps", type=int, default=0, help="0 = same as --steps")
    hires.add_argument("--hires-denoise", type=float, default=0.45, help="denoising strength (above 0.5 repaints a lot)")
    img2img = command("img2img", "image to image (refine)", _samplers_epilog())
    job_args(img2img)
    img2img.add_argument("--image", type=Path, required=True, help="the picture to refine")
    img2img.add_argument("--strength", type=float, default=0.75, help="denoising strength 0..1")
    img2img.add_argument("--resize-mode", default="just resize",
                         choices=["just resize", "crop and resize", "resize and fill", "latent upscale"],
                         help="how the image fits another --width/--height")
    inpaint = command("inpaint", "repaint where the mask is white", _samplers_epilog())
    job_args(inpaint)
    inpaint.add_argument("--image", type=Path, required=True, help="the picture to repaint")
    inpaint.add_argument("--mask", type=Path, help="gray PNG, white = repaint (optional when expanding)")
    inpaint.add_argument("--strength", type=float, default=0.75, help="denoising strength 0..1")
    inpaint.add_argument("--mask-blur", type=int, default=4, help="soft edge of the mask, pixels")
    inpaint.add_argument("--padding", type=int, default=32, help="context around the mask, pixels")
    inpaint.add_argument("--mode", default="", choices=["original", "fill", "expand", "add", "remove"],
                         help="what the masked area starts from: original pixels (default), fill (blurred, "
                              "replaced), expand (continued from its edge), add (neutral, new content), "
                              "remove (erased from its surroundings); expand when --expand-* is given")
    inpaint.add_argument("--grow", type=_px_or_auto, default=0, metavar="N|auto",
                         help="grow the mask by N px on the server (auto: 4 px)")
    inpaint.add_argument("--feather", type=_px_or_auto, default=0, metavar="N|auto",
                         help="soft edge of N px outside the grown mask (auto: 10%% of the mask's size, "
                              "at least 32 px, times the strength); replaces --mask-blur")
    inpaint.add_argument("--layer", action="store_true",
                         help="write a layer: the repainted pixels with alpha = the blend mask, transparent elsewhere")
    for side in ("left", "top", "right", "bottom"):
        inpaint.add_argument(f"--expand-{side}", type=int, default=0, metavar="N",
                             help=f"outpaint: grow the canvas by N px on the {side} and fill the new strip")

    upscale = command("upscale", "upscale an image: upscaler model, then optional tiled diffusion", _samplers_epilog())
    model_args(upscale)
    upscale.add_argument("--image", type=Path, required=True, help="the picture to upscale")
    upscale.add_argument("--out", type=Path, help="output PNG (required unless --detach)")
    detach_arg(upscale)
    upscale.add_argument("--scale", type=float, default=2.0, help="upscale by, any factor 1..8")
    upscale.add_argument("--upscaler", default="", help="upscaler model name, Lanczos or Nearest "
                         "(default: the first upscaler model)")
    upscale.add_argument("--denoise", type=float, default=0.35, help="tiled diffusion strength; 0 = the upscaler only")
    upscale.add_argument("--tile", type=int, default=64, help="latent tile size (x8 pixels)")
    upscale.add_argument("--overlap", type=int, default=16, help="latent tile overlap")
    upscale.add_argument("--tile-batch", type=int, default=4, help="tiles per UNet batch")
    upscale.add_argument("--vae-tile", type=int, default=512, help="VAE tile size in pixels (halved on out-of-memory)")
    upscale.add_argument("--color-fix", default="auto", choices=["auto", "wavelet", "adain", "none"],
                         help="after the diffusion, keep the upscaled input's colours under the new detail: "
                              "wavelet (low frequencies from the input), adain (per-channel mean/spread) or none; "
                              "auto = wavelet with --supir (the authors' default), none otherwise")
    upscale.add_argument("--fast-vae", action="store_true",
                         help="encode/decode the tiled diffusion with TAESD from the models folder (VAE-approx/)")
    upscale.add_argument("--from-png", type=Path, metavar="PNG",
                         help="take the settings from an upscaled PNG's 'parameters' text (other flags override)")
    for guided in (img2img, upscale):
        restoring = guided.add_argument_group("restore guidance (SUPIR's restoration-guided sampling)")
        restoring.add_argument("--restore-guidance", type=float, default=0.0, metavar="TAU",
                               help="pull each step toward the input: small = faithful, large = detail (0 = off)")
        restoring.add_argument("--s-churn", type=float, default=0.0, help="EDM churn with --sampler Euler (SUPIR: 5)")
        restoring.add_argument("--s-noise", type=float, default=1.0, help="EDM churn noise scale (SUPIR: 1.003)")
        restoring.add_argument("--cfg-start", type=float, help="linear CFG: this at the first step, --cfg at the last")
    supir = upscale.add_argument_group("SUPIR (an SDXL checkpoint + SUPIR-v0Q/v0F from SUPIR/ or upscale_models/)")
    supir.add_argument("--supir", default="", metavar="NAME",
                       help="restore with this SUPIR model; the authors' defaults fill what you do not set")
    supir.add_argument("--no-pre-denoise", action="store_true", help="SUPIR: skip the robust encoder's pre-denoise")
    supir.add_argument("--no-quality-prompt", action="store_true", help="SUPIR: do not append the quality prompt")

    result = command("result", "wait for a job, or fetch its finished result")
    client_args(result)
    result.add_argument("--job", required=True, help="the job id (printed as `job <id>` when it was submitted)")
    result.add_argument("--out", type=Path, required=True, help="output PNG")
    cancel = command("cancel", "cancel a queued or running job")
    client_args(cancel)
    cancel.add_argument("--job", required=True, help="the job id (printed as `job <id>` when it was submitted)")
    models = command("models", "list the server's models")
    client_args(models)
    control_args.add_preprocess_command(sub, client_args, _Formatter)

    build = command("build-plugin", "write the Krita plugin zip (Tools > Scripts > Import Python Plugin)")
    build.add_argument("--out", type=Path, default=Path("dist/paintbridge-krita.zip"), help="the zip to write")
    install = command("install-plugin", "install (or update) the Krita plugin and enable it")
    install.add_argument("--krita-dir", type=Path, help="Krita's resource folder (the one holding pykrita/)")
    install.add_argument("--kritarc", type=Path, help="Krita's kritarc settings file")
    return parser


# SUPIR's own defaults (the authors' "Quality" preset; engine/supir_upscale.py holds them
# for the engine): 50 EDM steps with churn, CFG rising 4 -> 7.5, tiles of 128 latent pixels.
SUPIR_DEFAULTS = {"steps": 50, "cfg": 7.5, "cfg_start": 4.0, "s_churn": 5.0, "s_noise": 1.003, "sampler": "Euler",
                  "tile": 128, "overlap": 64, "tile_batch": 1}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "detach", None) is False and hasattr(args, "out") and args.out is None:
        parser.commands[args.command].error("the following arguments are required: --out (or --detach)")
    try:
        if getattr(args, "from_png", None):
            # The PNG's settings become defaults; flags given explicitly still win.
            parser.commands[args.command].set_defaults(**settings_from_png(args.from_png, args.command))
            args = parser.parse_args(argv)
        if getattr(args, "few_step", None):
            # The few-step model's settings become defaults; flags given explicitly still win.
            parser.commands[args.command].set_defaults(**few_step_settings(args))
            args = parser.parse_args(argv)
        if args.command == "upscale" and args.supir:
            # The authors' defaults (engine/supir_upscale.py) where the flags were not given.
            parser.commands["upscale"].set_defaults(**SUPIR_DEFAULTS)
            args = parser.parse_args(argv)
        if args.command == "serve":
            from bridge_server.serve import run_server

            return run_server(args)
        if args.command == "worker":
            from bridge_server.queue.redis_worker import run_worker

            return run_worker(args)
        if args.command in ("build-plugin", "install-plugin"):
            return plugin_command(args)
        return run_client_command(args)
    except (ClientError, CliError) as exc:
        print(f"paintbridge: error: {exc.message if isinstance(exc, ClientError) else exc} [{exc.code}]", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        _interrupted(args)
        return 130


def plugin_command(args: argparse.Namespace) -> int:
    from bridge_server import plugin_package

    if args.command == "build-plugin":
        out = plugin_package.build_zip(args.out)
        print(f"wrote {out}: in Krita, Tools > Scripts > Import Python Plugin from File, then restart Krita")
        return 0
    krita_dir, kritarc = plugin_package.default_locations()
    target = plugin_package.install(args.krita_dir or krita_dir, args.kritarc or kritarc)
    print(f"installed the plugin in {target} and enabled it in {args.kritarc or kritarc}; restart Krita, "
          "then Settings > Dockers > PaintBridge")
    return 0


# -- client commands -------------------------------------------------------------
def client_id() -> str:
    """A stable id per user, so `paintbridge result` can fetch jobs started earlier."""
    from engine.paths import cache_dir

    path = cache_dir() / "client-id"
    try:
        value = path.read_text("ascii").strip()
        if len(value) == 32:
            return value
    except OSError:
        pass
    import uuid

    value = uuid.uuid4().hex
    path.write_text(value, "ascii")
    return value


def run_client_command(args: argparse.Namespace) -> int:
    client = Client(args.server, token=args.token, client_id=client_id(), name=f"paintbridge-cli/{__version__}")
    if args.command == "generate" and (args.xyz or args.prompt_matrix or args.prompts_from_file):
        return run_grid(client, args)
    if args.command in ("generate", "img2img", "inpaint", "upscale", "preprocess"):
        request = build_request(args)  # bad input fails before connecting
        if getattr(args, "detach", False):
            with client:
                accepted = client.submit(request)
            print(accepted.job_id)
            return 0
        with client:
            result = follow(client, request)
        write_result(result, args.out)
    elif args.command == "result":
        with client:
            result = follow(client, job_id=args.job)
        write_result(result, args.out)
    elif args.command == "cancel":
        with client:
            print(f"job {args.job}: {cancel_job(client, args.job)}")
    elif args.command == "models":
        with client:
            listing = client.list_models()
        for model in listing.models:
            mark = "*" if model.name == listing.default_model else " "
            detail = f"{model.family} {model.native_size}px" if model.family else ""
            if model.few_step is not None:
                f = model.few_step
                detail += (f"  [{f.kind}: {f.steps} steps, CFG {f.cfg_scale:g}, {f.sampler}"
                           f"{', ' + f.schedule if f.schedule else ''}]")
            print(f"{mark} {model.kind:<10} {model.name}  {detail}".rstrip())
    return 0


def cancel_job(client: Client, job_id: str, timeout: float = 60.0) -> str:
    """Cancel and wait for the outcome: a queued job ends at once, a running one
    at its next step; a finished one cannot be cancelled any more."""
    import time

    from protocol import Cancelled, Error, JobStatus, Result

    client.cancel(job_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = client.poll(max(deadline - time.monotonic(), 0.0))
        if getattr(message, "job_id", None) != job_id:
            continue
        if isinstance(message, Cancelled):
            return "cancelled"
        if isinstance(message, Result):
            return "finished before the cancel arrived (its result is kept: paintbridge result --job ...)"
        if isinstance(message, Error):
            raise ClientError(message.code, message.message, job_id, message.field)
        if isinstance(message, JobStatus) and message.state != "cancelling":
            return f"not cancelled: the job is already {message.state}"
    return "cancel requested; the job has not stopped yet"


def run_grid(client: Client, args: argparse.Namespace) -> int:
    """An X/Y/Z plot, prompt matrix or prompts from a file: one job on the
    server; the grid PNG (with labels) and each image's own PNG here."""
    from PIL import Image

    from bridge_server import grids
    from protocol import plots
    from protocol.plots import Plot

    try:
        if args.xyz:
            plot = Plot(axes=[grids.parse_axis(spec, "--xyz") for spec in args.xyz])
        elif args.prompt_matrix:
            plot = Plot(prompt_matrix=True)
        else:
            lines = args.prompts_from_file.read_text("utf-8").splitlines()
            plot = Plot(prompts=[line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")])
            if not plot.prompts:
                raise grids.GridError("the prompts file has no prompts")
    except (grids.GridError, OSError) as exc:
        raise CliError("invalid_request", str(exc)) from None
    request = build_request(args, plot)
    if getattr(args, "detach", False):  # `paintbridge result` then writes the cells (and a plain grid)
        with client:
            print(client.submit(request).job_id)
        return 0
    with client:
        result = follow(client, request)
    write_result(result, args.out, grid=False)
    images = [Image.frombytes("RGBA", (raw.width, raw.height), raw.data) for raw in result.images]
    labels = result.labels or [[] for _ in images]
    # The grid shows each cell's first image (a prompts-file line may set its own batch size).
    firsts, at = [], 0
    for cell in plots.cells(request):
        firsts.append(at)
        at += cell.request.batch_size * cell.request.batch_count
    if at == len(images):
        images, labels = [images[i] for i in firsts], [labels[i] for i in firsts]
    layout = grids.layout(plot, request.prompt, len(images))
    save_png(grids.draw_grid(images, labels, layout), args.out, result.infotexts[0] if result.infotexts else result.infotext)
    print(f"wrote {args.out} (grid of {len(images)})", file=sys.stderr)
    return 0


_CURRENT_JOB: list[str] = []  # the job this command waits for, for Ctrl-C


def _interrupted(args: argparse.Namespace) -> None:
    """Ctrl-C: a job this command submitted is cancelled on the server (it
    would otherwise run on with nobody waiting); `result` only stops waiting."""
    job = _CURRENT_JOB[-1] if _CURRENT_JOB else getattr(args, "job", "")
    if not job:
        print("paintbridge: interrupted", file=sys.stderr)
        return
    if args.command == "result":
        print(f"paintbridge: stopped waiting; job {job} goes on on the server "
              f"(paintbridge cancel --job {job} cancels it)", file=sys.stderr)
        return
    try:
        with Client(args.server, token=args.token, client_id=client_id(), open_timeout=3.0) as client:
            client.cancel(job)
        print(f"paintbridge: interrupted; cancelled job {job} on the server", file=sys.stderr)
    except (ClientError, OSError) as exc:
        print(f"paintbridge: interrupted; could not cancel job {job} ({exc}): "
              f"paintbridge cancel --job {job}", file=sys.stderr)


def few_step_settings(args: argparse.Namespace) -> dict:
    """--few-step: the flags' defaults for a few-step model (engine/fewstep.py's
    profiles). 'auto' asks the server what it recognised in the model or in
    a LoRA the prompt names. A sampler the server lacks (LCM, until it has it)
    falls back to Euler a, with a note."""
    import re

    from engine import fewstep

    client = Client(args.server, token=args.token, client_id=client_id(), name=f"paintbridge-cli/{__version__}")
    with client:
        listing = client.list_models()
        samplers = client.welcome.capabilities.samplers if client.welcome else []
    if args.few_step == "auto":
        model = args.model or listing.default_model
        loras = {m.group(1) for m in re.finditer(r"<lora:([^:>]+)", args.prompt)}
        found = [m.few_step for m in listing.models if m.few_step is not None and (
            (m.kind == "checkpoint" and m.name == model) or (m.kind == "lora" and m.name in loras))]
        if not found:
            raise CliError("invalid_request", f"--few-step: the server recognises no LCM/Turbo/Lightning/Hyper model in "
                           f"{model!r} or the prompt's LoRAs; name the kind: --few-step lightning")
        profile = found[0]
        kind, steps, cfg, sampler = profile.kind, profile.steps, profile.cfg_scale, profile.sampler
    else:
        p = fewstep.profile(args.few_step)
        kind, steps, cfg, sampler = p.kind, p.steps, p.cfg_scale, p.sampler
    if samplers and sampler not in samplers:
        print(f"paintbridge: note: the server has no {sampler} sampler; using Euler a", file=sys.stderr)
        sampler = "Euler a"
    schedule = profile.schedule if args.few_step == "auto" else p.schedule
    settings = {"steps": steps, "cfg": cfg, "sampler": sampler}
    if schedule:  # the WebUI's "Schedule type" the model was distilled for
        settings["schedule_type"] = schedule
    print(f"paintbridge: {kind}: {steps} steps, CFG {cfg:g}, {sampler}", file=sys.stderr)
    return settings


def announce(accepted) -> None:
    where = "next" if accepted.position == 0 else f"position {accepted.position}"
    _CURRENT_JOB.append(accepted.job_id)
    print(f"job {accepted.job_id}", file=sys.stderr, flush=True)
    if accepted.position:
        print(f"queued ({where})", file=sys.stderr, flush=True)


class ProgressBar:
    """A one-line progress bar on stderr, redrawn in place; `finish` ends its
    line, so what is printed next (a result, an error) starts on its own."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.drawn = False

    def __call__(self, progress) -> None:
        total = max(progress.total, 1)
        filled = int(self.width * min(progress.step, total) / total)
        bar = "#" * filled + "-" * (self.width - filled)
        tiles = f" tiles {progress.tile}/{progress.tiles}" if progress.tiles else ""
        cell = f"cell {progress.cell}/{progress.cells} " if progress.cells else ""
        line = f"{cell}{progress.stage:<15} [{bar}] {progress.step}/{total}{tiles}"
        print(f"\r{line:<78}", end="", file=sys.stderr, flush=True)
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            print(file=sys.stderr, flush=True)
            self.drawn = False


def follow(client: Client, request=None, job_id: str = ""):
    """Run a request (or wait for a job) with a progress bar that always ends its line."""
    bar = ProgressBar()
    try:
        if request is not None:
            return client.run(request, on_progress=bar, on_accepted=announce, reconnect_s=RECONNECT_S)
        return client.wait(job_id, on_progress=bar, reconnect_s=RECONNECT_S, fetch=True)
    finally:
        bar.finish()


def build_request(args: argparse.Namespace, plot=None):
    from protocol import ProtocolError, plots
    from protocol.fields import from_wire, to_wire
    from protocol.requests import JobRequest

    if args.command == "preprocess":
        return _validated(control_args.preprocess_wire(args, read_image))
    wire = {
        "kind": {"generate": "txt2img"}.get(args.command, args.command),
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "model": args.model,
        "sampler": args.sampler,
        "steps": args.steps,
        "cfg_scale": args.cfg,
        "seed": args.seed,
        "width": getattr(args, "width", 0),  # upscale has no such flag
        "height": getattr(args, "height", 0),
        "batch_size": getattr(args, "batch", 1),
        "batch_count": getattr(args, "batch_count", 1),
        "subseed": getattr(args, "subseed", -1),
        "subseed_strength": getattr(args, "subseed_strength", 0.0),
        "eta": args.eta,
        "clip_skip": args.clip_skip,
        "vae": args.vae,
        "schedule_type": args.schedule_type,
        "rng": args.rng,
        "eta_noise_seed_delta": args.ensd,
    }
    if (options := sampler_args.wire(args)) is not None:
        wire["sampler_options"] = options
    if getattr(args, "seed_resize_from", ""):
        try:
            wire["seed_resize_from_w"], wire["seed_resize_from_h"] = (int(v) for v in args.seed_resize_from.split("x"))
        except ValueError:
            raise CliError("invalid_request", f"--seed-resize-from: expected WxH, got {args.seed_resize_from!r}") from None
    if args.command != "upscale":
        # --hires-scale keeps the WebUI's meaning (width/height = the first pass), so it implies exact.
        exact = args.exact_size or bool(getattr(args, "hires_scale", 0))
        wire["resolution"] = "exact" if exact else "auto"
    if args.command in ("img2img", "upscale"):
        wire["image"] = read_image(args.image, "RGBA").to_wire()
    if args.command in ("img2img", "inpaint"):
        wire["strength"] = args.strength
    if args.command == "img2img":
        wire["resize_mode"] = args.resize_mode
    if args.command == "generate" and args.hires_scale:
        wire["hires"] = {"scale": args.hires_scale, "upscaler": args.hires_upscaler, "steps": args.hires_steps,
                         "denoise": args.hires_denoise}
    if args.command == "upscale":
        wire["upscale"] = {"scale": args.scale, "upscaler": args.upscaler, "denoise": args.denoise, "tile": args.tile,
                           "overlap": args.overlap, "tile_batch": args.tile_batch, "vae_tile": args.vae_tile,
                           "color_fix": args.color_fix}
        if args.fast_vae:
            wire["upscale"]["vae"] = "taesd"
    supir_name = getattr(args, "supir", "")
    if args.command in ("img2img", "upscale") and (args.restore_guidance or args.s_churn or args.cfg_start is not None
                                                   or supir_name):
        wire["restore"] = {"guidance": args.restore_guidance, "s_churn": args.s_churn, "s_noise": args.s_noise,
                           "cfg_start": args.cfg_start}
        if supir_name:
            wire["restore"].update(supir=supir_name, pre_denoise=not args.no_pre_denoise,
                                   quality_prompt=not args.no_quality_prompt)
    if args.command == "inpaint":
        image, mask, expanding = inpaint_inputs(args)
        wire["image"], wire["mask"] = image.to_wire(), mask.to_wire()
        wire["mask_blur"] = args.mask_blur
        wire["inpaint_padding"] = args.padding
        wire["inpaint_mode"] = args.mode or ("expand" if expanding else "original")
        wire["mask_grow"], wire["mask_feather"] = args.grow, args.feather
        wire["result_alpha"] = "mask" if args.layer else "opaque"
    if plot is not None:
        wire["plot"] = to_wire(plot)
    wire["regions"] = region_wires(getattr(args, "region", []), getattr(args, "png_regions", []))
    try:
        wire["controls"] = control_args.controls_wire(args, read_image)
    except control_args.ControlSpecError as exc:
        raise CliError("invalid_request", str(exc)) from None
    try:
        request = from_wire(JobRequest, wire)  # the server's own validation, before sending
        request.validate()
        if plot is not None:
            plots.cells(request)  # every cell's values, too
    except ProtocolError as exc:
        raise CliError(exc.code.value, _cli_field_message(exc)) from None
    return request


_FLAGS = {"negative_prompt": "--negative", "cfg_scale": "--cfg", "batch_size": "--batch", "inpaint_padding": "--padding",
          "plot": "--xyz", "inpaint_mode": "--mode", "mask_grow": "--grow", "mask_feather": "--feather",
          "result_alpha": "--layer", "resolution": "--exact-size"}


def _validated(wire: dict):
    from protocol import ProtocolError
    from protocol.fields import from_wire
    from protocol.requests import JobRequest

    try:
        request = from_wire(JobRequest, wire)
        request.validate()
    except ProtocolError as exc:
        raise CliError(exc.code.value, _cli_field_message(exc)) from None
    return request


def region_wires(specs: list[str], from_png: list[dict]) -> list[dict]:
    """`--region MASK.png[@WEIGHT]=PROMPT[||NEGATIVE]` -> wire regions. The path
    ends at the first '='; '@' followed by a number sets the weight. A PNG's
    regions (--from-png) give the prompts of specs that name only a mask; they
    cannot give masks (a PNG's text holds no pixels), so they are not used alone."""
    if from_png and not specs:
        print(f"paintbridge: note: the PNG had {len(from_png)} region(s), but a PNG's text cannot hold their masks; "
              "pass --region MASK.png for each to reproduce them", file=sys.stderr)
    regions = []
    for i, spec in enumerate(specs):
        path, sep, text = spec.partition("=")
        region: dict = {}
        if sep:
            prompt, bars, negative = text.partition("||")
            region["prompt"] = prompt
            if bars:
                region["negative_prompt"] = negative
        elif i < len(from_png):
            region.update(from_png[i])
        else:
            raise CliError("invalid_request", f"--region {spec!r}: write MASK.png=PROMPT")
        stem, at, weight = path.rpartition("@")
        if at:
            try:
                region["weight"], path = float(weight), stem
            except ValueError:
                pass  # an '@' in the file name
        region["mask"] = read_mask(Path(path)).to_wire()
        regions.append(region)
    return regions


def read_mask(path: Path):
    """A region mask: the alpha of an image that has one (an exported layer),
    else its gray levels (white = the region)."""
    from PIL import Image

    from protocol import RawImage

    image = read_image(path, "RGBA") if _has_alpha(path) else read_image(path, "L")
    if image.channels == 4:
        alpha = Image.frombytes("RGBA", image.size, image.data).getchannel("A")
        return RawImage(alpha.width, alpha.height, 1, alpha.tobytes())
    return image


def _has_alpha(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    except OSError:
        return False  # read_image reports it


def _px_or_auto(value: str) -> int:
    """--grow/--feather: pixels, or "auto" (the protocol's -1)."""
    if value == "auto":
        return -1
    try:
        px = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected pixels or 'auto', got {value!r}") from None
    if px < 0:
        raise argparse.ArgumentTypeError(f"expected pixels >= 0 or 'auto', got {value!r}")
    return px


def inpaint_inputs(args: argparse.Namespace):
    """The image and mask to send; with --expand-* the canvas grows (the new
    strip transparent, so the server pre-fills it) and the strip joins the mask."""
    import numpy as np

    from protocol import RawImage

    pad = (args.expand_left, args.expand_top, args.expand_right, args.expand_bottom)
    if min(pad) < 0:
        raise CliError("invalid_request", "--expand-*: pixels must be >= 0")
    expanding = any(pad)
    if args.mask is None and not expanding:
        raise CliError("invalid_request", "--mask: inpaint needs a mask (or --expand-left/top/right/bottom N)")
    image = read_image(args.image, "RGBA")
    if not expanding:
        return image, read_image(args.mask, "L"), False
    left, top, right, bottom = pad
    rgba = np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 4)
    height, width = image.height + top + bottom, image.width + left + right
    if max(width, height) > 8192:
        raise CliError("invalid_request", f"--expand-*: the canvas would be {width}x{height}, over 8192 px a side")
    canvas = np.zeros((height, width, 4), np.uint8)  # transparent: no colour yet
    canvas[top:top + image.height, left:left + image.width] = rgba
    mask = np.full((height, width), 255, np.uint8)
    inner = np.zeros((image.height, image.width), np.uint8)
    if args.mask is not None:
        given = read_image(args.mask, "L")
        if given.size != image.size:
            raise CliError("invalid_request", f"--mask is {given.width}x{given.height}, the image {image.width}x{image.height}")
        inner = np.frombuffer(given.data, np.uint8).reshape(image.height, image.width)
    mask[top:top + image.height, left:left + image.width] = inner
    return (RawImage(width, height, 4, canvas.tobytes()), RawImage(width, height, 1, mask.tobytes()), True)


def _cli_field_message(exc) -> str:
    if exc.field.startswith("plot.prompts"):
        return f"--prompts-from-file: {exc.message}"
    if exc.field.startswith("controls"):
        return f"--control: {exc.message}"
    if exc.field in sampler_args.flag_names():
        return f"{sampler_args.flag_names()[exc.field]}: {exc.message}"
    parts = exc.field.split(".")
    if parts[0].startswith("regions"):
        return f"--region: {exc.message}"
    name = "-".join(parts[:2]) if parts[0] == "hires" else parts[1] if parts[0] == "upscale" and len(parts) > 1 else parts[0]
    if not name:
        return exc.message
    flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
    return f"{flag}: {exc.message}"


_INFOTEXT_FLAGS = {
    "Prompt": ("prompt", str),
    "Negative prompt": ("negative", str),
    "Steps": ("steps", int),
    "Sampler": ("sampler", str),
    "CFG scale": ("cfg", float),
    "Seed": ("seed", int),
    "Model": ("model", str),
    "Clip skip": ("clip_skip", int),
    "VAE": ("vae", str),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Eta": ("eta", float),
    "Eta DDIM": ("eta", float),
    "Hires upscale": ("hires_scale", float),
    "Hires upscaler": ("hires_upscaler", str),
    "Hires steps": ("hires_steps", int),
    "ENSD": ("ensd", int),
    "RNG": ("rng", str.lower),
    "Seed resize from": ("seed_resize_from", str),
}


# An upscale's own settings (the rest of its text reads as generate's does); a text without
# "Steps" is an upscaler-only picture (denoise 0).
_UPSCALE_KEEP = ("prompt", "negative", "steps", "sampler", "schedule_type", "cfg", "seed", "model", "clip_skip", "vae",
                 "eta", "ensd", "rng", "png_controls")
_TILED_DIFFUSION = re.compile(r"tile (\d+), overlap (\d+)")


def upscale_settings(fields: dict[str, str], settings: dict) -> dict:
    """The `upscale` command's flags from a PNG's parameters (as engine/jobs.py's infotext writes them)."""
    out = {k: v for k, v in settings.items() if k in _UPSCALE_KEEP or k.startswith(sampler_args.PREFIX)}
    if "Upscale by" in fields:
        out["scale"] = float(fields["Upscale by"])
    if "Upscaler" in fields:
        out["upscaler"] = fields["Upscaler"]
    out["denoise"] = float(fields.get("Denoising strength", 0)) if "Steps" in fields else 0.0
    if match := _TILED_DIFFUSION.search(fields.get("Tiled Diffusion", "")):
        out["tile"], out["overlap"] = int(match[1]), int(match[2])
    if "Color fix" in fields:
        out["color_fix"] = fields["Color fix"].lower()  # Wavelet, AdaIN, None
    out["fast_vae"] = fields.get("VAE Decoder", "Full").upper() == "TAESD"  # the WebUI's "VAE type for decode"
    return out


def settings_from_png(path: Path, command: str = "generate") -> dict:
    from PIL import Image

    from protocol.infotext import parse_infotext, sampler_and_schedule
    from protocol.requests import SCHEDULE_TYPES

    try:
        with Image.open(path) as image:
            text = image.info.get("parameters")
    except OSError as exc:
        raise CliError("not_found", f"{path}: cannot read ({exc})") from None
    if not text:
        raise CliError("invalid_request", f"{path} has no 'parameters' text to reproduce it from")
    fields = parse_infotext(text)
    settings: dict = {}
    try:
        for key, (dest, kind) in _INFOTEXT_FLAGS.items():
            if fields.get(key):
                settings[dest] = kind(fields[key])
        if "Sampler" in fields:
            settings["sampler"], settings["schedule_type"] = sampler_and_schedule(fields, SCHEDULE_TYPES)
        if "Size" in fields:
            settings["width"], settings["height"] = (int(v) for v in fields["Size"].split("x"))
        regions, i = [], 1
        while f"Region {i} prompt" in fields:  # prompts only: masks are pixels, not text
            region: dict = {"prompt": fields[f"Region {i} prompt"]}
            if f"Region {i} negative prompt" in fields:
                region["negative_prompt"] = fields[f"Region {i} negative prompt"]
            if f"Region {i} weight" in fields:
                region["weight"] = float(fields[f"Region {i} weight"])
            regions.append(region)
            i += 1
        settings["png_regions"] = regions
        # Without a "First pass size" or "Hires resize" the image was drawn at its size: reproduce it exactly.
        settings["exact_size"] = "First pass size" not in fields and "Hires resize" not in fields
        if "Hires resize" in fields and "First pass size" not in fields:
            # An automatic-resolution image: the area is the hires target, the plan gives the first pass again.
            settings["width"], settings["height"] = (int(v) for v in fields["Hires resize"].split("x"))
            settings.pop("hires_scale", None)
        if "Denoising strength" in fields and "hires_scale" in settings:
            settings["hires_denoise"] = float(fields["Denoising strength"])
        settings["png_controls"] = control_args.png_controls(fields)  # their images come with --control
        settings.update(sampler_args.png_settings(fields))
        if command == "upscale":
            return upscale_settings(fields, settings)
    except ValueError as exc:
        raise CliError("invalid_request", f"{path}: unreadable parameters ({exc})") from None
    return settings


def read_image(path: Path, mode: str):
    from PIL import Image, UnidentifiedImageError

    from protocol import RawImage

    try:
        with Image.open(path) as image:  # Pillow's decompression-bomb limit stays on
            image = image.convert(mode)
            return RawImage(image.width, image.height, len(mode), image.tobytes())
    except FileNotFoundError:
        raise CliError("not_found", f"{path}: no such file") from None
    except Image.DecompressionBombError as exc:
        raise CliError("too_large", f"{path}: {exc}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise CliError("invalid_request", f"{path}: not a readable image ({exc})") from None


def save_png(image, path: Path, parameters: str) -> None:
    """A PNG with the WebUI's `parameters` text; RGB where the image is opaque
    (as the WebUI writes it), RGBA only where transparency carries meaning."""
    from PIL.PngImagePlugin import PngInfo

    if image.mode == "RGBA" and image.getextrema()[3][0] == 255:
        image = image.convert("RGB")
    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    image.save(path, pnginfo=info)


def write_result(result, out: Path, grid: bool = True) -> list[Path]:
    """One image: `out`. Several (a batch, a plot): out-001.png, out-002.png, ...
    with their own parameters, and (unless the caller draws its own) `out` is
    their grid, as the WebUI saves a grid for a batch."""
    from PIL import Image

    from bridge_server import grids

    paths = []
    out.parent.mkdir(parents=True, exist_ok=True)
    several = len(result.images) > 1
    parameters = result.parameters or {}
    upscale_only = parameters.get("kind") == "upscale" and not parameters.get("denoising_strength")  # no seed used
    images = []
    for i, raw in enumerate(result.images):
        path = out.with_name(f"{out.stem}-{i + 1:03d}{out.suffix}") if several else out
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[raw.channels]
        image = Image.frombytes(mode, (raw.width, raw.height), raw.data)
        images.append(image)
        save_png(image, path, result.infotexts[i] if i < len(result.infotexts) else result.infotext)
        paths.append(path)
        seed = "" if upscale_only else f" (seed {result.seeds[i]})" if i < len(result.seeds) else ""
        print(f"wrote {path}{seed}", file=sys.stderr)
    if several and grid:
        labels = [[] for _ in images]
        save_png(grids.draw_grid(images, labels, grids.layout(None, "", len(images))), out,
                 result.infotexts[0] if result.infotexts else result.infotext)
        print(f"wrote {out} (grid of {len(images)})", file=sys.stderr)
    return paths


if __name__ == "__main__":
    sys.exit(main())
