"""`dgemma export RUN DEST`: a training run's checkpoint as a model directory the engine loads."""

from __future__ import annotations

import argparse


def add_arguments(p):
    p.add_argument("run", help="training run directory (runs/NAME)")
    p.add_argument("dest", help="model directory to write")
    p.add_argument("--steps", type=int, default=None, help="default denoising steps written to the model")
    p.add_argument("--entropy-bound", type=float, default=None)
    p.add_argument("--ignore-noise-tokens", action=argparse.BooleanOptionalAction, default=None,
                   help="write the generation option (see engine/config.py GenerationConfig)")


def run(args) -> int:
    from engine.training.train import export_model

    state = export_model(args.run, args.dest, steps=args.steps, entropy_bound=args.entropy_bound,
                         ignore_noise_tokens=args.ignore_noise_tokens)
    print(f"exported step {state['step']} ({state['tokens'] / 1e6:.1f}M tokens) to {args.dest}")
    return 0
