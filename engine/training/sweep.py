"""Decoding sweep on held-out holes: edit similarity per number of denoising steps (or canvas
context tokens), averaged over seeds, with the paired difference against the first value.
A benchmark on the validation split (never HumanEval), not a test; it chose the model's default
steps and the engine's canvas context (the model card's steps table):

    dgemma sweep --model engine/default_model [--steps 8 6 4 3 2] [--context 8]
    dgemma sweep --context 32 16 8 4 --steps 8 --only single-line

Single-line holes: `evaluate.heldout_holes` (300, three seeds, the server's 24-token line hole);
three-line holes: three consecutive non-blank lines (`heldout_holes(lines=3)`: 200, two seeds, a
48-token hole). The compiled step (`Engine.compile`), ~2 min per row on one core
(`dgemma --threads 1 sweep` on a shared machine).
"""

from __future__ import annotations

import difflib
import statistics
from collections.abc import Iterator

from ..api import Engine
from .evaluate import heldout_holes, postprocess

HOLE_SETS = {  # name: (holes, seed of the hole draw, lines per hole, hole tokens, sampling seeds, post-processing)
    "single-line": (300, 0, 1, 24, (0, 1, 2), "single-line"),
    "three-line": (200, 5, 3, 48, (0, 1), None),
}


def similarity(engine: Engine, holes, *, hole: int, kind: str | None, seed: int, **options) -> list[float]:
    out = []
    for prefix, middle, suffix in holes:
        text = engine.infill(prefix, suffix, max_middle_tokens=hole, seed=seed, **options)[0].text
        got = postprocess(text, kind) if kind else text
        out.append(difflib.SequenceMatcher(None, got.rstrip(), middle.rstrip(), autojunk=False).ratio())
    return out


def sweep(engine: Engine, corpus, steps: list[int], contexts: list[int], only: str | None = None, *,
          bounds: list[float | None] = (None,), drafts: list[bool | None] = (None,), holes_max: int | None = None,
          seeds_max: int | None = None) -> Iterator[dict]:
    """One row per hole set x (draft, entropy bound, context, steps): mean edit similarity over
    holes and seeds, per seed, exact matches, and the paired difference against the set's first
    row with its standard error. None keeps the checkpoint's own bound / `encoder_draft`;
    `holes_max` / `seeds_max` take the first holes / seeds of a set (a quicker, noisier sweep)."""
    own_draft = engine.generation.encoder_draft
    for name, (n, draw_seed, lines, hole, seeds, kind) in HOLE_SETS.items():
        if only not in (None, name):
            continue
        n, seeds = min(n, holes_max or n), seeds[: seeds_max or len(seeds)]
        holes = [(h["prompt"], h["middle"], h["suffix"]) for h in heldout_holes(corpus, n, seed=draw_seed, lines=lines)]
        base = None
        for draft in drafts:
            engine.generation.encoder_draft = own_draft if draft is None else draft
            try:
                for bound in bounds:
                    for context in contexts:
                        for step_count in steps:
                            runs = [similarity(engine, holes, hole=hole, kind=kind, seed=seed, steps=step_count,
                                               context_tokens=context, entropy_bound=bound) for seed in seeds]
                            per_hole = [statistics.fmean(values) for values in zip(*runs)]
                            base = base or per_hole
                            diff = [a - b for a, b in zip(per_hole, base)]
                            yield {"holes": name, "n": len(holes), "seeds": len(seeds), "steps": step_count,
                                   "context": context,
                                   "entropy_bound": engine.generation.entropy_bound if bound is None else bound,
                                   "encoder_draft": engine.generation.encoder_draft,
                                   "edit_similarity": statistics.fmean(per_hole),
                                   "exact": statistics.fmean(float(r == 1.0) for run in runs for r in run),
                                   "per_seed": [statistics.fmean(r) for r in runs],
                                   "vs_first": statistics.fmean(diff),
                                   "vs_first_se": statistics.stdev(diff) / len(diff) ** 0.5 if any(diff) else 0.0}
            finally:
                engine.generation.encoder_draft = own_draft
