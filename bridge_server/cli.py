"""The `paintbridge` command: run the server, or talk to one.

Client commands print `job <id>` on stderr as soon as the server accepts the
job, draw a progress bar on stderr, and on failure exit non-zero with one
line saying what went wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bridge_server import __version__
from bridge_server.client import Client, ClientError

DEFAULT_SERVER = "ws://127.0.0.1:8765"
EXIT_FAILED, EXIT_USAGE = 1, 2
RECONNECT_S = float(os.environ.get("PAINTBRIDGE_RECONNECT_S", "30"))  # how long to wait for a lost server


class CliError(Exception):
    """A one-line failure for the user, with its stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- argument parsing ----------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paintbridge", description="AI painting for Krita: engine server and client.")
    parser.add_argument("--version", action="version", version=f"paintbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices  # type: ignore[attr-defined]

    serve = sub.add_parser("serve", help="run the engine server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--models", type=Path, help="models folder (WebUI, ComfyUI or flat layout)")
    serve.add_argument("--demo", action="store_true", help="DEMO: serve tiny random-init models (pictures are noise)")
    serve.add_argument("--token", default=os.environ.get("PAINTBRIDGE_TOKEN", ""), help="require this token from clients")
    serve.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN", help="allow a browser origin")
    serve.add_argument("--vae", default="", help="VAE for requests that name none (the WebUI's \"SD VAE\"); "
                       "default: a checkpoint's own <name>.vae file if any, else its built-in VAE")
    serve.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    serve.add_argument("--no-preload", action="store_true", help="load the default model on the first job, not at start")
    serve.add_argument("--offload", action="store_true", help="CUDA: model CPU offload + tiled VAE, for small GPUs")
    serve.add_argument("--compile", action="store_true", help="CUDA: torch.compile the UNet (slower first job)")
    serve.add_argument("--max-message-mib", type=int, default=300, help="largest accepted message (default 300 MiB)")
    serve.add_argument("-v", "--verbose", action="store_true")
    queue = serve.add_argument_group("queue (jobs survive restarts; see README: a studio with many GPUs)")
    queue.add_argument("--queue", default="embedded", metavar="URL",
                       help="'embedded' (default: SQLite in --state-dir) or redis://HOST:PORT/N (a front end; "
                       "run `paintbridge worker` processes for the jobs)")
    queue.add_argument("--state-dir", type=Path, help="embedded queue's folder (default: <cache>/state/<port>)")
    queue.add_argument("--max-queued-per-client", type=int, default=32, help="one client's queued jobs (default 32)")
    queue.add_argument("--shutdown-grace", type=float, default=5.0,
                       help="on SIGTERM a running job may finish for this many seconds, else stops and re-runs later")

    worker = sub.add_parser("worker", help="run jobs from a Redis queue (one per GPU; see README: a studio)")
    worker.add_argument("--queue", required=True, metavar="URL", help="redis://HOST:PORT/N, as given to serve --queue")
    worker.add_argument("--models", type=Path, help="models folder (WebUI, ComfyUI or flat layout)")
    worker.add_argument("--demo", action="store_true", help="DEMO: tiny random-init models (pictures are noise)")
    worker.add_argument("--device", help="torch device, e.g. cuda:1 (default: cuda if available, else cpu)")
    worker.add_argument("--offload", action="store_true", help="CUDA: model CPU offload + tiled VAE, for small GPUs")
    worker.add_argument("--compile", action="store_true", help="CUDA: torch.compile the UNet (slower first job)")
    worker.add_argument("--name", default="", help="this worker's name (default: host-pid)")
    worker.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    worker.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    worker.add_argument("--claim-after", type=float, default=10.0,
                        help="a job whose worker sent no heartbeat for this many seconds runs again elsewhere")
    worker.add_argument("-v", "--verbose", action="store_true")

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", default=os.environ.get("PAINTBRIDGE_SERVER", DEFAULT_SERVER))
        p.add_argument("--token", default=os.environ.get("PAINTBRIDGE_TOKEN", ""))

    def job_args(p: argparse.ArgumentParser) -> None:
        client_args(p)
        p.add_argument("--prompt", default="")
        p.add_argument("--negative", default="", help="negative prompt")
        p.add_argument("--model", default="", help="checkpoint name (default: the server's)")
        p.add_argument("--sampler", default="Euler a")
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--cfg", type=float, default=7.0, help="CFG scale")
        p.add_argument("--seed", type=int, default=-1, help="-1 = random")
        p.add_argument("--width", type=int, default=0, help="0 = the model's native size / the image's size")
        p.add_argument("--height", type=int, default=0)
        p.add_argument("--batch", type=int, default=1, help="images in one batch")
        p.add_argument("--batch-count", type=int, default=1, help="batches one after another (seeds continue)")
        p.add_argument("--subseed", type=int, default=-1, help="variation seed (-1 = random)")
        p.add_argument("--subseed-strength", type=float, default=0.0, help="variation strength 0..1")
        p.add_argument("--eta", type=float, help="noise per step 0..1 (DDIM, default 0; ancestral samplers, default 1)")
        p.add_argument("--clip-skip", type=int, default=1, help="1 = last CLIP layer, 2 = the one before")
        p.add_argument("--vae", default="", help="a VAE from the models folder (default: the checkpoint's own)")
        p.add_argument("--out", type=Path, required=True, help="output PNG (a batch adds -2, -3, ...)")

    generate = sub.add_parser("generate", help="text to image")
    job_args(generate)
    generate.add_argument("--from-png", type=Path, metavar="PNG",
                          help="take the settings from a PNG's WebUI 'parameters' text (other flags override)")
    grids = generate.add_argument_group("grids (each cell is a job; --out gets the labelled grid)")
    grids.add_argument("--xyz", nargs="+", metavar="AXIS=V1,V2", help="X/Y/Z plot, e.g. Steps=10,20 'CFG scale=5,7'")
    grids.add_argument("--prompt-matrix", action="store_true", help="combine the parts of a prompt split by |")
    grids.add_argument("--prompts-from-file", type=Path, metavar="FILE", help="one prompt per line")
    hires = generate.add_argument_group("hires fix (two passes: generate, upscale, img2img at the new size)")
    hires.add_argument("--hires-scale", type=float, default=0, help="upscale by (e.g. 2); 0 = no hires fix")
    hires.add_argument("--hires-upscaler", default="Latent", help="Latent, Lanczos or an upscaler model name")
    hires.add_argument("--hires-steps", type=int, default=0, help="0 = same as --steps")
    hires.add_argument("--hires-denoise", type=float, default=0.45, help="denoising strength (above 0.5 repaints a lot)")
    img2img = sub.add_parser("img2img", help="image to image (refine)")
    job_args(img2img)
    img2img.add_argument("--image", type=Path, required=True)
    img2img.add_argument("--strength", type=float, default=0.75, help="denoising strength 0..1")
    img2img.add_argument("--resize-mode", default="just resize",
                         choices=["just resize", "crop and resize", "resize and fill", "latent upscale"])
    inpaint = sub.add_parser("inpaint", help="repaint where the mask is white")
    job_args(inpaint)
    inpaint.add_argument("--image", type=Path, required=True)
    inpaint.add_argument("--mask", type=Path, required=True, help="gray PNG, white = repaint")
    inpaint.add_argument("--strength", type=float, default=0.75)
    inpaint.add_argument("--mask-blur", type=int, default=4)
    inpaint.add_argument("--padding", type=int, default=32, help="context around the mask, pixels")

    upscale = sub.add_parser("upscale", help="upscale an image: upscaler model, then optional tiled diffusion")
    job_args(upscale)
    upscale.add_argument("--image", type=Path, required=True)
    upscale.add_argument("--scale", type=float, default=2.0, help="upscale by, any factor 1..8")
    upscale.add_argument("--upscaler", default="", help="upscaler model name, or Lanczos (default: the first model)")
    upscale.add_argument("--denoise", type=float, default=0.35, help="tiled diffusion strength; 0 = the upscaler only")
    upscale.add_argument("--tile", type=int, default=64, help="latent tile size (x8 pixels)")
    upscale.add_argument("--overlap", type=int, default=16, help="latent tile overlap")
    upscale.add_argument("--tile-batch", type=int, default=4, help="tiles per UNet batch")
    upscale.add_argument("--vae-tile", type=int, default=512, help="VAE tile size in pixels (halved on out-of-memory)")

    result = sub.add_parser("result", help="wait for a job, or fetch its finished result")
    client_args(result)
    result.add_argument("--job", required=True)
    result.add_argument("--out", type=Path, required=True)
    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    client_args(cancel)
    cancel.add_argument("--job", required=True)
    models = sub.add_parser("models", help="list the server's models")
    client_args(models)

    build = sub.add_parser("build-plugin", help="write the Krita plugin zip (Tools > Scripts > Import Python Plugin)")
    build.add_argument("--out", type=Path, default=Path("dist/paintbridge-krita.zip"))
    install = sub.add_parser("install-plugin", help="install (or update) the Krita plugin and enable it")
    install.add_argument("--krita-dir", type=Path, help="Krita's resource folder (the one holding pykrita/)")
    install.add_argument("--kritarc", type=Path, help="Krita's kritarc settings file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "from_png", None):
            # The PNG's settings become defaults; flags given explicitly still win.
            parser.commands["generate"].set_defaults(**settings_from_png(args.from_png))
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
    if args.command in ("generate", "img2img", "inpaint", "upscale"):
        request = build_request(args)  # bad input fails before connecting
        with client:
            result = client.run(request, on_progress=ProgressBar(), on_accepted=announce, reconnect_s=RECONNECT_S)
        write_result(result, args.out)
    elif args.command == "result":
        with client:
            result = client.wait(args.job, on_progress=ProgressBar(), reconnect_s=RECONNECT_S, fetch=True)
        write_result(result, args.out)
    elif args.command == "cancel":
        with client:
            client.cancel(args.job)
            reply = client.status(args.job)
            print(f"job {args.job}: {getattr(reply, 'state', None) or reply.type}")
    elif args.command == "models":
        with client:
            listing = client.list_models()
        for model in listing.models:
            mark = "*" if model.name == listing.default_model else " "
            detail = f"{model.family} {model.native_size}px" if model.family else ""
            print(f"{mark} {model.kind:<10} {model.name}  {detail}".rstrip())
    return 0


def run_grid(client: Client, args: argparse.Namespace) -> int:
    """An X/Y/Z plot, prompt matrix or prompts from a file: one job on the
    server; the grid PNG (with labels) and each image's own PNG here."""
    from PIL import Image

    from bridge_server import grids
    from protocol.plots import Plot, columns

    try:
        if args.xyz:
            plot = Plot(axes=[grids.parse_axis(spec) for spec in args.xyz])
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
    with client:
        result = client.run(request, on_progress=ProgressBar(), on_accepted=announce, reconnect_s=RECONNECT_S)
    write_result(result, args.out, numbered=True)
    images = [Image.frombytes("RGBA", (raw.width, raw.height), raw.data) for raw in result.images]
    labels = result.labels or [[] for _ in images]
    per_cell = args.batch * args.batch_count
    if per_cell > 1:  # the grid shows each cell's first image
        images, labels = images[::per_cell], labels[::per_cell]
    grids.draw_grid(images, labels, columns(plot, request.prompt)).save(args.out)
    print(f"wrote {args.out} (grid of {len(images)})", file=sys.stderr)
    return 0


def announce(accepted) -> None:
    where = "next" if accepted.position == 0 else f"position {accepted.position}"
    print(f"job {accepted.job_id}", file=sys.stderr, flush=True)
    if accepted.position:
        print(f"queued ({where})", file=sys.stderr, flush=True)


class ProgressBar:
    """A one-line progress bar on stderr."""

    def __init__(self, width: int = 30) -> None:
        self.width = width

    def __call__(self, progress) -> None:
        total = max(progress.total, 1)
        filled = int(self.width * progress.step / total)
        bar = "#" * filled + "-" * (self.width - filled)
        tiles = f" tiles {progress.tile}/{progress.tiles}" if progress.tiles else ""
        last = progress.step >= total and progress.tile >= progress.tiles
        cell = f"cell {progress.cell}/{progress.cells} " if progress.cells else ""
        line = f"\r{cell}{progress.stage:<15} [{bar}] {progress.step}/{total}{tiles}"
        print(line, end="\n" if last else "", file=sys.stderr, flush=True)


def build_request(args: argparse.Namespace, plot=None):
    from protocol import ProtocolError, plots
    from protocol.fields import from_wire, to_wire
    from protocol.requests import JobRequest

    wire = {
        "kind": {"generate": "txt2img"}.get(args.command, args.command),
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "model": args.model,
        "sampler": args.sampler,
        "steps": args.steps,
        "cfg_scale": args.cfg,
        "seed": args.seed,
        "width": args.width,
        "height": args.height,
        "batch_size": args.batch,
        "batch_count": args.batch_count,
        "subseed": args.subseed,
        "subseed_strength": args.subseed_strength,
        "eta": args.eta,
        "clip_skip": args.clip_skip,
        "vae": args.vae,
    }
    if args.command in ("img2img", "inpaint", "upscale"):
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
                           "overlap": args.overlap, "tile_batch": args.tile_batch, "vae_tile": args.vae_tile}
    if args.command == "inpaint":
        wire["mask"] = read_image(args.mask, "L").to_wire()
        wire["mask_blur"] = args.mask_blur
        wire["inpaint_padding"] = args.padding
    if plot is not None:
        wire["plot"] = to_wire(plot)
    try:
        request = from_wire(JobRequest, wire)  # the server's own validation, before sending
        request.validate()
        if plot is not None:
            plots.cells(request)  # every cell's values, too
    except ProtocolError as exc:
        raise CliError(exc.code.value, _cli_field_message(exc)) from None
    return request


_FLAGS = {"negative_prompt": "--negative", "cfg_scale": "--cfg", "batch_size": "--batch", "inpaint_padding": "--padding"}


def _cli_field_message(exc) -> str:
    parts = exc.field.split(".")
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
}


def settings_from_png(path: Path) -> dict:
    from PIL import Image

    from protocol.infotext import parse_infotext

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
        if "Size" in fields:
            settings["width"], settings["height"] = (int(v) for v in fields["Size"].split("x"))
        if "Denoising strength" in fields and "hires_scale" in settings:
            settings["hires_denoise"] = float(fields["Denoising strength"])
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


def write_result(result, out: Path, numbered: bool = False) -> list[Path]:
    """Each image as a PNG with its WebUI text: out, out-2, ...; or (plots) out-001, out-002, ..."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    paths = []
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, raw in enumerate(result.images):
        if numbered:
            path = out.with_name(f"{out.stem}-{i + 1:03d}{out.suffix}")
        else:
            path = out if i == 0 else out.with_name(f"{out.stem}-{i + 1}{out.suffix}")
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[raw.channels]
        image = Image.frombytes(mode, (raw.width, raw.height), raw.data)
        info = PngInfo()
        info.add_text("parameters", result.infotexts[i] if i < len(result.infotexts) else result.infotext)
        image.save(path, pnginfo=info)
        paths.append(path)
        print(f"wrote {path} (seed {result.seeds[i] if i < len(result.seeds) else '?'})", file=sys.stderr)
    return paths


if __name__ == "__main__":
    sys.exit(main())
