"""The `dgemma serve` command: options, loading the model, binding, serving until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from engine import EngineError
from engine.commands import add_model_arguments, load_engine

from .app import Options, build_app
from .scheduler import Scheduler

log = logging.getLogger("dgemma_serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)  # --model --device --dtype --quantize --steps --seed, as every dgemma command
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: loopback only; 0.0.0.0 shares it on the network)")
    parser.add_argument("--port", type=int, default=8012, help="port (default: 8012, llama.vim's; 0: any free port)")
    parser.add_argument("--api-key-env", default=None, metavar="NAME",
                        help="require `Authorization: Bearer KEY`, KEY read from this environment variable")
    parser.add_argument("--max-queue", type=int, default=32, help="requests waiting before 503 (default: 32)")
    parser.add_argument("--max-batch", type=int, default=8, help="holes denoised in one batch (default: 8)")
    parser.add_argument("--cache-clients", type=int, default=8,
                        help="clients whose prompt KV cache is kept for reuse, least recently used evicted "
                             "(default: 8)")
    parser.add_argument("--max-request-bytes", type=int, default=1 << 20, help="largest request body (default: 1 MiB)")
    parser.add_argument("--n-predict", type=int, default=48,
                        help="/infill's n_predict when a request leaves it out (default: 48)")
    parser.add_argument("--log-level", default="info", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default: info)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"dgemma serve: error: --api-key-env {args.api_key_env}: that environment variable is empty or unset",
                  file=sys.stderr)
            return 2
    for name in ("max_queue", "max_batch", "cache_clients", "max_request_bytes", "n_predict"):
        if getattr(args, name) < 1:
            print(f"dgemma serve: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    try:
        engine = load_engine(args)  # threads: dgemma --threads
    except EngineError as error:
        print(f"dgemma serve: error: {error}", file=sys.stderr)
        return 1
    log.info("%s", engine.describe())
    scheduler = Scheduler(engine, max_queue=args.max_queue, max_batch=args.max_batch, cache_clients=args.cache_clients,
                          steps=args.steps, seed=args.seed)
    app = build_app(engine, scheduler, Options(api_key=api_key, max_request_bytes=args.max_request_bytes,
                                               default_predict=args.n_predict))
    try:
        asyncio.run(_serve(app, args.host, args.port))
    except OSError as error:
        print(f"dgemma serve: error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    finally:
        scheduler.close()
    return 0


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    # one line on stdout: scripts and tests read the port from it (--port 0)
    print(f"dgemma serve: listening on http://{host}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
