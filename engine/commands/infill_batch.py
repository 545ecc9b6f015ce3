"""`dgemma infill-batch`: fill HumanEval-infilling style tasks (JSONL) into a completions file."""

from __future__ import annotations

from . import add_model_arguments, load_engine


def add_arguments(p):
    add_model_arguments(p)
    p.add_argument("--tasks", required=True, help="tasks in the HumanEval-infilling layout, .jsonl or .jsonl.gz")
    p.add_argument("--out", required=True, help="completions, one JSON object per line")
    p.add_argument("--max-middle-tokens", type=int, default=48)


def run(args) -> int:
    from engine.training.evaluate import infill_batch

    infill_batch(load_engine(args), args.tasks, args.out, steps=args.steps, max_middle_tokens=args.max_middle_tokens)
    return 0
