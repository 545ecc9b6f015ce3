"""Finding and repairing Markdown pipe tables: every row gets the header's column count
(a row with more cells widens the header, no cell with text is dropped), the delimiter row
is added or fixed with its alignment markers kept, and pipes are aligned by display width.
Without a `fill` that repair is structural and deterministic: it never writes a cell's
content. Only when a caller passes a `fill(prefix, suffix, max_tokens) -> list[str]`
callable (the separate "Fill empty table cells (model)" action) does the model write the
empty cells of the header's columns, a bounded number of them, each with the cell's
neighbourhood (header and nearby rows) as its prompt. Knows nothing of LSP or the engine."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable

from .syntax import SyntaxTree

Fill = Callable[[str, str, int], "list[str] | None"]
StopPredicate = Callable[[], bool]

MAX_CELL_TOKENS = 16
MAX_CELL_CHARS = 80
# One model call per empty cell: a table with more blanks than this is sparse on purpose (or
# malformed), and filling it would invent content and hold the model for minutes.
MAX_FILL_CELLS = 16
ROWS_BEFORE, ROWS_AFTER = 8, 4  # body rows around a cell that its prompt shows, besides the header
PREFIX_CHARS, SUFFIX_CHARS = 2000, 500  # a cap on the prompt when the rows themselves are long
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


@dataclass
class TableRepair:
    """The repaired text, and what the repair could not or would not do, in words."""

    text: str
    notes: list[str] = field(default_factory=list)
    used_model: bool = False
    empty_cells: int = 0  # empty cells of the header's own columns, before any fill


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
    tables.sort(key=lambda t: (t.start, t.end))
    merged: list[TableSpan] = []
    for table in tables:  # the grammar can split one run of rows into tables a run then joins
        if merged and table.start <= merged[-1].end:
            merged[-1].end = max(merged[-1].end, table.end)
        else:
            merged.append(table)
    return merged


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


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell_prompt(header: list[str], body: list[list[str]], alignments: list[str], r: int, c: int) -> tuple[str, str]:
    """The prefix and suffix around cell c of row r (0 is the header, r the r-th body row):
    the header and delimiter rows, up to ROWS_BEFORE body rows before and ROWS_AFTER after,
    never the whole table."""
    delimiter = _line([_delimiter(a, 3) for a in alignments])
    if r == 0:
        before, after = [], [delimiter] + [_line(row) for row in body[:ROWS_AFTER]]
    else:
        before = [_line(header), delimiter] + [_line(row) for row in body[max(0, r - 1 - ROWS_BEFORE) : r - 1]]
        after = [_line(row) for row in body[r : r + ROWS_AFTER]]
    row = header if r == 0 else body[r - 1]
    prefix = "".join(line + "\n" for line in before) + "| " + "".join(cell + " | " for cell in row[:c])
    suffix = "".join(" | " + cell for cell in row[c + 1 :]) + " |\n" + "".join(line + "\n" for line in after)
    return prefix[-PREFIX_CHARS:], suffix[:SUFFIX_CHARS]


def _fill_cells(
    header: list[str],
    body: list[list[str]],
    alignments: list[str],
    cells: list[tuple[int, int]],
    fill: Fill,
    should_stop: StopPredicate | None,
    repair: TableRepair,
) -> None:
    """Ask the model for each cell (row, column), top to bottom, so later cells see earlier
    ones; stop asking once should_stop() is true."""
    for done, (r, c) in enumerate(cells):
        if should_stop is not None and should_stop():
            repair.notes.append(f"stopped: {len(cells) - done} empty cells were not filled")
            return
        prefix, suffix = _cell_prompt(header, body, alignments, r, c)
        row = header if r == 0 else body[r - 1]
        row[c] = _cell_candidate(fill(prefix, suffix, MAX_CELL_TOKENS) or [])
        repair.used_model = repair.used_model or bool(row[c])


def _cell_candidate(candidates: list[str]) -> str:
    """The first candidate that is a usable cell: single line, no pipe, not too long."""
    for candidate in candidates:
        first = (candidate or "").strip().split("\n", 1)[0]
        cell = _UNESCAPED_PIPE.split(first, 1)[0].strip()
        if cell and len(cell) <= MAX_CELL_CHARS:
            return cell
    return ""


def repair_table(
    text_of_table: str, fill: Fill | None = None, should_stop: StopPredicate | None = None, first_line: int = 1
) -> TableRepair:
    """One table, repaired and aligned. The line break style and a final line break are
    kept; so is the indentation of the first row. Without `fill` no cell gets content it did
    not have. With it the model fills empty cells of the header's own columns, at most
    MAX_FILL_CELLS of them; columns that exist only because a row has more cells than the
    header are a malformed row, kept and never filled.
    `first_line` (1-based) is the table's line in its document, for the notes."""
    newline = "\r\n" if "\r\n" in text_of_table else "\n"
    stripped = text_of_table.rstrip("\r\n")
    trailing = text_of_table[len(stripped) :]
    numbered = enumerate(stripped.split("\n"), first_line)
    lines = [(number, line.rstrip("\r")) for number, line in numbered if line.strip()]
    if not lines:
        return TableRepair(text_of_table)
    indent = lines[0][1][: len(lines[0][1]) - len(lines[0][1].lstrip(" "))]
    numbers = [number for number, _ in lines]
    rows = [_cells(line) for _, line in lines]

    if len(rows) > 1 and _is_delimiter(rows[1]):
        header, delimiter, body, numbers = rows[0], rows[1], rows[2:], numbers[2:]
    elif _is_delimiter(rows[0]) and len(rows) > 1:
        header, delimiter, body, numbers = [], rows[0], rows[1:], numbers[1:]
    else:
        header, delimiter, body, numbers = rows[0], [], rows[1:], numbers[1:]

    repair = TableRepair("")
    own = len(header) or len(delimiter)  # the columns the table declares
    long_rows = [number for number, row in zip(numbers, body) if _used(row) > own]
    if long_rows:
        where = f"line {long_rows[0]}" if len(long_rows) == 1 else f"{len(long_rows)} rows (first: line {long_rows[0]})"
        repair.notes.append(
            f"{where}: more cells than the header's {own}; "
            "the extra cells are kept in new columns, left empty elsewhere"
        )
    columns = max([own] + [_used(row) for row in body] + [1])
    fillable = [(0, c) for c in range(len(header)) if not header[c]] if header else []
    fillable += [(r, c) for r, row in enumerate(body, 1) for c in range(own) if c >= len(row) or not row[c]]
    repair.empty_cells = len(fillable)
    header = header + [""] * (columns - len(header))
    body = [row[:columns] + [""] * (columns - len(row)) for row in body]
    alignments = [_alignment(cell) for cell in delimiter][:columns]
    alignments += [""] * (columns - len(alignments))
    if fill is not None and len(fillable) > MAX_FILL_CELLS:
        repair.notes.append(
            f"{len(fillable)} empty cells: more than the {MAX_FILL_CELLS} the model fills in one repair, "
            "so none were filled"
        )
    elif fill is not None:
        _fill_cells(header, body, alignments, fillable, fill, should_stop, repair)
    repair.text = newline.join(_render(indent, header, alignments, body)) + trailing
    return repair


def _used(row: list[str]) -> int:
    """Cells up to the last non-empty one: trailing empty cells can go, others cannot."""
    return max((i + 1 for i, cell in enumerate(row) if cell), default=0)


def repair_tables(
    text: str,
    fill: Fill | None = None,
    start: int | None = None,
    end: int | None = None,
    should_stop: StopPredicate | None = None,
) -> TableRepair:
    """text with every table repaired, or only those touching [start, end]. Once
    should_stop() is true the model is asked nothing more: the tables still get their
    deterministic repair and the notes say what was left empty."""
    result = TableRepair(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:  # the grammar reads UTF-8: a lone surrogate has none
        result.notes.append(f"not valid Unicode (a lone surrogate at offset {error.start}): not repaired")
        return result
    for table in reversed(find_tables(text)):
        if start is not None and table.end < start:
            continue
        if end is not None and table.start > end:
            continue
        first_line = text.count("\n", 0, table.start) + 1
        repair = repair_table(text[table.start : table.end], fill, should_stop, first_line)
        result.text = result.text[: table.start] + repair.text + result.text[table.end :]
        result.notes[:0] = repair.notes
        result.used_model = result.used_model or repair.used_model
        result.empty_cells += repair.empty_cells
    return result
