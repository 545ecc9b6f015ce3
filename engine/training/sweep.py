"""Decoding sweep on held-out holes: edit similarity per number of denoising steps (or canvas
context tokens), averaged over seeds, with the paired difference against the first value.
A benchmark on the validation split (never HumanEval), not a test; it chose the model's default
steps and the engine's canvas context (the model card's steps table):

    python -m engine.training.sweep --model engine/default_model [--steps 8 6 4 3 2] [--context 8]
    python -m engine.training.sweep --context 32 16 8 4 --steps 8 --only single-line

Single-line holes: `evaluate.heldout_holes` (300, three seeds, the server's 24-token line hole);
three-line holes: three consecutive non-blank lines (`heldout_holes(lines=3)`: 200, two seeds, a
48-token hole). One torch
thread, the compiled step (`Engine.compile`), ~2 min per row on one core.
"""

from __future__ import annotations

import argparse
import difflib
import statistics

import torch

from ..api import DEFAULT_MODEL, Engine
from .evaluate import CORPUS_DIR, heldout_holes, postprocess


def similarity(engine: Engine, holes, *, hole: int, kind: str | None, seed: int, **options) -> list[float]:
    out = []
    for prefix, middle, suffix in holes:
        text = engine.infill(prefix, suffix, max_middle_tokens=hole, seed=seed, **options)[0].text
        got = postprocess(text, kind) if kind else text
        out.append(difflib.SequenceMatcher(None, got.rstrip(), middle.rstrip(), autojunk=False).ratio())
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 6, 4, 3, 2])
    parser.add_argument("--context", type=int, nargs="+", default=[8], help="clamped canvas tokens a side")
    parser.add_argument("--only", choices=["single-line", "three-line"], default=None)
    parser.add_argument("--corpus", default=str(CORPUS_DIR))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    engine = Engine.load(args.model, compile=True)
    single, triple = ([(h["prompt"], h["middle"], h["suffix"]) for h in heldout_holes(args.corpus, n, seed=seed, lines=k)]
                      for n, seed, k in ((300, 0, 1), (200, 5, 3)))
    sets = [("single-line", single, 24, (0, 1, 2), "single-line"), ("three-line", triple, 48, (0, 1), None)]
    configs = [(s, c) for c in args.context for s in args.steps]
    for name, holes, hole, seeds, kind in sets:
        if args.only not in (None, name):
            continue
        base = None
        for steps, context in configs:
            runs = [similarity(engine, holes, hole=hole, kind=kind, seed=seed, steps=steps, context_tokens=context)
                    for seed in seeds]
            per_hole = [statistics.fmean(values) for values in zip(*runs)]
            base = base or per_hole
            diff = [a - b for a, b in zip(per_hole, base)]
            se = statistics.stdev(diff) / len(diff) ** 0.5 if any(diff) else 0.0
            print(f"{name} ({len(holes)} holes x {len(seeds)} seeds) steps {steps} context {context}: edit "
                  f"similarity {statistics.fmean(per_hole):.3f} (seeds {', '.join(f'{statistics.fmean(r):.3f}' for r in runs)})"
                  f", vs the first row {statistics.fmean(diff):+.3f} ± {se:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
