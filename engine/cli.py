"""`dgemma`: generate, fill a middle in a file, batch infilling, evaluation and training.

    dgemma generate [--model DIR] --prompt TEXT
    dgemma fill [--model DIR] FILE --line L --col C [--visual]
    dgemma infill-batch --tasks IN.jsonl --out OUT.jsonl [--model DIR]
    dgemma eval-infilling --benchmark single-line [--limit N] [--model DIR]
    dgemma eval-loss [--model DIR] [--rows N] [--compare DIR]
    dgemma train [--out runs/NAME ...]
    dgemma export RUN DEST [--steps N] [--ignore-noise-tokens]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import EngineError


def _load(args):
    from .api import Engine

    return Engine.load(args.model, device=args.device, dtype=args.dtype)


def _common(p: argparse.ArgumentParser):
    p.add_argument("--model", default=None, help="checkpoint directory or HF cache snapshot (default: embedded)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per canvas")
    p.add_argument("--seed", type=int, default=0)


def offset_of(text: str, line: int, col: int) -> int:
    """1-based line and column (in characters) to a string offset; clear error when out of range."""
    lines = text.splitlines(keepends=True) or [""]
    if not 1 <= line <= len(lines) + 1:
        raise EngineError(f"--line {line} is outside the file (1..{len(lines)})")
    start = sum(len(x) for x in lines[: line - 1])
    current = lines[line - 1] if line - 1 < len(lines) else ""
    width = len(current.rstrip("\r\n"))
    if not 1 <= col <= width + 1:
        raise EngineError(f"--col {col} is outside line {line} (1..{width + 1})")
    return start + col - 1


def read_source(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise EngineError(f"{path}: no such file")
    data = p.read_bytes()
    if len(data) > 5_000_000:
        raise EngineError(f"{path}: {len(data)} bytes is too large to fill (limit 5 MB)")
    if b"\0" in data[:8192]:
        raise EngineError(f"{path}: looks binary")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EngineError(f"{path}: not UTF-8 ({e})") from None


def cmd_generate(args) -> int:
    engine = _load(args)
    out = engine.generate(args.prompt, max_new_tokens=args.max_new_tokens, steps=args.steps, seed=args.seed,
                          exact=args.exact)
    print(out.text)
    print(f"[{out.tokens} tokens, {sum(out.steps)} steps, {out.tokens_per_forward:.2f} tokens/forward, "
          f"{out.ms:.0f} ms]", file=sys.stderr)
    return 0


def cmd_fill(args) -> int:
    text = read_source(args.file)
    cursor = offset_of(text, args.line, args.col)
    engine = _load(args)
    prefix, suffix = text[:cursor], text[cursor:]
    on_step = None
    if args.visual:
        tail, head = "".join(prefix.splitlines(keepends=True)[-4:]), "".join(suffix.splitlines(keepends=True)[:4])
        tty = sys.stderr.isatty()

        def on_step(step, draft):
            # the canvas as text: known context dim, the draft middle highlighted, redrawn in place
            if tty:
                sys.stderr.write("\x1b[H\x1b[2J")
            sys.stderr.write(f"step {step:3d}\n\x1b[2m{tail}\x1b[0m\x1b[7m{draft}\x1b[0m\x1b[2m{head}\x1b[0m\n")
            sys.stderr.flush()
            time.sleep(args.visual_delay)
    results = engine.infill(prefix, suffix, max_middle_tokens=args.max_middle_tokens, steps=args.steps,
                            seed=args.seed, mode=args.mode, on_step=on_step)
    best = results[0]
    sys.stdout.write(best.text + ("\n" if not best.text.endswith("\n") else ""))
    print(f"[{best.tokens} tokens, {best.steps} steps, {best.tokens_per_forward:.2f} tokens/forward, "
          f"{best.ms:.0f} ms]", file=sys.stderr)
    return 0


def cmd_infill_batch(args) -> int:
    from .training.evaluate import infill_batch

    engine = _load(args)
    infill_batch(engine, args.tasks, args.out, steps=args.steps, max_middle_tokens=args.max_middle_tokens)
    return 0


def cmd_eval(args) -> int:
    from .training.evaluate import eval_infilling

    engine = None if args.baseline else _load(args)
    eval_infilling(engine, args.benchmark, args.limit, args.benchmarks_dir, steps=args.steps,
                   max_middle_tokens=args.max_middle_tokens, heldout=args.heldout, out_json=args.out_json,
                   decoder=args.decoder)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        from .training.train import export_model

        p = argparse.ArgumentParser(prog="dgemma export", description="a training run's checkpoint as a model dir")
        p.add_argument("run")
        p.add_argument("dest")
        p.add_argument("--steps", type=int, default=None)
        p.add_argument("--entropy-bound", type=float, default=None)
        p.add_argument("--ignore-noise-tokens", action=argparse.BooleanOptionalAction, default=None,
                       help="write the generation option (see engine/config.py GenerationConfig)")
        a = p.parse_args(argv[1:])
        state = export_model(a.run, a.dest, steps=a.steps, entropy_bound=a.entropy_bound,
                             ignore_noise_tokens=a.ignore_noise_tokens)
        print(f"exported step {state['step']} ({state['tokens'] / 1e6:.1f}M tokens) to {a.dest}")
        return 0
    if argv[:1] == ["eval-loss"]:
        import json

        from .api import DEFAULT_MODEL
        from .training.train import heldout_loss, paired_difference

        p = argparse.ArgumentParser(prog="dgemma eval-loss",
                                    description="the training objective on the held-out corpus split, fixed seed")
        p.add_argument("--model", default=str(DEFAULT_MODEL))
        p.add_argument("--corpus", default="data/corpus")
        p.add_argument("--rows", type=int, default=64, help="held-out rows of the trained context (default 64)")
        p.add_argument("--seq-len", type=int, default=512, help="tokens per row (default 512, the trained context)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--compare", metavar="DIR", default=None,
                       help="also score DIR on the same rows; print the paired difference DIR - MODEL per loss")
        a = p.parse_args(argv[1:])
        if not (Path(a.corpus) / "heldout.jsonl").is_file():
            print(f"dgemma: error: {a.corpus}/heldout.jsonl not found (build it: python -m engine.training.corpus "
                  f"--out {a.corpus})", file=sys.stderr)
            return 2
        if a.rows < 1:
            print(f"dgemma: error: --rows must be >= 1, got {a.rows}", file=sys.stderr)
            return 2
        try:
            scores = [heldout_loss(m, a.corpus, rows=a.rows, seq_len=a.seq_len, seed=a.seed)
                      for m in [a.model] + ([a.compare] if a.compare else [])]
            for score in scores:
                print(json.dumps({k: v for k, v in score.items() if k != "per_batch"}))
            if a.compare:
                print(json.dumps({"difference": f"{a.compare} - {a.model}", **paired_difference(*scores)}))
        except EngineError as e:
            print(f"dgemma: error: {e}", file=sys.stderr)
            return 2
        return 0
    if argv[:1] == ["train"]:
        from .training.train import main as train_main

        train_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="dgemma", description="DiffusionGemma block-diffusion engine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="continue a prompt")
    _common(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--exact", action="store_true", help="reference-compatible noise (torch RNG)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("fill", help="print the middle at a cursor in FILE")
    _common(p)
    p.add_argument("file")
    p.add_argument("--line", type=int, required=True, help="1-based line")
    p.add_argument("--col", type=int, required=True, help="1-based column")
    p.add_argument("--max-middle-tokens", type=int, default=48)
    p.add_argument("--mode", default="canvas", choices=["canvas", "fim"])
    p.add_argument("--visual", action="store_true", help="redraw the draft middle per denoising step")
    p.add_argument("--visual-delay", type=float, default=0.05)
    p.set_defaults(func=cmd_fill)

    p = sub.add_parser("infill-batch", help="fill HumanEval-infilling style tasks")
    _common(p)
    p.add_argument("--tasks", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-middle-tokens", type=int, default=48)
    p.set_defaults(func=cmd_infill_batch)

    p = sub.add_parser("eval-infilling", help="pass@1 on HumanEval infilling")
    _common(p)
    p.add_argument("--benchmark", default="single-line",
                   choices=["single-line", "multi-line", "random-span", "random-span-light"])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--benchmarks-dir", default=None, help="default: $DGEMMA_BENCHMARKS/humaneval-infilling, else ../shared/benchmarks/humaneval-infilling")
    p.add_argument("--max-middle-tokens", type=int, default=48)
    p.add_argument("--baseline", action="store_true", help="score the empty completion instead of a model")
    p.add_argument("--heldout", type=int, default=None, help="also report exact match on N held-out corpus holes")
    p.add_argument("--out-json", default=None, help="summary path (default runs/eval/<benchmark>.json)")
    p.add_argument("--decoder", default="diffusion", choices=["diffusion", "causal"],
                   help="causal: the same checkpoint's encoder, greedy left to right from the prefix alone "
                        "(the autoregressive baseline)")
    p.set_defaults(func=cmd_eval)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EngineError as e:
        print(f"dgemma: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
