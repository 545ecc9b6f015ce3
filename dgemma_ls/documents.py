"""Open documents: text, version and an incrementally updated SyntaxTree per URI.

Owns the mapping between (line, character) positions in the negotiated position encoding
(utf-16 by default, as LSP counts) and Python str offsets, with LSP's three line terminators
(pygls's copy splits on more, so this is the only copy kept). Knows nothing about the model.
"""

from __future__ import annotations

import bisect
import copy
import logging
import re
from typing import Any, Callable, TypeVar

from dgemma_ls import syntax

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_MODEL_CHARS = 2_000_000  # above this no model call is made: context building alone would stall
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the three line terminators LSP recognises
_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str, a surrogate code point is always unpaired


def _units(char: str, encoding: str) -> int:
    if encoding == "utf-8":
        return len(char.encode("utf-8"))
    if encoding == "utf-16":
        return 2 if ord(char) > 0xFFFF else 1
    return 1


def chars_for_units(line: str, units: int, encoding: str) -> int:
    """How many characters of `line` the first `units` code units cover (clamped to the line)."""
    if encoding == "utf-32" or line.isascii():
        return min(units, len(line))
    seen = 0
    for index, char in enumerate(line):
        if seen >= units:
            return index
        seen += _units(char, encoding)
    return len(line)


def units_for_chars(line: str, chars: int, encoding: str) -> int:
    if encoding == "utf-32" or line.isascii():
        return chars
    return sum(_units(char, encoding) for char in line[:chars])


def skip_reason(text: str) -> str | None:
    """Why the model must not run on this text, or None."""
    if len(text) > MAX_MODEL_CHARS:
        return f"document too large for the model ({len(text) / 1e6:.1f} M characters > {MAX_MODEL_CHARS / 1e6:.0f} M)"
    if "\x00" in text:
        return "document looks binary (contains NUL characters)"
    if _SURROGATE.search(text):  # JSON may carry "\ud800" alone; the tokenizer refuses it (TypeError)
        return "document contains an unpaired UTF-16 surrogate"
    return None


def language_of(language_id: str, uri: str) -> tuple[str, str | None]:
    """The grammar for a document and, when the file extension overrides the client's
    languageId, why. Eglot before 1.15 sends the languageId of the buffer that started the
    server for every buffer: a `.json` file announced as "python" is parsed as JSON."""
    by_id = syntax.language_for(language_id, uri)
    by_extension = syntax.language_for("", uri)
    if "text" in (by_id, by_extension) or by_id == by_extension:
        return by_id, None
    return by_extension, f"languageId {language_id!r} contradicts the file extension: parsed as {by_extension}"


class Document:
    def __init__(self, uri: str, language_id: str, version: int | None, text: str, encoding: str = "utf-16"):
        self.uri = uri
        self.language_id = language_id
        self.version = version
        self.encoding = encoding
        self.language, self.language_note = language_of(language_id, uri)
        self._text = text
        self._line_starts: list[int] | None = None
        self.tree: syntax.SyntaxTree | None = None
        self.skip_reason: str | None = None
        self.tree_error: str | None = None
        self._memo: dict[Any, Any] = {}
        self._rebuild_tree()

    @property
    def text(self) -> str:
        return self._text

    def memo(self, key: Any, compute: Callable[[], T]) -> T:
        """compute() once per version of the text: code actions are asked for on every cursor move."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def model_block_reason(self) -> str | None:
        """Why no model call can be made on this document now, or None."""
        return self.skip_reason or self.tree_error

    # -- edits -------------------------------------------------------------------------

    def replace_all(self, text: str, version: int | None) -> None:
        self._text = text
        self.version = version
        self._line_starts = None
        self._memo.clear()
        self._rebuild_tree()

    def apply_change(self, start: tuple[int, int], end: tuple[int, int], new_text: str) -> None:
        """Apply one incremental change given as (line, character) positions."""
        start_offset = self.offset_at(*start)
        end_offset = max(start_offset, self.offset_at(*end))
        self._text = self._text[:start_offset] + new_text + self._text[end_offset:]
        self._line_starts = None
        self._memo.clear()
        if self.tree is not None and skip_reason(self._text) is None:
            try:
                # The model thread may be reading the current tree: edit a copy (Tree.copy is
                # cheap, the nodes are shared) so that a tree once handed out never changes.
                edited = copy.copy(self.tree)
                if edited.tree is not None:
                    edited.tree = edited.tree.copy()
                edited.apply_edit(start_offset, end_offset, new_text)
                self.tree = edited
                return
            except Exception as error:  # the tree is a cache: rebuild it rather than lose the edit
                log.exception("incremental parse failed for %s: %s; reparsing", self.uri, error)
        self._rebuild_tree()

    def _rebuild_tree(self) -> None:
        self.skip_reason = skip_reason(self._text)
        if self.skip_reason is not None:
            self.tree = None
            return
        try:
            self.tree = syntax.SyntaxTree(self._text, self.language)
            self.tree_error = None
        except Exception as error:
            self.tree = None
            self.tree_error = f"no syntax tree for language {self.language!r}: {error}"
            log.warning("%s: %s", self.uri, self.tree_error)

    # -- positions -----------------------------------------------------------------------

    def _starts(self) -> list[int]:
        if self._line_starts is None:
            self._line_starts = [0] + [match.end() for match in _LINE_BREAK.finditer(self._text)]
        return self._line_starts

    def _line_bounds(self, line: int) -> tuple[int, int]:
        """[start, end) of `line`'s content, without its terminator."""
        starts = self._starts()
        start = starts[line]
        if line + 1 < len(starts):
            end = starts[line + 1]
            end -= 2 if self._text.startswith("\r\n", end - 2) else 1
        else:
            end = len(self._text)
        return start, end

    def offset_at(self, line: int, character: int) -> int:
        starts = self._starts()
        if line < 0:
            return 0
        if line >= len(starts):
            return len(self._text)
        start, end = self._line_bounds(line)
        return start + chars_for_units(self._text[start:end], max(0, character), self.encoding)

    def position_at(self, offset: int) -> tuple[int, int]:
        offset = max(0, min(offset, len(self._text)))
        line = bisect.bisect_right(self._starts(), offset) - 1
        start, end = self._line_bounds(line)
        return line, units_for_chars(self._text[start:end], min(offset, end) - start, self.encoding)
