"""`dgemma fill FILE --line L --col C`: print the middle the model fills at a cursor."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from engine.errors import EngineError

from . import add_model_arguments, load_engine


def add_arguments(p):
    add_model_arguments(p)
    p.add_argument("file")
    p.add_argument("--line", type=int, required=True, help="1-based line")
    p.add_argument("--col", type=int, required=True, help="1-based column")
    p.add_argument("--max-middle-tokens", type=int, default=48)
    p.add_argument("--mode", default="canvas", choices=["canvas", "fim"])
    p.add_argument("--scope", default="auto", choices=["auto", "line", "any"],
                   help="line: a committing model stops at the end of the line it writes; auto (default): line "
                        "when code precedes the cursor on its line")
    p.add_argument("--visual", action="store_true", help="redraw the draft middle per denoising step")
    p.add_argument("--visual-delay", type=float, default=0.05)


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


def run(args) -> int:
    text = read_source(args.file)
    cursor = offset_of(text, args.line, args.col)
    engine = load_engine(args)
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
    line_start = prefix.rsplit("\n", 1)[-1]
    one_line = args.scope == "line" or (args.scope == "auto" and bool(line_start.strip()))
    results = engine.infill(prefix, suffix, max_middle_tokens=args.max_middle_tokens, steps=args.steps,
                            seed=args.seed, mode=args.mode, on_step=on_step, one_line=one_line)
    best = results[0]
    sys.stdout.write(best.text + ("\n" if not best.text.endswith("\n") else ""))
    print(f"[{best.tokens} tokens, {best.steps} steps, {best.tokens_per_forward:.2f} tokens/forward, "
          f"{best.ms:.0f} ms]", file=sys.stderr)
    return 0
