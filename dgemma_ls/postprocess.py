"""Turning a raw model middle into text an editor can insert: cut to the fill's scope,
re-indented, without what the suffix already says, brackets balanced against the suffix,
and rejected when it makes the document parse worse. Knows nothing of LSP or the model."""

from __future__ import annotations

import re
from typing import Iterator

from .context import FimContext, leading_ws, opens_block
from .syntax import SyntaxTree, errors_in

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {")": "(", "]": "[", "}": "{"}
TAB_WIDTH = 4
_CONTINUATIONS = re.compile(r"\s*(else|elif|except|finally|catch)\b")
_TRAILING_JUNK = re.compile(r"[\s)\]};,]*")
_BLANK_TAIL = re.compile(r"(\n[ \t]*)+$")

_LINE_COMMENTS = {
    "python": ("#",),
    "javascript": ("//",),
    "typescript": ("//",),
    "tsx": ("//",),
    "json": ("//",),
}
_QUOTES = {"python": "'\"", "javascript": "'\"`", "typescript": "'\"`", "tsx": "'\"`", "json": "\""}


def bracket_events(text: str, language: str) -> Iterator[tuple[int, str]]:
    """(index, char) of every bracket in text outside strings and comments. A lexer, not a
    parser: it must cope with the unbalanced fragments that prefixes and middles are."""
    line_comments = _LINE_COMMENTS.get(language, ())
    block_comments = language in ("javascript", "typescript", "tsx", "json")
    quotes = _QUOTES.get(language, "")
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in OPENERS or char in CLOSERS:
            yield i, char
            i += 1
        elif any(text.startswith(mark, i) for mark in line_comments):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif block_comments and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif char in quotes:
            i = _string_end(text, i, language)
        else:
            i += 1


def _string_end(text: str, start: int, language: str) -> int:
    quote = text[start]
    if language == "python" and text.startswith(quote * 3, start):
        end = text.find(quote * 3, start + 3)
        while end > 0 and _escaped(text, end):
            end = text.find(quote * 3, end + 1)
        return len(text) if end < 0 else end + 3
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        if text[i] == "\n" and quote != "`":
            return i
        i += 1
    return len(text)


def _escaped(text: str, index: int) -> bool:
    backslashes = len(text[:index]) - len(text[:index].rstrip("\\"))
    return backslashes % 2 == 1


def unclosed_openers(text: str, language: str) -> list[str]:
    """The openers left open at the end of text, outermost first."""
    stack: list[str] = []
    for _, char in bracket_events(text, language):
        if char in OPENERS:
            stack.append(char)
        elif stack and stack[-1] == CLOSERS[char]:
            stack.pop()
    return stack


def _outer_closers(text: str, language: str) -> int:
    """How many closers in text close something opened before it."""
    depth = 0
    outer = 0
    for _, char in bracket_events(text, language):
        if char in OPENERS:
            depth += 1
        elif depth:
            depth -= 1
        else:
            outer += 1
    return outer


def strip_empty(middle: str | None) -> str | None:
    """None for a middle with nothing but whitespace; otherwise the middle without trailing
    blank lines or trailing spaces on its inner lines."""
    if middle is None or not middle.strip():
        return None
    middle = _BLANK_TAIL.sub("", middle)
    lines = middle.split("\n")
    return "\n".join([line.rstrip() for line in lines[:-1]] + lines[-1:])


def _width(whitespace: str) -> int:
    return sum(TAB_WIDTH if char == "\t" else 1 for char in whitespace)


def _render_indent(width: int, unit: str) -> str:
    if unit == "\t":
        return "\t" * (width // TAB_WIDTH) + " " * (width % TAB_WIDTH)
    return " " * width


def reindent(middle: str, ctx: FimContext) -> str:
    """Fix the indentation models get wrong and keep the columns they get right:
    - a first line indented again after an indented cursor loses the extra indentation;
    - a block body that is not deeper than the line opening the block moves to ctx.indent,
      its later lines shifted by the same amount;
    - indentation in the wrong characters (tabs in a spaces file) is converted."""
    if ctx.scope == "line":
        return middle
    lines = middle.split("\n")
    blank_prefix = not ctx.line_prefix.strip()
    if blank_prefix and ctx.line_prefix:
        lines[0] = lines[0].lstrip(" \t")
    delta = 0
    anchor = next((i for i, line in enumerate(lines) if line.strip()), None)
    if ctx.scope == "block" and anchor is not None and (anchor > 0 or blank_prefix):
        column = _width(leading_ws(lines[anchor]))
        if anchor == 0:
            column += _width(ctx.line_prefix)
        if column <= _width(ctx.outer_indent):
            delta = _width(ctx.indent) - column
            if anchor == 0 and ctx.indent.startswith(ctx.line_prefix):
                lines[0] = ctx.indent[len(ctx.line_prefix) :] + lines[0].lstrip(" \t")
    foreign = " " if ctx.indent_unit == "\t" else "\t"
    for i in range(1, len(lines)):
        whitespace = leading_ws(lines[i])
        if not lines[i].strip():
            lines[i] = ""
        elif delta or foreign in whitespace:
            width = max(0, _width(whitespace) + delta)
            lines[i] = _render_indent(width, ctx.indent_unit) + lines[i][len(whitespace) :]
    return "\n".join(lines)


def cut_to_scope(middle: str, ctx: FimContext) -> str:
    """The part of the middle that belongs to the fill's scope: the rest of the line, one
    (possibly compound) statement, or the body of the block."""
    lines = middle.split("\n")
    if ctx.scope == "line":
        return lines[0]
    if ctx.scope == "block":
        base = _width(ctx.outer_indent)
    else:
        # A statement ends where a line goes back to the column it started at.
        first = next((i for i, line in enumerate(lines) if line.strip()), 0)
        base = _width(leading_ws(ctx.line_prefix + lines[0] if first == 0 else lines[first]))
    kept = [lines[0]]
    started = bool(lines[0].strip())
    depth = _depth_after(lines[0], ctx.language, 0)
    previous = ctx.line_prefix + lines[0]
    for line in lines[1:]:
        if not line.strip():
            kept.append(line)
            continue
        if started and not _continues(line, previous, depth, base, ctx):
            if line.strip()[0] not in CLOSERS:
                break
            # The closer that ends the statement or block belongs to it; `} else {` goes on.
            kept.append(line)
            if not opens_block(line, ctx.language):
                break
        else:
            kept.append(line)
        started = True
        previous = line
        depth = _depth_after(line, ctx.language, depth)
    return "\n".join(kept)


def scope_ended(middle: str, ctx: FimContext) -> bool:
    """Whether a middle being written token by token has already left the fill's scope: what
    cut_to_scope cuts off holds code (the line that starts the next statement or block)."""
    return bool(middle[len(cut_to_scope(middle, ctx)):].strip())


def _continues(line: str, previous: str, depth: int, base: int, ctx: FimContext) -> bool:
    """Whether line still belongs to the statement or block that previous is part of."""
    return (
        depth > 0
        or previous.rstrip().endswith("\\")
        or opens_block(previous, ctx.language)
        or _width(leading_ws(line)) > base
        or (ctx.scope == "statement" and bool(_CONTINUATIONS.match(line)))
    )


def _depth_after(line: str, language: str, depth: int) -> int:
    for _, char in bracket_events(line, language):
        depth += 1 if char in OPENERS else -1
    return max(depth, 0)


def trim_overlap(middle: str, ctx: FimContext) -> str:
    """Drop the tail of the middle that repeats the start of the suffix: the rest of the
    cursor's line char by char, and the next line of the suffix line by line."""
    rest = ctx.line_suffix
    for k in range(min(len(middle), len(rest)), 0, -1):
        overlap = rest[:k]
        if middle.endswith(overlap) and (
            k == len(rest.rstrip()) or k >= 3 or re.search(r"[^\w\s]", overlap)
        ):
            middle = middle[:-k]
            break

    following = [line.strip() for line in ctx.suffix.split("\n")[1:] if line.strip()]
    if not following or not re.search(r"\w", following[0]):
        return middle
    lines = middle.split("\n")
    first = 0 if not ctx.line_prefix.strip() else 1
    for i in range(first, len(lines)):
        if lines[i].strip() == following[0]:
            return "\n".join(lines[:i])
    return middle


def balance_brackets(middle: str, ctx: FimContext) -> str:
    """Remove closers at the end of the middle that the suffix already has or that close
    nothing the prefix opened, and trailing closers of the wrong kind."""
    if ctx.in_literal or ctx.language in ("text", "markdown"):
        return middle
    open_in_prefix = unclosed_openers(ctx.prefix, ctx.language)
    depth = 0
    escaping = 0
    wrong_kind = []
    for index, char in bracket_events(middle, ctx.language):
        if char in OPENERS:
            depth += 1
        elif depth:
            depth -= 1
        else:
            target = len(open_in_prefix) - 1 - escaping
            if target < 0 or open_in_prefix[target] != CLOSERS[char]:
                wrong_kind.append(index)
            escaping += 1
    for index in reversed(wrong_kind):
        if _TRAILING_JUNK.fullmatch(middle, index + 1):
            middle = middle[:index] + middle[index + 1 :]
            escaping -= 1
    # Closers beyond what the prefix left open, counting those the suffix brings: the last
    # ones go, whichever opener they pair with inside the middle (`} else {...}` + `}`).
    excess = escaping + _outer_closers(ctx.suffix, ctx.language) - len(open_in_prefix)
    while excess > 0:
        events = [i for i, char in bracket_events(middle, ctx.language) if char in CLOSERS]
        if not events or not _TRAILING_JUNK.fullmatch(middle, events[-1] + 1):
            break
        middle = middle[: events[-1]] + middle[events[-1] + 1 :]
        excess -= 1
    return middle


def adds_errors(middle: str, ctx: FimContext) -> bool:
    """Whether the windowed document parses worse with the middle than without it: more
    ERROR/MISSING nodes, or as many but now touching the middle where none touched the
    cursor before (`x = ` + `(1 +` trades one error for another)."""
    if ctx.language == "text":
        return False
    without_text = ctx.prefix + ctx.suffix
    with_text = ctx.prefix + middle + ctx.suffix
    without = errors_in(without_text, ctx.language)
    with_middle = errors_in(with_text, ctx.language)
    if with_middle != without:
        return with_middle > without
    at = len(ctx.prefix)
    return (
        with_middle > 0
        and errors_in(with_text, ctx.language, at, at + len(middle)) > 0
        and errors_in(without_text, ctx.language, at, at) == 0
    )


def finalize(middle: str | None, ctx: FimContext, tree: SyntaxTree | None = None) -> str | None:
    """The text to insert at ctx.cursor, or None when nothing worth showing is left.
    tree is the document the context was built from; the checks run on ctx's windows."""
    if middle is None:
        return None
    middle = middle.replace("\r\n", "\n")
    middle = reindent(middle, ctx)
    middle = cut_to_scope(middle, ctx)
    middle = trim_overlap(middle, ctx)
    middle = balance_brackets(middle, ctx)
    middle = strip_empty(middle)
    if middle is None:
        return None
    if not ctx.line_suffix.strip():
        middle = middle.rstrip(" \t")
    elif "\n" in middle and ctx.suffix[:1] not in ("\n", ""):
        # A multi-line fill before a closer on the cursor's line (`{|}`): put the closer on
        # its own line at the block's indentation.
        middle += "\n" + ctx.outer_indent
    if adds_errors(middle, ctx):
        return None
    return middle
