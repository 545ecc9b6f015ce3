"""The smallest set of (start, end, new_text) replacements turning one text into another,
so a repair reaches the editor as small TextEdits rather than a whole-document rewrite
(cursors, folds and undo history stay put). Offsets are Python str indices into the old
text; the server converts them to LSP positions."""

from __future__ import annotations

import difflib

# difflib compares every line with every line of the changed region: past this many pairs
# (a repair that touched thousands of lines) it would hold the process for minutes, so the
# changed region goes out as one edit.
MAX_LINE_PAIRS = 4_000_000


def minimal_edits(old: str, new: str) -> list[tuple[int, int, str]]:
    """Non-overlapping edits, in document order, that turn old into new when applied
    together (as LSP applies a TextEdit[]: all ranges refer to old)."""
    if old == new:
        return []
    old_lines = old.splitlines(keepends=True)
    new_lines = new.splitlines(keepends=True)
    old_starts = _starts(old_lines)
    new_starts = _starts(new_lines)
    if len(old_lines) * len(new_lines) > MAX_LINE_PAIRS:
        return [_shrink(old, 0, len(old), new)]
    matcher = difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False)
    edits = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        start, end = old_starts[i1], old_starts[i2]
        replacement = new[new_starts[j1] : new_starts[j2]]
        edits.append(_shrink(old, start, end, replacement))
    return edits


def _starts(lines: list[str]) -> list[int]:
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    return starts


def _shrink(old: str, start: int, end: int, replacement: str) -> tuple[int, int, str]:
    """Trim the characters a line-level replacement shares with the text it replaces."""
    replaced = old[start:end]
    head = 0
    limit = min(len(replaced), len(replacement))
    while head < limit and replaced[head] == replacement[head]:
        head += 1
    tail = 0
    while tail < limit - head and replaced[-1 - tail] == replacement[-1 - tail]:
        tail += 1
    return start + head, end - tail, replacement[head : len(replacement) - tail]


def apply_edits(text: str, edits: list[tuple[int, int, str]]) -> str:
    """Apply edits whose ranges all refer to text (the inverse of minimal_edits)."""
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text
