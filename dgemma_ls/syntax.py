"""Tree-sitter documents: which grammar a file uses, incremental re-parsing after edits, and
where the parse has errors. Offsets here are Python str indices; the UTF-8 byte offsets
tree-sitter needs are computed here and nowhere else. Knows nothing of LSP or the model."""

from __future__ import annotations

import functools
import posixpath
from typing import Iterator

from tree_sitter import Language, Node, Parser, Point, Tree

LANGUAGES = ("python", "javascript", "typescript", "tsx", "json", "markdown", "text")

# LSP languageIds that name a grammar directly or through a dialect we parse the same way.
_LANGUAGE_IDS = {
    "python": "python",
    "javascript": "javascript",
    "javascriptreact": "javascript",
    "typescript": "typescript",
    "typescriptreact": "tsx",
    "json": "json",
    "jsonc": "json",
    "json5": "json",
    "markdown": "markdown",
    "plaintext": "text",
}

_EXTENSIONS = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".json": "json",
    ".jsonc": "json",
    ".md": "markdown",
    ".markdown": "markdown",
}


def language_for(language_id: str, uri: str) -> str:
    """The grammar for a document: its LSP languageId first, then its file extension,
    else "text"."""
    if language_id in _LANGUAGE_IDS:
        return _LANGUAGE_IDS[language_id]
    extension = posixpath.splitext(uri.split("?", 1)[0].split("#", 1)[0])[1].lower()
    return _EXTENSIONS.get(extension, "text")


@functools.cache
def grammar(language: str) -> Language | None:
    """The tree-sitter Language for one of LANGUAGES; None for "text"."""
    if language == "python":
        import tree_sitter_python as module

        return Language(module.language())
    if language == "javascript":
        import tree_sitter_javascript as module

        return Language(module.language())
    if language in ("typescript", "tsx"):
        import tree_sitter_typescript as module

        capsule = module.language_tsx() if language == "tsx" else module.language_typescript()
        return Language(capsule)
    if language == "json":
        import tree_sitter_json as module

        return Language(module.language())
    if language == "markdown":
        # The block grammar: headings, lists, code blocks, pipe tables. Inline content
        # (emphasis, links) is a second grammar that nothing here needs.
        import tree_sitter_markdown as module

        return Language(module.language())
    return None


def make_parser(language: str) -> Parser | None:
    lang = grammar(language)
    return Parser(lang) if lang is not None else None


def _point(text: str, offset: int) -> Point:
    """The tree-sitter point (row, UTF-8 byte column) of a str offset."""
    row = text.count("\n", 0, offset)
    line_start = text.rfind("\n", 0, offset) + 1
    return Point(row, len(text[line_start:offset].encode("utf-8")))


def count_errors(root: Node, start_byte: int = 0, end_byte: int | None = None) -> int:
    """ERROR and MISSING nodes under root that touch [start_byte, end_byte]."""
    if end_byte is None:
        end_byte = root.end_byte
    count = 0
    stack = [root]
    while stack:
        node = stack.pop()
        if node.end_byte < start_byte or node.start_byte > end_byte:
            continue
        if node.is_error or node.is_missing:
            count += 1
        if node.has_error:
            stack.extend(node.children)
    return count


@functools.lru_cache(maxsize=64)
def parse(text: str, language: str) -> Tree | None:
    """A fresh parse of text (None for plain text). Cached because finalize checks many
    candidates against the same document without them."""
    parser = make_parser(language)
    return parser.parse(text.encode("utf-8")) if parser is not None else None


def errors_in(text: str, language: str, start: int | None = None, end: int | None = None) -> int:
    """ERROR + MISSING nodes in a fresh parse of text touching [start, end] (str offsets,
    the whole text by default); 0 for plain text."""
    tree = parse(text, language)
    if tree is None:
        return 0
    start_byte = len(text[:start].encode("utf-8")) if start is not None else 0
    end_byte = len(text[:end].encode("utf-8")) if end is not None else None
    return count_errors(tree.root_node, start_byte, end_byte)


class SyntaxTree:
    """One document's text and its tree-sitter tree, kept in step by apply_edit."""

    def __init__(self, text: str, language: str):
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r}; expected one of {LANGUAGES}")
        self.language = language
        self.text = text
        self._parser = make_parser(language)
        self._bytes = text.encode("utf-8")
        self.tree: Tree | None = self._parser.parse(self._bytes) if self._parser else None

    def apply_edit(self, start_offset: int, old_end_offset: int, new_text: str) -> None:
        """Replace text[start_offset:old_end_offset] by new_text and re-parse incrementally."""
        old = self.text
        if not 0 <= start_offset <= old_end_offset <= len(old):
            raise ValueError(
                f"edit range {start_offset}..{old_end_offset} outside document of {len(old)} chars"
            )
        new = old[:start_offset] + new_text + old[old_end_offset:]
        new_end_offset = start_offset + len(new_text)
        start_byte = self.byte_offset(start_offset)
        old_end_byte = start_byte + len(old[start_offset:old_end_offset].encode("utf-8"))
        new_end_byte = start_byte + len(new_text.encode("utf-8"))
        start_point = _point(old, start_offset)
        old_end_point = _point(old, old_end_offset)
        self.text = new
        self._bytes = new.encode("utf-8")
        if self.tree is None:
            return
        self.tree.edit(
            start_byte=start_byte,
            old_end_byte=old_end_byte,
            new_end_byte=new_end_byte,
            start_point=start_point,
            old_end_point=old_end_point,
            new_end_point=_point(new, new_end_offset),
        )
        self.tree = self._parser.parse(self._bytes, self.tree)

    def byte_offset(self, offset: int) -> int:
        return len(self.text[:offset].encode("utf-8"))

    def str_offset(self, byte_offset: int) -> int:
        return len(self._bytes[:byte_offset].decode("utf-8", errors="ignore"))

    def node_span(self, node: Node) -> tuple[int, int]:
        """A node's (start, end) as str offsets."""
        return self.str_offset(node.start_byte), self.str_offset(node.end_byte)

    def error_count(self, start: int | None = None, end: int | None = None) -> int:
        """ERROR + MISSING nodes touching [start, end] (str offsets), the whole text by
        default; always 0 for plain text."""
        if self.tree is None:
            return 0
        start_byte = self.byte_offset(start) if start is not None else 0
        end_byte = self.byte_offset(end) if end is not None else len(self._bytes)
        return count_errors(self.tree.root_node, start_byte, end_byte)

    def node_at(self, offset: int) -> Node | None:
        """The smallest node spanning offset, None for plain text."""
        if self.tree is None:
            return None
        byte = self.byte_offset(offset)
        return self.tree.root_node.descendant_for_byte_range(byte, byte)

    def ancestors(self, offset: int) -> Iterator[Node]:
        """Nodes containing offset, innermost first, ending with the root."""
        node = self.node_at(offset)
        while node is not None:
            yield node
            node = node.parent
