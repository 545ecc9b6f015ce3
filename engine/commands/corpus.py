"""`dgemma corpus --out DIR`: build the training corpus (engine/training/corpus.py) and print
its composition."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_arguments(p):
    p.add_argument("--out", default="data/corpus", type=Path)
    p.add_argument("--max-mb", default=400, type=int, help="sample the largest language down to fit this many MB")
    p.add_argument("--workers", default=2, type=int)
    p.add_argument("--forbid", metavar="DIR", type=Path, action="append", default=[],
                   help="never read files under DIR (repeatable); the evaluation benchmarks ($DGEMMA_BENCHMARKS, "
                        "else ../shared/benchmarks) always are")
    p.add_argument("--skip", metavar="DIR", type=Path, action="append", default=None,
                   help="leave files under DIR out (repeatable; default: this checkout)")


def run(args) -> int:
    from engine.training.corpus import CHECKOUT, build_corpus, default_candidates

    composition = build_corpus(default_candidates(), args.out, args.max_mb * 1_000_000, workers=args.workers,
                               forbidden=tuple(args.forbid), skipped=tuple(args.skip or [CHECKOUT]))
    json.dump({k: composition[k] for k in ("files", "bytes", "dropped", "by_language", "build_seconds")},
              sys.stdout, indent=2)
    print()
    return 0
