"""Finding and repairing Markdown pipe tables: every row gets the header's column count
(a row with more cells widens the header, no cell with text is dropped), the delimiter row
is added or fixed with its alignment markers kept, empty cells can be filled by the model,
and pipes are aligned by display width. Knows nothing of LSP or of the engine: the model
comes in as a `fill(prefix, suffix, max_tokens) -> list[str]` callable."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable

from .syntax import SyntaxTree

Fill = Callable[[str, str, int], "list[str] | None"]

MAX_CELL_TOKENS = 16
MAX_CELL_CHARS = 80
_SPLIT = re.compile(r"(?<!\\)\|")
_DELIMITER_CELL = re.compile(r":?-+:?")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
# Tables in block quotes are left alone: their rows carry the quote markers.
_NOT_TABLE = {"fenced_code_block", "indented_code_block", "html_block", "block_quote"}


@dataclass
class TableSpan:
    """text[start:end] is a table: from the start of its first line to the end of its last
    line, without the final line break."""

    start: int
    end: int
    source: str  # "grammar": a pipe_table node; "lines": rows the grammar did not take


def display_width(text: str) -> int:
    """Columns text takes in a monospace editor: wide CJK characters take two, combining
    marks and zero-width characters none."""
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) == "Cf":
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def find_tables(text: str) -> list[TableSpan]:
    """The pipe tables of a Markdown document, in order: those the Markdown grammar
    recognises, and runs of pipe rows it does not (a table without its delimiter row, or
    with a broken one), outside code blocks."""
    tree = SyntaxTree(text, "markdown")
    tables: list[TableSpan] = []
    excluded: list[tuple[int, int]] = []
    stack = [tree.tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "pipe_table":
            start, end = tree.node_span(node)
            line_start = text.rfind("\n", 0, start) + 1
            if not text[line_start:start].strip():  # not inside a block quote or list item
                tables.append(TableSpan(line_start, len(text[:end].rstrip("\r\n")), "grammar"))
        elif node.type in _NOT_TABLE:
            excluded.append(tree.node_span(node))
        else:
            stack.extend(node.children)

    for start, end in _pipe_runs(text):
        if any(s < end and start < e for s, e in excluded):
            continue
        overlapping = [t for t in tables if t.start <= end and start <= t.end]
        if overlapping:
            for table in overlapping:
                table.start, table.end = min(table.start, start), max(table.end, end)
        else:
            tables.append(TableSpan(start, end, "lines"))
    tables.sort(key=lambda t: t.start)
    return tables


def _pipe_runs(text: str) -> list[tuple[int, int]]:
    """Runs of two or more consecutive lines that look like table rows."""
    runs = []
    run: list[tuple[int, int, str]] = []
    offset = 0
    for line in text.split("\n") + [""]:
        content = line.rstrip("\r")
        if _UNESCAPED_PIPE.search(content) and len(content) - len(content.lstrip(" ")) < 4:
            run.append((offset, offset + len(content), content.strip()))
        else:
            rowlike = [r for r in run if r[2].startswith("|") or r[2].endswith("|")]
            delimiter = any(_is_delimiter(_cells(r[2])) for r in run)
            if len(run) >= 2 and (len(rowlike) >= 2 or delimiter):
                runs.append((run[0][0], run[-1][1]))
            run = []
        offset += len(line) + 1
    return runs


def _cells(row: str) -> list[str]:
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    return [cell.strip() for cell in _SPLIT.split(row)]


def _is_delimiter(cells: list[str]) -> bool:
    return bool(cells) and all(_DELIMITER_CELL.fullmatch(cell.replace(" ", "")) for cell in cells)


def _alignment(cell: str) -> str:
    cell = cell.replace(" ", "")
    if cell.startswith(":") and cell.endswith(":"):
        return "center"
    if cell.endswith(":"):
        return "right"
    if cell.startswith(":"):
        return "left"
    return ""


def _delimiter(alignment: str, width: int) -> str:
    if alignment == "center":
        return ":" + "-" * (width - 2) + ":"
    if alignment == "right":
        return "-" * (width - 1) + ":"
    if alignment == "left":
        return ":" + "-" * (width - 1)
    return "-" * width


def _pad(cell: str, alignment: str, width: int) -> str:
    space = width - display_width(cell)
    if alignment == "right":
        return " " * space + cell
    if alignment == "center":
        return " " * (space // 2) + cell + " " * (space - space // 2)
    return cell + " " * space


def _render(indent: str, header: list[str], alignments: list[str], body: list[list[str]]) -> list[str]:
    columns = len(header)
    widths = [
        max([3] + [display_width(row[c]) for row in [header] + body])
        for c in range(columns)
    ]

    def line(cells: list[str]) -> str:
        return indent + "| " + " | ".join(cells) + " |"

    lines = [line([_pad(header[c], alignments[c], widths[c]) for c in range(columns)])]
    lines.append(line([_delimiter(alignments[c], widths[c]) for c in range(columns)]))
    lines += [line([_pad(row[c], alignments[c], widths[c]) for c in range(columns)]) for row in body]
    return lines


def _plain(header: list[str], body: list[list[str]], alignments: list[str]) -> str:
    """The table without padding: what the model sees around an empty cell."""
    rows = [header, [_delimiter(a, 3) for a in alignments]] + body
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


def _fill_cells(header: list[str], body: list[list[str]], alignments: list[str], fill: Fill) -> None:
    """Ask the model for each empty cell, top to bottom, so later cells see earlier ones."""
    for r, row in enumerate([header] + body):
        for c, cell in enumerate(row):
            if cell:
                continue
            row[c] = "\0"
            table = _plain(header, body, alignments)
            prefix, suffix = table.split("\0")
            prefix = prefix.rstrip(" ") + " "
            row[c] = _cell_candidate(fill(prefix, suffix, MAX_CELL_TOKENS) or [])


def _cell_candidate(candidates: list[str]) -> str:
    """The first candidate that is a usable cell: single line, no pipe, not too long."""
    for candidate in candidates:
        first = (candidate or "").strip().split("\n", 1)[0]
        cell = _UNESCAPED_PIPE.split(first, 1)[0].strip()
        if cell and len(cell) <= MAX_CELL_CHARS:
            return cell
    return ""


def repair_table(text_of_table: str, fill: Fill | None = None) -> str:
    """One table, repaired and aligned. The line break style and a final line break are
    kept; so is the indentation of the first row."""
    newline = "\r\n" if "\r\n" in text_of_table else "\n"
    stripped = text_of_table.rstrip("\r\n")
    trailing = text_of_table[len(stripped) :]
    lines = [line.rstrip("\r") for line in stripped.split("\n") if line.strip()]
    if not lines:
        return text_of_table
    indent = lines[0][: len(lines[0]) - len(lines[0].lstrip(" "))]
    rows = [_cells(line) for line in lines]

    if len(rows) > 1 and _is_delimiter(rows[1]):
        header, delimiter, body = rows[0], rows[1], rows[2:]
    elif _is_delimiter(rows[0]) and len(rows) > 1:
        header, delimiter, body = [], rows[0], rows[1:]
    else:
        header, delimiter, body = rows[0], [], rows[1:]

    columns = max([len(header)] + [_used(row) for row in body] + [1])
    header = header + [""] * (columns - len(header))
    body = [row[:columns] + [""] * (columns - len(row)) for row in body]
    alignments = [_alignment(cell) for cell in delimiter][:columns]
    alignments += [""] * (columns - len(alignments))
    if fill is not None:
        _fill_cells(header, body, alignments, fill)
    return newline.join(_render(indent, header, alignments, body)) + trailing


def _used(row: list[str]) -> int:
    """Cells up to the last non-empty one: trailing empty cells can go, others cannot."""
    return max((i + 1 for i, cell in enumerate(row) if cell), default=0)


def repair_tables(text: str, fill: Fill | None = None, start: int | None = None, end: int | None = None) -> str:
    """text with every table repaired, or only those touching [start, end]."""
    for table in reversed(find_tables(text)):
        if start is not None and table.end < start:
            continue
        if end is not None and table.start > end:
            continue
        text = text[: table.start] + repair_table(text[table.start : table.end], fill) + text[table.end :]
    return text
