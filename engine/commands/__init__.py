"""The `dgemma` subcommands, one module each: `add_arguments(parser)` and `run(args) -> int`
(see engine/cli.py's COMMANDS). Options every model-running command shares live here."""

from __future__ import annotations

import argparse
import sys


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint directory or HF cache snapshot (default: embedded)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--quantize", default="none", choices=["none", "int8", "int4", "fp8"],
                   help="weight-only quantization while loading (docs/quantization.md)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per canvas")
    p.add_argument("--seed", type=int, default=0)


def load_engine(args: argparse.Namespace):
    from engine.api import Engine

    def progress(message: str) -> None:  # the embedded model's first-use build (about half a minute)
        print(f"dgemma: {message}", file=sys.stderr, flush=True)

    return Engine.load(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize, progress=progress)
