"""Render the tables in docs/ from the benchmark results, so no number is copied by hand.

A table in a Markdown file is a marked region naming a result file and one of its tables:

    <!-- table: benchmarks/results/server_latency.json inline -->
    (generated: the title, the table, the command and commit that produced it)
    <!-- /table -->

    python -m benchmarks.tables            # rewrite every marked region in docs/ and README.md
    python -m benchmarks.tables --check    # exit 1 naming each region that differs from its JSON
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from benchmarks.common import markdown

REGION = re.compile(r"(<!-- table: (?P<path>\S+) (?P<name>\S+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def provenance(result: dict) -> str:
    commit = (result.get("commit") or "unknown commit")[:10]
    dirty = " with uncommitted changes" if result.get("dirty") else ""
    return (f"*`{result['command']}` at {commit}{dirty}, {result['date']}, load average "
            f"{result.get('load_average', '?')}, torch {result.get('torch', '?')}, {result.get('machine', '?')}.*")


def render(root: Path, path: str, name: str) -> str:
    source = root / path
    if not source.is_file():
        raise SystemExit(f"{source}: no such result (run the benchmark that writes it, or fix the marker)")
    result = json.loads(source.read_text())
    tables = result.get("tables", {})
    if name not in tables:
        raise SystemExit(f"{source}: no table {name!r} (it has {', '.join(tables) or 'none'})")
    table = tables[name]
    return f"**{table['title']}**\n\n{markdown(table)}\n\n{provenance(result)}\n"


def update(text: str, root: Path) -> str:
    return REGION.sub(lambda m: m.group(1) + render(root, m["path"], m["name"]) + m.group(5), text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: here)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    args = parser.parse_args(argv)
    stale = []
    for doc in sorted([*(args.root / "docs").glob("*.md"), args.root / "README.md"]):
        if not doc.is_file():
            continue
        text = doc.read_text()
        new = update(text, args.root)
        if new != text:
            stale.append(doc)
            if not args.check:
                doc.write_text(new)
    verb = "stale" if args.check else "updated"
    for doc in stale:
        print(f"{verb}: {doc}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
