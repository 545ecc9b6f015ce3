"""What the model sees for one fill: prefix and suffix windows cut at syntax boundaries
within token budgets, the fill's scope (line / statement / block), its indentation, and
snippets from other files. Knows nothing of LSP or of the model beyond `count_tokens`."""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from tree_sitter import Node

from engine.constants import MAX_MIDDLE_TOKENS

from .syntax import SyntaxTree

# Nodes kept whole in a window when they fit: the enclosing function or class.
DEFINITIONS = {
    "function_definition",
    "class_definition",
    "decorated_definition",
    "function_declaration",
    "generator_function_declaration",
    "function_expression",
    "arrow_function",
    "method_definition",
    "class_declaration",
    "abstract_class_declaration",
    "class",
    "interface_declaration",
    "enum_declaration",
    "internal_module",
    "export_statement",
}
IMPORTS = {"import_statement", "import_from_statement", "future_import_statement"}
# Top-of-file nodes that may sit among the imports (docstrings, "use strict", comments).
_PREAMBLE = IMPORTS | {"comment", "expression_statement"}

_LINE_COMMENT = {"python": "#", "javascript": "//", "typescript": "//", "tsx": "//"}
_DEFAULT_UNIT = {"python": "    ", "javascript": "  ", "typescript": "  ", "tsx": "  ", "json": "  "}
# Python lines whose trailing ":" opens a block (a ":" elsewhere may be a dict or a slice).
_PY_BLOCK_KEYWORDS = re.compile(
    r"\s*(async\s+)?(def|class|if|elif|else|for|while|try|except|finally|with|match|case)\b"
)
_CLOSERS_ONLY = re.compile(r"\s*[)\]}]+[;,]?\s*")


@dataclass
class Snippet:
    """Text from another open document or a recent edit, shown to the model as comments."""

    uri: str
    text: str


@dataclass
class FimContext:
    prefix: str
    suffix: str
    scope: str  # "line" | "statement" | "block"
    indent: str  # indentation of the statements the fill writes
    language: str
    cursor: int  # document offset where the middle goes
    max_middle_tokens: int
    replace_end: int  # the middle replaces document[cursor:replace_end]; == cursor when inserting
    prefix_start: int  # document offset where the contiguous part of the prefix starts
    suffix_end: int  # document offset where the suffix ends
    line_prefix: str  # the cursor's line before the cursor
    line_suffix: str  # the cursor's line after replace_end, without the newline
    outer_indent: str  # indentation of the line that opens the block being filled
    indent_unit: str  # one level of indentation in this file ("    ", "  " or "\t")
    in_literal: bool  # the cursor is inside a string or a comment


class RecentChunks:
    """A bounded ring buffer of recently seen chunks of text (llama.vim's ring buffer): a new
    chunk evicts older ones that are nearly the same, so repeated edits of one function
    keep one slot."""

    def __init__(self, max_chunks: int = 16, max_lines: int = 64, similarity: float = 0.9):
        self.max_lines = max_lines
        self.similarity = similarity
        self._chunks: collections.deque[Snippet] = collections.deque(maxlen=max_chunks)

    def add(self, uri: str, text: str) -> None:
        lines = text.splitlines()[: self.max_lines]
        if not any(line.strip() for line in lines):
            return
        chunk = Snippet(uri, "\n".join(lines))
        kept = [c for c in self._chunks if _similarity(c.text, chunk.text) < self.similarity]
        self._chunks.clear()
        self._chunks.extend(kept)
        self._chunks.append(chunk)

    def snippets(self, exclude_uri: str | None = None) -> list[Snippet]:
        """Chunks newest first, leaving out those of exclude_uri (the document being edited,
        which the prefix already shows)."""
        return [c for c in reversed(self._chunks) if c.uri != exclude_uri]

    def __len__(self) -> int:
        return len(self._chunks)


def _similarity(a: str, b: str) -> float:
    """Jaccard similarity of the sets of non-blank lines."""
    lines_a = {line.strip() for line in a.splitlines() if line.strip()}
    lines_b = {line.strip() for line in b.splitlines() if line.strip()}
    if not lines_a or not lines_b:
        return 0.0
    return len(lines_a & lines_b) / len(lines_a | lines_b)


def chunk_around(text: str, offset: int, lines: int = 32) -> str:
    """The lines centred on offset: what the server adds to RecentChunks after an edit."""
    row = text.count("\n", 0, offset)
    all_lines = text.split("\n")
    first = max(0, row - lines // 2)
    return "\n".join(all_lines[first : first + lines])


def leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def indent_unit(text: str, language: str) -> str:
    """The file's indentation step: tabs if lines start with tabs, else the most common
    increase in leading spaces between consecutive lines."""
    increases: collections.Counter[int] = collections.Counter()
    previous = 0
    for line in text.split("\n")[:2000]:
        if not line.strip():
            continue
        if line.startswith("\t"):
            return "\t"
        width = len(line) - len(line.lstrip(" "))
        if width > previous:
            increases[width - previous] += 1
        previous = width
    if increases:
        return " " * increases.most_common(1)[0][0]
    return _DEFAULT_UNIT.get(language, "    ")


def opens_block(code: str, language: str) -> bool:
    """Whether a line of code ends by opening a block the next lines indent into."""
    stripped = code.rstrip()
    if language == "python":
        return stripped.endswith(":") and bool(_PY_BLOCK_KEYWORDS.match(stripped))
    if language in ("javascript", "typescript", "tsx"):
        return stripped.endswith("{")
    if language == "json":
        return stripped.endswith(("{", "["))
    return False


def _in_literal(tree: SyntaxTree, cursor: int) -> bool:
    """Whether the cursor is inside a string, or inside or at the end of a comment."""
    byte = tree.byte_offset(cursor)
    nodes = list(tree.ancestors(cursor))
    if cursor > 0 and tree.text[cursor - 1] != "\n":
        nodes += tree.ancestors(cursor - 1)
    for node in nodes:
        if "comment" in node.type and node.start_byte < byte <= node.end_byte:
            return True
        if "string" in node.type and node.start_byte < byte < node.end_byte:
            return True
    return False


class _Lines:
    """The document split at "\\n" (only: LSP and str offsets agree on it), with cached
    per-line token counts."""

    def __init__(self, text: str, count_tokens: Callable[[str], int]):
        self.lines = [line + "\n" for line in text.split("\n")]
        self.lines[-1] = self.lines[-1][:-1]
        self.starts = [0]
        for line in self.lines[:-1]:
            self.starts.append(self.starts[-1] + len(line))
        self._count = count_tokens
        self._costs: dict[int, int] = {}

    def cost(self, first: int, end: int) -> int:
        total = 0
        for row in range(first, end):
            if row not in self._costs:
                self._costs[row] = self._count(self.lines[row])
            total += self._costs[row]
        return total

    def join(self, first: int, end: int) -> str:
        return "".join(self.lines[first:end])


def _leading_imports_end(tree: SyntaxTree) -> int:
    """The row after the last import among the file's leading imports (0 if none)."""
    if tree.tree is None:
        return 0
    end = 0
    for child in tree.tree.root_node.named_children:
        if child.type not in _PREAMBLE:
            break
        if child.type in IMPORTS:
            end = child.end_point.row + 1
    return end


def _boundaries(ancestors: list[Node]) -> tuple[list[int], list[int]]:
    """Rows where syntax units start and end, from the children of every node around the
    cursor: the places a window may be cut without splitting a statement or function."""
    starts: set[int] = set()
    ends: set[int] = set()
    for node in ancestors:
        for child in node.named_children:
            starts.add(child.start_point.row)
            ends.add(child.end_point.row)
    return sorted(starts, reverse=True), sorted(ends)


def _prefix_window(
    tree: SyntaxTree, lines: _Lines, row: int, budget: int, ancestors: list[Node]
) -> tuple[str, int]:
    """The prefix lines above the cursor row: (text, first contiguous row)."""
    first = row
    for node in ancestors:
        if node.type not in DEFINITIONS or node.start_point.row >= first:
            continue
        cost = lines.cost(node.start_point.row, first)
        if cost > budget:
            break
        budget -= cost
        first = node.start_point.row

    imports_end = _leading_imports_end(tree)
    keep_imports = 0 < imports_end < first and lines.cost(0, imports_end) <= budget
    floor = 0
    if keep_imports:
        budget -= lines.cost(0, imports_end)
        floor = imports_end

    grown = first
    if ancestors:
        starts, _ = _boundaries(ancestors)
        for boundary in starts:
            if boundary >= grown or boundary < floor:
                continue
            cost = lines.cost(boundary, grown)
            if cost > budget:
                break
            budget -= cost
            grown = boundary
    if grown == row or not ancestors:
        # No syntax unit fits (or there is no tree): fall back to whole lines.
        while grown > floor and lines.cost(grown - 1, grown) <= budget:
            budget -= lines.cost(grown - 1, grown)
            grown -= 1
    while grown > floor and not lines.lines[grown - 1].strip():
        grown -= 1
    if keep_imports and grown > imports_end:
        return lines.join(0, imports_end) + lines.join(grown, row), grown
    if keep_imports:
        return lines.join(0, row), 0
    return lines.join(grown, row), grown


def _suffix_window(lines: _Lines, row: int, budget: int, ancestors: list[Node]) -> str:
    """The suffix lines below the cursor row."""
    end = row + 1
    total = len(lines.lines)
    for node in ancestors:
        if node.type not in DEFINITIONS or node.end_point.row + 1 <= end:
            continue
        cost = lines.cost(end, node.end_point.row + 1)
        if cost > budget:
            break
        budget -= cost
        end = node.end_point.row + 1

    grown = end
    if ancestors:
        _, ends = _boundaries(ancestors)
        for boundary in ends:
            if boundary + 1 <= grown:
                continue
            cost = lines.cost(grown, min(boundary + 1, total))
            if cost > budget:
                break
            budget -= cost
            grown = min(boundary + 1, total)
    if grown == row + 1 or not ancestors:
        while grown < total and lines.cost(grown, grown + 1) <= budget:
            budget -= lines.cost(grown, grown + 1)
            grown += 1
    return lines.join(row + 1, grown)


def _scope_and_indent(
    tree: SyntaxTree, lines: _Lines, row: int, line_prefix: str, line_suffix: str, unit: str
) -> tuple[str, str, str]:
    """(scope, indent, outer_indent) for a fill at the cursor."""
    language = tree.language
    line_indent = leading_ws(line_prefix + line_suffix)
    rest = line_suffix.strip()
    after_opener = opens_block(line_prefix, language) and (not rest or _CLOSERS_ONLY.fullmatch(rest))
    if after_opener:
        return "block", line_indent + unit, line_indent

    if line_prefix.strip() == "" and rest == "":
        above = next((lines.lines[r] for r in range(row - 1, -1, -1) if lines.lines[r].strip()), "")
        below = next((lines.lines[r] for r in range(row + 1, len(lines.lines)) if lines.lines[r].strip()), "")
        above_indent = leading_ws(above)
        if opens_block(above, language):
            body_is_empty = not below or len(leading_ws(below)) <= len(above_indent)
            indent = line_prefix if len(line_prefix) > len(above_indent) else above_indent + unit
            return ("block" if body_is_empty else "statement"), indent, above_indent
        indent = line_prefix or above_indent
        return "statement", indent, indent

    if rest:
        return "line", line_indent, line_indent
    return "statement", line_indent, line_indent


def _extra_block(snippets: Sequence[Snippet], language: str, budget: int, count_tokens) -> str:
    """Snippets rendered as comments of the file's language, most important first, within
    budget. JSON and plain text have no comment syntax, so they get none."""
    blocks = []
    for snippet in snippets:
        body = snippet.text.rstrip("\n")
        if not body.strip():
            continue
        if language in _LINE_COMMENT:
            mark = _LINE_COMMENT[language]
            commented = "\n".join(f"{mark} {line}".rstrip() for line in body.split("\n"))
            block = f"{mark} {snippet.uri}\n{commented}\n"
        elif language == "markdown":
            block = f"<!-- {snippet.uri}\n{body.replace('-->', '-- >')}\n-->\n"
        else:
            return ""
        cost = count_tokens(block)
        if cost > budget:
            continue
        budget -= cost
        blocks.append(block)
    return "".join(blocks)


MAX_TOKEN_CHARS = 16  # characters per token at most, for cutting a huge line to its token budget


def cut_to_tokens(text: str, budget: int, count_tokens: Callable[[str], int], *,
                  keep_end: bool) -> tuple[str, int]:
    """The longest end (keep_end) or start of `text` within `budget` tokens, and its token
    count: first cut to `budget * MAX_TOKEN_CHARS` characters (no token is longer), then by a
    binary search on the length when the text is denser than that (one character a token:
    minified code, binary junk)."""
    if budget <= 0:
        return "", 0
    text = text[-budget * MAX_TOKEN_CHARS:] if keep_end else text[: budget * MAX_TOKEN_CHARS]
    tokens = count_tokens(text)
    if tokens <= budget:
        return text, tokens
    lo, hi, tokens = 0, len(text), 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        n = count_tokens(text[len(text) - mid:] if keep_end else text[:mid])
        if n <= budget:
            lo, tokens = mid, n
        else:
            hi = mid - 1
    return (text[len(text) - lo:] if keep_end else text[:lo]), tokens


def build_context(
    tree: SyntaxTree,
    cursor: int,
    *,
    count_tokens: Callable[[str], int],
    prefix_budget: int = 1024,
    suffix_budget: int = 256,
    extra: Sequence[Snippet] = (),
    extra_budget: int = 256,
    replace_end: int | None = None,
    scope: str | None = None,
) -> FimContext:
    """The FIM context for a fill at cursor (str offset into tree.text).

    replace_end > cursor fills in place of document[cursor:replace_end] (a placeholder or a
    selection): the windows are built as if that text were gone. scope overrides the scope
    read from the syntax at the cursor."""
    if replace_end is None or replace_end < cursor:
        replace_end = cursor
    removed = replace_end - cursor
    if removed:
        tree = SyntaxTree(tree.text[:cursor] + tree.text[replace_end:], tree.language)
    text = tree.text
    lines = _Lines(text, count_tokens)
    row = text.count("\n", 0, cursor)
    line_start = lines.starts[row]
    line_prefix = text[line_start:cursor]
    line_rest = lines.lines[row][cursor - line_start :]
    line_suffix = line_rest.rstrip("\n")

    ancestors = list(tree.ancestors(cursor)) if tree.tree is not None else []
    # one line can be huge (minified code, a 1 MB literal): the model sees at most a budget's
    # worth of it; before this, a 1 MB line went whole into the prompt and the encoder stalled on
    # it for minutes, and a cut by characters alone still gave a dense line 16x its budget in tokens
    head, head_tokens = cut_to_tokens(line_prefix, prefix_budget, count_tokens, keep_end=True)
    tail, tail_tokens = cut_to_tokens(line_rest, suffix_budget, count_tokens, keep_end=False)
    before, first_row = _prefix_window(tree, lines, row, prefix_budget - head_tokens, ancestors)
    after = _suffix_window(lines, row, suffix_budget - tail_tokens, ancestors)
    prefix = _extra_block(extra, tree.language, extra_budget, count_tokens) + before + head
    suffix = tail + after

    unit = indent_unit(text, tree.language)
    detected, indent, outer_indent = _scope_and_indent(tree, lines, row, line_prefix, line_suffix, unit)
    in_literal = tree.tree is not None and _in_literal(tree, cursor)
    if scope is None:
        scope = "line" if in_literal else detected
    elif scope == "block" and detected != "block":
        # Filling a body in place (a placeholder, a selection): the fill's lines sit at the
        # cursor's indentation, inside a block opened one level out.
        outer_indent = indent[: -len(unit)] if indent.endswith(unit) else ""
    return FimContext(
        prefix=prefix,
        suffix=suffix,
        scope=scope,
        indent=indent,
        language=tree.language,
        cursor=cursor,
        max_middle_tokens=MAX_MIDDLE_TOKENS[scope],
        replace_end=replace_end,
        prefix_start=lines.starts[first_row],
        suffix_end=cursor + len(suffix) + removed,
        line_prefix=line_prefix,
        line_suffix=line_suffix,
        outer_indent=outer_indent,
        indent_unit=unit,
        in_literal=in_literal,
    )
