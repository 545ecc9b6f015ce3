"""What the benchmark scripts share: percentiles, Markdown tables, the FIM requests cut from
held-out corpus files, and the JSON result every script writes (tables as data, stamped with the
commit and command line by engine.training.provenance) that benchmarks/tables.py renders."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

RESULTS = Path("benchmarks/results")  # relative to the working directory: the repository root


def ms_of(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def markdown(table: dict) -> str:
    """A result table ({"title", "header", "rows", "note"?}) as Markdown, first column left-aligned."""
    header = table["header"]
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in table["rows"]]
    return "\n".join(lines) + (f"\n\n{table['note']}" if table.get("note") else "")


def fim_requests(corpus: str | Path, n: int, *, seed: int = 0, window: int = 1500) -> list[tuple[str, str, str]]:
    """(prefix, suffix, kind) cut from held-out python files. mid-line: the cursor inside a line,
    the rest of the line still after it; end-of-line: the line typed up to the cursor, its rest
    not written yet (the suffix starts at the next line)."""
    from engine.training.corpus import iter_documents

    if not (Path(corpus) / "heldout.jsonl").is_file():
        raise SystemExit(f"{corpus}/heldout.jsonl not found: pass --corpus DIR or build it (dgemma corpus --out {corpus})")
    docs = [d["text"] for d in iter_documents(str(corpus), "heldout") if d.get("language") == "python"]
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        text = rng.choice(docs)
        lines = text.splitlines(keepends=True)
        spots = [i for i, line in enumerate(lines) if len(line.strip()) >= 8 and len(line) <= 160]
        if not spots:
            continue
        i = rng.choice(spots)
        start = sum(len(x) for x in lines[:i])
        line = lines[i].rstrip("\n")
        indent = len(line) - len(line.lstrip())
        cursor = start + rng.randint(indent + 1, len(line) - 1)
        if len(out) % 2 == 0:
            out.append((text[max(0, cursor - window):cursor], text[cursor:cursor + window], "mid-line"))
        else:
            end = start + len(line)
            out.append((text[max(0, cursor - window):cursor], text[end:end + window], "end-of-line"))
    return out


def write_result(path: str | Path, benchmark: str, tables: dict[str, dict], **extra) -> Path:
    """benchmarks/results/<benchmark>.json: the tables (name -> title, header, rows, note) with the
    commit, dirty flag, command line, load average and library versions they were measured with."""
    from engine.training.provenance import stamp

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": benchmark, **stamp(), "load_average": round(os.getloadavg()[0], 2), **extra,
              "tables": tables}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"result: {path}")
    return path
