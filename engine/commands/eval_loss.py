"""`dgemma eval-loss`: the training objective on the held-out corpus split, fixed seed; with
--compare, the paired difference of a second checkpoint on the same rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_arguments(p):
    p.add_argument("--model", default=None,
                   help="checkpoint directory (default: the small model, engine/default_model)")
    p.add_argument("--corpus", default="data/corpus")
    p.add_argument("--rows", type=int, default=64, help="held-out rows of the trained context (default 64)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per row (default 512, the trained context)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", metavar="DIR", default=None,
                   help="also score DIR on the same rows; print the paired difference DIR - MODEL per loss")
    p.add_argument("--out-json", default="runs/eval/loss.json", help="the scores with the commit and command line")


def run(args) -> int:
    from engine.api import SMALL_MODEL
    from engine.training.provenance import stamp
    from engine.training.train import heldout_loss, paired_difference

    if not (Path(args.corpus) / "heldout.jsonl").is_file():
        print(f"dgemma: error: {args.corpus}/heldout.jsonl not found (build it: dgemma corpus --out {args.corpus})",
              file=sys.stderr)
        return 2
    if args.rows < 1:
        print(f"dgemma: error: --rows must be >= 1, got {args.rows}", file=sys.stderr)
        return 2
    model = args.model or str(SMALL_MODEL)
    scores = [heldout_loss(m, args.corpus, rows=args.rows, seq_len=args.seq_len, seed=args.seed)
              for m in [model] + ([args.compare] if args.compare else [])]
    summaries = [{"model": m, **{k: v for k, v in score.items() if k != "per_batch"}}
                  for m, score in zip([model] + ([args.compare] if args.compare else []), scores)]
    for summary in summaries:
        print(json.dumps(summary))
    difference = {"difference": f"{args.compare} - {model}", **paired_difference(*scores)} if args.compare else None
    if difference:
        print(json.dumps(difference))
    out = Path(args.out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {**stamp(args.command_line), "kind": "eval-loss", "corpus": args.corpus, "rows": args.rows,
              "seq_len": args.seq_len, "seed": args.seed, "scores": summaries, "difference": difference}
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0
