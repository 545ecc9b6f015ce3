"""Places a fill-in-the-middle code action can fill: the selection, or the placeholders on
the cursor's line (`...`, `pass  # TODO`, a TODO comment line, an empty function body).
Knows nothing of LSP: the server turns each FillTarget into a code action."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tree_sitter import Node

from .syntax import SyntaxTree

_TODO = re.compile(r"^\s*(?:#|//|/\*+|<!--)?\s*((?:TODO|FIXME|XXX)\b.*?)\s*(?:\*/|-->)?\s*$")
_FUNCTIONS = {
    "function_definition",
    "function_declaration",
    "generator_function_declaration",
    "function_expression",
    "function",
    "arrow_function",
    "method_definition",
}


@dataclass
class FillTarget:
    """document[start:end] (str offsets) is what the fill replaces; an empty range inserts."""

    start: int
    end: int
    kind: str  # "selection" | "ellipsis" | "todo" | "empty_body"
    scope: str = "block"  # the FIM scope to build the context with
    hint: str = ""  # the TODO text, for the action's title


def find_fill_targets(tree: SyntaxTree, start: int, end: int) -> list[FillTarget]:
    """The selection itself when start < end; otherwise the placeholders touching the
    cursor's line, in document order."""
    text = tree.text
    if start < end:
        line_start = text.rfind("\n", 0, start) + 1
        line_end = _line_end(text, end)
        single_line = "\n" not in text[start:end]
        rest_of_line = text[line_start:start] + text[end:line_end]
        scope = "line" if single_line and rest_of_line.strip() else "block"
        return [FillTarget(start, end, "selection", scope)]
    line_start = text.rfind("\n", 0, start) + 1
    line_end = _line_end(text, start)
    if tree.tree is None or tree.language == "markdown":
        return _todo_lines(text, line_start, line_end)
    targets: list[FillTarget] = []
    _collect(tree, tree.tree.root_node, tree.byte_offset(line_start), tree.byte_offset(line_end), targets)
    unique = {(t.start, t.end): t for t in targets}
    return sorted(unique.values(), key=lambda t: (t.start, t.end))


def _line_end(text: str, offset: int) -> int:
    end = text.find("\n", offset)
    return len(text) if end < 0 else end


def _todo_lines(text: str, line_start: int, line_end: int) -> list[FillTarget]:
    """A line that is only a TODO (plain text, or an HTML comment in Markdown)."""
    line = text[line_start:line_end]
    match = _TODO.match(line)
    if not match or not line.strip():
        return []
    first = line_start + len(line) - len(line.lstrip())
    return [FillTarget(first, line_start + len(line.rstrip()), "todo", "block", match.group(1))]


def _collect(tree: SyntaxTree, root: Node, low: int, high: int, out: list[FillTarget]) -> None:
    """Placeholders in root's subtree that touch the byte range [low, high], in document
    order. A walk with its own stack: a 1,000-deep list literal is a valid program."""
    stack = [root]
    while stack:
        node = stack.pop()
        if node.end_byte < low or node.start_byte > high:
            continue
        if node.type in _FUNCTIONS:
            body = node.child_by_field_name("body")
            if body is not None:
                target = _empty_body(tree, body)
                if target is not None:
                    out.append(target)
        elif node.type == "comment" and _alone_on_line(tree, node) and _touches(node, low, high):
            match = _TODO.match(node.text.decode("utf-8", errors="replace"))
            if match:
                start, end = tree.node_span(node)
                out.append(FillTarget(start, end, "todo", "block", match.group(1)))
        elif node.type == "expression_statement" and _is_ellipsis(node) and _touches(node, low, high):
            out.append(_with_todo(tree, node, "ellipsis"))
        elif node.type == "pass_statement" and _touches(node, low, high):
            comment = _trailing_comment(node)
            if comment is not None and _TODO.match(comment.text.decode("utf-8", errors="replace")):
                out.append(_with_todo(tree, node, "todo"))
        stack.extend(reversed(node.children))


def _touches(node: Node, low: int, high: int) -> bool:
    return node.start_byte <= high and node.end_byte >= low


def _is_ellipsis(node: Node) -> bool:
    return node.named_child_count == 1 and node.named_children[0].type == "ellipsis"


def _alone_on_line(tree: SyntaxTree, node: Node) -> bool:
    start, end = tree.node_span(node)
    line_start = tree.text.rfind("\n", 0, start) + 1
    return not tree.text[line_start:start].strip() and not tree.text[end:_line_end(tree.text, end)].strip()


def _trailing_comment(node: Node) -> Node | None:
    sibling = node.next_sibling
    if sibling is not None and sibling.type == "comment" and sibling.start_point.row == node.end_point.row:
        return sibling
    return None


def _with_todo(tree: SyntaxTree, node: Node, kind: str) -> FillTarget:
    """node as a target, extended over a TODO comment after it on the same line."""
    start, end = tree.node_span(node)
    hint = ""
    comment = _trailing_comment(node)
    if comment is not None:
        match = _TODO.match(comment.text.decode("utf-8", errors="replace"))
        if match:
            end = tree.node_span(comment)[1]
            hint = match.group(1)
            kind = "todo"
    return FillTarget(start, end, kind, "block", hint)


def _empty_body(tree: SyntaxTree, body: Node) -> FillTarget | None:
    """The fillable part of a function body with nothing in it: the inside of `{}`, a lone
    `pass` or `...` (with its TODO comment), or the end of a lone docstring."""
    statements = [child for child in body.named_children if child.type != "comment"]
    if body.type == "statement_block":
        if body.named_child_count:
            return None
        start, end = tree.node_span(body)
        return FillTarget(start + 1, end - 1, "empty_body", "block")
    if body.type != "block":
        return None
    docstring = bool(statements) and _is_docstring(statements[0])
    rest = statements[1:] if docstring else statements
    if len(rest) == 1 and rest[0].type == "pass_statement":
        return _with_todo(tree, rest[0], "empty_body")
    if len(rest) == 1 and _is_ellipsis(rest[0]):
        return _with_todo(tree, rest[0], "ellipsis")
    if docstring and not rest:
        end = tree.node_span(statements[0])[1]
        return FillTarget(end, end, "empty_body", "block")
    return None


def _is_docstring(node: Node) -> bool:
    return (
        node.type == "expression_statement"
        and node.named_child_count == 1
        and node.named_children[0].type in ("string", "concatenated_string")
    )
