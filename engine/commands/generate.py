"""`dgemma generate`: continue a prompt; the text on stdout, its speed on stderr."""

from __future__ import annotations

import sys

from . import add_model_arguments, load_engine


def add_arguments(p):
    add_model_arguments(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--exact", action="store_true", help="reference-compatible noise (torch RNG)")


def run(args) -> int:
    engine = load_engine(args)
    out = engine.continue_text(args.prompt, max_new_tokens=args.max_new_tokens, steps=args.steps, seed=args.seed,
                               exact=args.exact)
    print(out.text)
    print(f"[{out.tokens} tokens, {out.decoder_passes} decoder passes, {out.tokens_per_forward:.2f} tokens/forward, "
          f"{out.ms:.0f} ms]", file=sys.stderr)
    return 0
