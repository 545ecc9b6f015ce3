"""`dgemma sweep`: edit similarity on held-out holes per denoising steps and canvas context
(engine/training/sweep.py); prints one line per row, writes the rows as stamped JSON."""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p):
    p.add_argument("--model", default=None, help="checkpoint directory (default: embedded)")
    p.add_argument("--steps", type=int, nargs="+", default=[8, 6, 4, 3, 2])
    p.add_argument("--context", type=int, nargs="+", default=[8], help="clamped canvas tokens a side")
    p.add_argument("--only", choices=["single-line", "three-line"], default=None)
    p.add_argument("--entropy-bound", type=float, nargs="+", default=[None],
                   help="entropy bounds to compare (default: the checkpoint's)")
    p.add_argument("--draft", choices=["model", "on", "off", "both"], default="model",
                   help="seed the hole with the encoder's draft (GenerationConfig.encoder_draft)")
    p.add_argument("--holes", type=int, default=None, help="at most this many holes per set (quicker, noisier)")
    p.add_argument("--seeds", type=int, default=None, help="at most this many sampling seeds")
    p.add_argument("--corpus", default="data/corpus", help="the corpus holding heldout.jsonl")
    p.add_argument("--out-json", default="runs/sweep/sweep.json", help="the rows with commit and command")


def run(args) -> int:
    from engine.api import Engine
    from engine.training.provenance import stamp
    from engine.training.sweep import sweep

    engine = Engine.load(args.model, compile=True)
    rows = []
    drafts = {"model": [None], "on": [True], "off": [False], "both": [False, True]}[args.draft]
    for row in sweep(engine, args.corpus, args.steps, args.context, args.only, bounds=args.entropy_bound,
                     drafts=drafts, holes_max=args.holes, seeds_max=args.seeds):
        rows.append(row)
        print(f"{row['holes']} ({row['n']} holes x {row['seeds']} seeds) draft {row['encoder_draft']} bound "
              f"{row['entropy_bound']:g} steps {row['steps']} context {row['context']}: edit similarity "
              f"{row['edit_similarity']:.3f}, exact {row['exact']:.3f} (seeds "
              f"{', '.join(f'{x:.3f}' for x in row['per_seed'])}), vs the first row "
              f"{row['vs_first']:+.3f} ± {row['vs_first_se']:.3f}", flush=True)
    out = Path(args.out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {**stamp(args.command_line), "kind": "sweep", "model": str(engine.root), "rows": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0
