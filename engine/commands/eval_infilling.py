"""`dgemma eval-infilling`: pass@1 on HumanEval infilling beside the empty-completion baseline."""

from __future__ import annotations

from pathlib import Path

from . import add_model_arguments, load_engine


def add_arguments(p):
    add_model_arguments(p)
    p.add_argument("--benchmark", default="single-line",
                   choices=["single-line", "multi-line", "random-span", "random-span-light"])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--benchmarks", metavar="DIR", default=None,
                   help="the folder holding humaneval-infilling/ (default: $DGEMMA_BENCHMARKS, "
                        "else ../shared/benchmarks from the working directory)")
    p.add_argument("--max-middle-tokens", type=int, default=48)
    p.add_argument("--baseline", action="store_true", help="score the empty completion instead of a model")
    p.add_argument("--heldout", type=int, default=None, help="also report exact match on N held-out corpus holes")
    p.add_argument("--corpus", default="data/corpus", help="the corpus holding heldout.jsonl (for --heldout)")
    p.add_argument("--out-json", default=None, help="summary path (default runs/eval/<benchmark>.json)")
    p.add_argument("--decoder", default="diffusion", choices=["diffusion", "causal", "commit"],
                   help="causal: the same checkpoint's encoder, greedy left to right from the prefix alone "
                        "(the autoregressive baseline); commit: the diffusion decoder on one-position "
                        "canvases, each committed into the cache (the suffix unseen)")
    p.add_argument("--candidates", type=int, default=1,
                   help="ask for N middles and score the one dgemma-ls would insert: the first, in the "
                        "order the engine gives them, that adds no syntax errors (tree-sitter)")
    p.add_argument("--commit-hole", type=int, default=1, help="--decoder commit: noise positions a pass")
    p.add_argument("--commit-head", type=int, default=0,
                   help="--decoder commit: suffix tokens clamped after the hole (0: the suffix unseen)")
    p.add_argument("--commit-blind", action="store_true",
                   help="--decoder commit: also a one-position canvas, the suffix unseen; the two views' "
                        "log-probabilities summed")


def run(args) -> int:
    from engine.training.evaluate import eval_infilling

    engine = None if args.baseline else load_engine(args)
    tasks_dir = Path(args.benchmarks) / "humaneval-infilling" if args.benchmarks else None
    eval_infilling(engine, args.benchmark, args.limit, tasks_dir, steps=args.steps,
                   max_middle_tokens=args.max_middle_tokens, heldout=args.heldout, out_json=args.out_json,
                   decoder=args.decoder, corpus=args.corpus, command=args.command_line,
                   decoder_options={"hole": args.commit_hole, "head": args.commit_head,
                                    **({"blind": True} if args.commit_blind else {})}
                   if args.decoder == "commit" else None, candidates=args.candidates)
    return 0
