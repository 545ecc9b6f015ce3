"""The tables in docs/ are rendered from benchmark results (benchmarks/tables.py), never copied
by hand: a marked region is regenerated from its JSON, a stale one is caught, and every result
names the commit and command that produced it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks/ is a folder of scripts, not an installed package

from benchmarks import tables  # noqa: E402
from benchmarks.common import write_result  # noqa: E402
from engine.training.provenance import git  # noqa: E402

MARKED = "# Doc\n\n<!-- table: benchmarks/results/x.json latency -->\nhand-copied 116 -> 87 ms\n<!-- /table -->\n\nprose\n"


def result_tree(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/x.md").write_text(MARKED)
    table = {"title": "Latency", "header": ["case", "ms p50"], "rows": [["typed", "41"], ["open", "84"]],
             "note": "compiled in 11 s"}
    write_result(tmp_path / "benchmarks/results/x.json", "x", {"latency": table}, threads=1)
    return tmp_path


def test_a_marked_region_is_rendered_from_its_json_with_commit_and_command(tmp_path):
    root = result_tree(tmp_path)
    assert tables.main(["--root", str(root), "--check"]) == 1  # the hand-copied text is stale
    assert tables.main(["--root", str(root)]) == 0
    text = (root / "docs/x.md").read_text()
    assert "116 -> 87" not in text and text.endswith("<!-- /table -->\n\nprose\n")
    assert "| typed | 41 |" in text and "| open | 84 |" in text and "compiled in 11 s" in text
    stamp = json.loads((root / "benchmarks/results/x.json").read_text())
    assert stamp["commit"] == git("rev-parse", "HEAD")  # None outside a git checkout (an sdist)
    assert stamp["command"] in text and (stamp["commit"] or "unknown commit")[:10] in text
    assert tables.main(["--root", str(root), "--check"]) == 0  # now in step


def test_a_marker_naming_a_missing_result_or_table_is_a_clear_error(tmp_path):
    root = result_tree(tmp_path)
    (root / "docs/y.md").write_text(MARKED.replace("x.json latency", "x.json memory"))
    with pytest.raises(SystemExit, match="no table 'memory'"):
        tables.main(["--root", str(root)])
    (root / "docs/y.md").write_text(MARKED.replace("x.json", "missing.json"))
    with pytest.raises(SystemExit, match="missing.json: no such result"):
        tables.main(["--root", str(root)])


def test_the_docs_tables_match_the_committed_results():
    assert tables.main(["--root", str(REPO), "--check"]) == 0, "run: python -m benchmarks.tables"
