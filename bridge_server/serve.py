"""`paintbridge serve`: build the engine, then run the server until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import sys
from pathlib import Path

from bridge_server.config import ServerConfig
from bridge_server.security import is_loopback

log = logging.getLogger("paintbridge")


def run_server(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)
    from bridge_server.cli import CliError

    token = args.token
    if not is_loopback(args.host) and not token:
        # Reachable from other machines: never without a token.
        token = secrets.token_urlsafe(24)
        print(f"--host {args.host} is reachable from other machines; clients must send this token:\n  {token}", file=sys.stderr)
    if args.queue.startswith(("redis://", "rediss://", "unix://")):
        return run_front_end(args, token)
    if args.queue != "embedded":
        raise CliError("invalid_request", f"--queue: 'embedded' or redis://HOST:PORT/N, not {args.queue!r}")
    engine = build_engine(args)
    models_dir = engine.registry.root
    config = ServerConfig(
        models_dir=Path(models_dir),
        queue_url=args.queue,
        state_dir=args.state_dir.expanduser() if args.state_dir else None,
        max_queued_per_client=args.max_queued_per_client,
        shutdown_grace_s=args.shutdown_grace,
        host=args.host,
        port=args.port,
        token=token,
        allow_origins=list(args.allow_origin),
        preload=not args.no_preload,
        max_message_bytes=args.max_message_mib * 1024 * 1024,
        demo=args.demo,
    )
    return asyncio.run(_serve(config, engine))


def build_engine(args: argparse.Namespace):
    """The engine of `serve` and `worker`: --models DIR or --demo, device, VAE."""
    from bridge_server.cli import CliError

    if args.demo and args.models:
        raise CliError("invalid_request", "use either --models DIR or --demo, not both")
    from engine.jobs import Engine
    from engine.models import ModelManager
    from engine.registry import Registry

    if args.demo:
        from engine.demo.builder import demo_models_dir

        print("DEMO MODE: tiny random-init models; the pictures are noise. Use --models DIR for real models.", file=sys.stderr)
        models_dir = demo_models_dir()
    elif args.models:
        models_dir = args.models.expanduser()
    else:
        raise CliError("invalid_request", "give --models DIR (your SD models folder) or --demo")
    if not Path(models_dir).is_dir():
        raise CliError("not_found", f"models folder {models_dir} does not exist")
    registry = Registry(Path(models_dir)).scan()
    from engine import runtime

    manager = ModelManager(device=args.device, offload=args.offload, compile=args.compile)
    manager.cpu_bf16 = getattr(args, "cpu_bf16", False)
    threads = runtime.configure(manager.device, getattr(args, "threads", 0))
    logging.getLogger("paintbridge").info("device %s, %d CPU threads", manager.device, threads)
    if registry.default_checkpoint() is None:
        log.warning("no checkpoint found in %s; put a .safetensors into Stable-diffusion/ or checkpoints/", models_dir)
    if getattr(args, "vae", ""):
        from engine.errors import EngineError

        try:
            registry.get(args.vae, "vae", field="vae")
        except EngineError as exc:
            raise CliError(exc.code, f"--vae: {exc.message}") from None
    return Engine(registry, manager, default_vae=getattr(args, "vae", ""))


def run_front_end(args: argparse.Namespace, token: str) -> int:
    """`serve --queue redis://...`: websockets, auth and limits; the jobs run in workers."""
    from bridge_server.queue.redis_queue import RedisQueue

    config = ServerConfig(
        models_dir=Path("."), host=args.host, port=args.port, token=token, allow_origins=list(args.allow_origin),
        preload=False, max_message_bytes=args.max_message_mib * 1024 * 1024, queue_url=args.queue,
        max_queued_per_client=args.max_queued_per_client, shutdown_grace_s=args.shutdown_grace,
    )
    queue = RedisQueue.from_url(args.queue, max_queue=config.max_queue, per_client=config.max_queued_per_client,
                                retention=config.result_retention, max_age_s=config.result_max_age_s)
    return asyncio.run(_serve(config, None, queue))


async def _serve(config: ServerConfig, engine, queue=None) -> int:
    from bridge_server.queue.sqlite_store import StateDirBusy
    from bridge_server.server import PaintBridgeServer

    try:
        server = PaintBridgeServer(config, engine, queue)
    except StateDirBusy as exc:
        from bridge_server.cli import CliError

        raise CliError("busy", str(exc)) from None
    try:
        await server.start()
    except Exception as exc:
        from bridge_server.cli import CliError

        if type(exc).__module__.startswith("redis"):
            raise CliError("unreachable", f"cannot reach Redis at {config.queue_url}: {exc}") from None
        if not isinstance(exc, OSError):
            raise
        raise CliError("unreachable", f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    host = f"[{config.host}]" if ":" in config.host else config.host
    if engine is not None:
        names = ", ".join(e.name for e in engine.registry.list("checkpoint")) or "none"
        log.info("PaintBridge listening on ws://%s:%d (models: %s; checkpoints: %s; device: %s)",
                 host, server.port, config.models_dir, names, engine.models.device)
    else:
        log.info("PaintBridge listening on ws://%s:%d (front end of %s; the jobs run in workers)",
                 host, server.port, config.queue_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows
            pass
    await stop.wait()
    # Jobs are kept (queued, and a running one stopped at a step runs again after
    # the restart); every connected client hears which of its jobs carry on.
    log.info("shutting down: telling clients the server is restarting")
    await server.restart_notice(config.shutdown_grace_s)
    await server.close()
    return 0
