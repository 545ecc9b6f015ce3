"""Repairing broken JSON while keeping the user's formatting and data: unambiguous rewrites
first (quotes, Python literals, unquoted keys, comments), then the model for values
missing after a key's colon (a plain literal or nothing), then deterministic structural
fixes, and required keys from a JSON Schema. The model never adds elements or keys: a
trailing comma is removed, never filled. `json` is the judge of the result. Knows nothing of LSP or of the engine:
the model comes in as a `fill(prefix, suffix, max_tokens) -> list[str]` callable, asked a
bounded number of times, and not at all past a size or nesting bound (the notes say so)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .syntax import SyntaxTree

Fill = Callable[[str, str, int], "list[str] | None"]
StopPredicate = Callable[[], bool]

MAX_MODEL_HOLES = 8
MAX_MODEL_VALUES = 16  # values of required keys the model writes in one repair; the rest take defaults
# Every model call re-parses the document (tree-sitter, ~0.1 s per MB) to judge a candidate;
# above this the repair uses its rules alone.
MAX_MODEL_CHARS = 200_000
# json.loads recurses once per level, and Python's recursion limit (1000) is shared with its
# caller's frames: deeper documents are left as they are, with a note.
MAX_NESTING = 500
MAX_SCHEMA_DEPTH = 32  # a schema whose $refs recurse gets defaults this deep at most
PREFIX_CHARS = 4000  # how much text around a hole the model sees
SUFFIX_CHARS = 1000

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
    |(?P<comment>//[^\n]*|/\*.*?(?:\*/|\Z)|\#[^\n]*)
    |(?P<string>["'])
    |(?P<number>-?Infinity\b|NaN\b|-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<word>[A-Za-z_$][\w$]*)
    |(?P<punct>[{}\[\]:,])
    |(?P<other>.)
    """,
    re.X | re.S,
)
_LITERALS = {"true": "true", "false": "false", "null": "null", "True": "true", "False": "false",
             "None": "null", "undefined": "null"}
_CLOSE = {"{": "}", "[": "]"}
_BRACKET_OR_STRING = re.compile(r"""[\[\]{}]|"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?""")
_DEFAULTS = {"string": "", "number": 0, "integer": 0, "boolean": False, "array": [], "object": {},
             "null": None}


@dataclass
class RepairResult:
    text: str
    changed: bool
    used_model: bool
    notes: list[str] = field(default_factory=list)
    valid: bool = True  # json.loads accepts text


@dataclass
class _Token:
    kind: str  # ws | comment | string | number | word | punct | other
    text: str
    start: int
    closed: bool = True  # strings: whether the closing quote was there


def _tokens(text: str) -> Iterator[_Token]:
    """Lenient JSON tokens; a string runs to its closing quote, the end of its line or the
    end of the text."""
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        kind = match.lastgroup
        if kind != "string":
            yield _Token(kind, match.group(), pos)
            pos = match.end()
            continue
        quote = text[pos]
        i = pos + 1
        while i < len(text) and text[i] not in (quote, "\n"):
            i += 2 if text[i] == "\\" else 1
        if i < len(text) and text[i] == quote:
            yield _Token("string", text[pos : i + 1], pos)
            pos = i + 1
            continue
        body = text[pos + 1 : min(i, len(text))].rstrip()
        # `"abc},` most likely lost its quote before the punctuation, not inside it.
        content = re.sub(r"[\s,}\]]*[,}\]]$", "", body) if re.search(r"[,}\]]$", body) else body
        yield _Token("string", quote + content, pos, closed=False)
        pos += 1 + len(content)


def _as_double_quoted(token: _Token) -> str:
    """A string token as a valid JSON string literal with the same content."""
    text = token.text
    quote = text[0]
    body = text[1:-1] if token.closed else text[1:]
    if quote == "'":
        body = re.sub(r'(?<!\\)((?:\\\\)*)"', r'\1\\"', body).replace("\\'", "'")
    return '"' + body.replace("\t", "\\t") + '"'


@dataclass
class _Frame:
    kind: str  # "{" | "[" | "top"
    state: str  # object: key colon value comma; array: value comma; top: value done
    indent: str = ""
    multiline: bool = False
    comma: int | None = None  # output index of the comma that opened the current slot
    colon: int | None = None  # output index of the colon of the current pair


class _Fixer:
    """One left-to-right pass over the tokens rewriting the output token by token. Lexical
    fixes always; structural ones (commas, colons, missing values, brackets) only when asked,
    so the model gets to see the broken spans first."""

    def __init__(self, text: str, structural: bool):
        self.text = text
        self.structural = structural
        self.out: list[str] = []
        self.last = -1  # output index of the last significant token
        self.stack = [_Frame("top", "value")]
        self.notes: list[str] = []
        self.last_kind = ""  # token kind of the last significant token
        self.skip_newline = False  # a comment alone on its line went: so does its line break
        self.skip_spaces = False  # a comment that led its line went: so do the spaces after it

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    def run(self) -> str:
        for token in _tokens(self.text):
            self.feed(token)
        self.finish()
        return "".join(self.out)

    def emit(self, text: str, significant: bool = True) -> int:
        self.out.append(text)
        if significant:
            self.last = len(self.out) - 1
        return len(self.out) - 1

    def after_last(self, text: str) -> None:
        """Insert text right after the last significant token (before whitespace)."""
        if self.last < 0:
            self.out.insert(0, text)
            self.last = 0
        else:
            self.out[self.last] += text

    def feed(self, token: _Token) -> None:
        frame = self.stack[-1]
        if token.kind == "ws":
            text = token.text
            if self.skip_newline and "\n" in text:
                text = text.replace("\n", "", 1)
            elif self.skip_spaces:
                text = text.lstrip(" \t")
            self.skip_newline = self.skip_spaces = False
            self.emit(text, significant=False)
            if "\n" in token.text and frame.kind != "top":
                frame.multiline = True
            return
        self.skip_newline = self.skip_spaces = False
        if token.kind == "comment":
            self.remove_comment(token)
            return
        if token.kind == "punct" and token.text == ":":
            self.colon(frame)
        elif token.kind == "punct" and token.text == ",":
            self.comma(frame)
        elif token.kind == "punct" and token.text in "}]":
            self.closer(token.text)
        elif token.kind == "other":
            self.emit(token.text)
        else:
            self.value(frame, token)
        self.last_kind = token.kind

    def remove_comment(self, token: _Token) -> None:
        self.note("removed comments (JSON has none)")
        line_start = self.text.rfind("\n", 0, token.start) + 1
        end = token.start + len(token.text)
        leads_line = not self.text[line_start : token.start].strip()
        ends_line = self.text[end : end + 1] in ("\n", "")
        if ends_line and self.out and not self.out[-1].strip():
            self.out[-1] = self.out[-1].rstrip(" \t")
        if leads_line and ends_line:
            self.skip_newline = True
        elif "\n" in token.text:
            self.emit("\n", significant=False)
        elif leads_line:
            self.skip_spaces = True

    def value(self, frame: _Frame, token: _Token) -> None:
        if frame.state == "comma" and self.structural:
            self.after_last(",")
            frame.comma = self.last
            self.note("inserted missing commas")
            frame.state = "key" if frame.kind == "{" else "value"
        if frame.kind == "{" and frame.state == "colon" and self.structural:
            self.after_last(":")
            self.note("inserted missing colons")
            frame.state = "value"
        if frame.kind == "{" and frame.state == "key" and token.kind != "punct":
            self.emit(self.key_text(token))
            frame.state = "colon"
            return
        self.emit(self.value_text(token))
        if token.kind == "punct":
            self.stack.append(_Frame(token.text, "key" if token.text == "{" else "value",
                                     indent=self.line_indent(token.start)))
        else:
            frame.state = "done" if frame.kind == "top" else "comma"

    def key_text(self, token: _Token) -> str:
        if token.kind == "string":
            return self.string_text(token)
        self.note("quoted unquoted keys")
        return json.dumps(token.text)

    def value_text(self, token: _Token) -> str:
        if token.kind == "string":
            return self.string_text(token)
        if token.kind == "word":
            literal = _LITERALS.get(token.text)
            if literal is None:
                self.note("quoted bare words")
                return json.dumps(token.text)
            if literal != token.text:
                self.note(f"replaced {token.text} with {literal}")
            return literal
        return token.text

    def string_text(self, token: _Token) -> str:
        if not token.closed:
            self.note("closed unterminated strings")
        elif token.text[0] == "'":
            self.note("replaced single quotes with double quotes")
        else:
            return token.text
        return _as_double_quoted(token)

    def colon(self, frame: _Frame) -> None:
        if frame.kind == "{" and frame.state == "colon":
            frame.colon = self.emit(":")
            frame.state = "value"
        elif self.structural and frame.kind == "{" and frame.state == "value":
            self.note("removed extra colons")
        elif self.structural and self.key_in_array(frame):
            # `"a": [1, 2,\n "b": 3`: the array ended before "b", which is a key.
            item = self.out[frame.comma]
            cut = item.rindex(",")
            self.out[frame.comma] = item[:cut] + "]," + item[cut + 1 :]
            self.note("closed unclosed brackets")
            self.stack.pop()
            self.stack[-1].colon = self.emit(":")
            self.stack[-1].state = "value"
        else:
            self.emit(":")

    def comma(self, frame: _Frame) -> None:
        if frame.state == "comma":
            frame.comma = self.emit(",")
            frame.state = "key" if frame.kind == "{" else "value"
        elif not self.structural or frame.kind == "top":
            self.emit(",")
        elif frame.kind == "{" and frame.state in ("value", "colon"):
            self.fill_missing_value(frame)
            frame.comma = self.emit(",")
            frame.state = "key"
        else:
            self.note("removed extra commas")

    def key_in_array(self, frame: _Frame) -> bool:
        return (
            frame.kind == "["
            and frame.state == "comma"
            and self.last_kind == "string"
            and frame.comma is not None
            and self.stack[-2].kind == "{"
        )

    def fill_missing_value(self, frame: _Frame) -> None:
        if frame.state == "colon":
            self.after_last(": null")
        elif self.out and not self.out[-1].strip():
            self.emit("null")
        else:
            self.emit(" null")
        self.note("inserted null for missing values")

    def closer(self, char: str) -> None:
        opener = "{" if char == "}" else "["
        depth = next((i for i in range(len(self.stack) - 1, 0, -1) if self.stack[i].kind == opener), None)
        if not self.structural:
            self.emit(char)
            if depth == len(self.stack) - 1:
                self.stack.pop()
                self.complete(self.stack[-1])
            return
        if depth is None:
            self.note("removed unmatched closing brackets")
            return
        while len(self.stack) - 1 > depth:
            self.close_frame(inline=True)
        self.tidy_frame(self.stack[-1])
        self.emit(char)
        self.stack.pop()
        self.complete(self.stack[-1])

    def tidy_frame(self, frame: _Frame) -> None:
        """Before a frame closes: no trailing comma, no key without a value."""
        if frame.state in ("key", "value") and frame.comma is not None and (
            frame.kind == "[" or frame.state == "key"
        ):
            self.out[frame.comma] = ""
            self.note("removed trailing commas")
        elif frame.kind == "{" and frame.state in ("value", "colon"):
            self.fill_missing_value(frame)

    def close_frame(self, inline: bool) -> None:
        frame = self.stack[-1]
        self.tidy_frame(frame)
        closer = _CLOSE[frame.kind]
        if frame.multiline and not inline:
            closer = "\n" + frame.indent + closer
        self.after_last(closer)
        self.note("closed unclosed brackets")
        self.stack.pop()
        self.complete(self.stack[-1])

    def complete(self, frame: _Frame) -> None:
        frame.state = "done" if frame.kind == "top" else "comma"

    def finish(self) -> None:
        while self.structural and len(self.stack) > 1:
            self.close_frame(inline=False)

    def line_indent(self, offset: int) -> str:
        line_start = self.text.rfind("\n", 0, offset) + 1
        line = self.text[line_start:offset]
        return line[: len(line) - len(line.lstrip())]


def _valid(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def nesting(text: str) -> int:
    """How deep brackets nest in text, strings skipped (a linear scan: no recursion)."""
    depth = deepest = 0
    for match in _BRACKET_OR_STRING.finditer(text):
        char = match.group()
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def _unencodable(text: str) -> int | None:
    """The offset of the first lone surrogate, which no parser (nor UTF-8) takes; None if none."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def _stopped(should_stop: StopPredicate | None) -> bool:
    return should_stop is not None and should_stop()


def _data(text: str) -> list[str]:
    """The user's data in a span: string contents, numbers and words, in order."""
    items = []
    for token in _tokens(text):
        if token.kind == "string":
            items.append(token.text[1:-1] if token.closed else token.text[1:])
        elif token.kind in ("number", "word"):
            items.append(_LITERALS.get(token.text, token.text))
    return [item for item in items if item]


def _keeps_data(original: str, candidate: str) -> bool:
    """Whether every datum of original appears, in order, in candidate."""
    remaining = iter(_data(candidate))
    return all(item in remaining for item in _data(original))


def _holes(text: str) -> list[tuple[int, int]]:
    """Spans tree-sitter-json marks ERROR or MISSING, outermost only, in document order."""
    tree = SyntaxTree(text, "json")
    spans = []
    stack = [tree.tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            spans.append(tree.node_span(node))
        elif node.has_error:
            stack.extend(reversed(node.children))
    return spans


def _error_count(text: str) -> int:
    return SyntaxTree(text, "json").error_count()


def _missing_values(text: str) -> list[int]:
    """Offsets where tree-sitter-json marks a value MISSING right after a key's colon (past
    the spaces after it): the one hole the rules cannot fill from the text, so the only one
    the model is asked about."""
    offsets = []
    for start, end in _holes(text):
        if start == end and text[:start].rstrip().endswith(":"):
            offsets.append(start + len(text[start:]) - len(text[start:].lstrip(" \t")))
    return offsets


def _plain_literal(candidate: str) -> str | None:
    """candidate as one JSON string, number, true, false or null on one line, or None."""
    candidate = (candidate or "").strip().rstrip(",").strip()
    if not candidate or "\n" in candidate:
        return None
    try:
        value = json.loads(candidate)
    except ValueError:
        return None
    return candidate if value is None or isinstance(value, (str, int, float, bool)) else None


def _model_pass(text: str, fill: Fill, should_stop: StopPredicate | None) -> tuple[str, bool]:
    """Let the model write the values missing after a key's colon (`"a": ,`), at most
    MAX_MODEL_HOLES of them, keeping a value only if it is a plain literal that leaves the
    user's data as it was and the document with no more errors. Nothing else is the model's:
    a trailing comma is removed, a missing comma or bracket added, by the rules, so a repair
    never adds elements, keys or text the document did not have."""
    used = False
    # from the last hole to the first, so the offsets of the ones before hold
    for offset in reversed(_missing_values(text)[:MAX_MODEL_HOLES]):
        if _stopped(should_stop):
            break
        prefix, suffix = text[:offset], text[offset:]
        errors = _error_count(text)
        for candidate in fill(prefix[-PREFIX_CHARS:], suffix[:SUFFIX_CHARS], 16) or []:
            literal = _plain_literal(candidate)
            if literal is None:
                continue
            repaired = prefix + literal + suffix
            # the document too: a value that merges with the data beside it is refused
            if _keeps_data(text, repaired) and (_valid(repaired) or _error_count(repaired) < errors):
                text, used = repaired, True
                break
    return text, used


def repair_json(
    text: str, fill: Fill | None = None, schema: dict | None = None, should_stop: StopPredicate | None = None
) -> RepairResult:
    """Repair text into valid JSON without losing the user's data, and add the keys schema
    requires. Text that is valid and complete comes back unchanged; so does text nested
    deeper than MAX_NESTING. Once should_stop() is true the model is asked nothing more: the
    rules finish the repair."""
    if (bad := _unencodable(text)) is not None:
        return RepairResult(text, False, False, [f"not valid Unicode (a lone surrogate at offset {bad}): not repaired"],
                            False)
    if nesting(text) > MAX_NESTING:
        return RepairResult(text, False, False, [f"nesting deeper than {MAX_NESTING} levels: not repaired"],
                            _valid(text))
    notes: list[str] = []
    used_model = False
    repaired = text
    if fill is not None and len(text) > MAX_MODEL_CHARS:
        fill = None
        notes.append(f"larger than {MAX_MODEL_CHARS // 1000} KB: repaired by rules alone, without the model")
    if not _valid(text):
        lexical = _Fixer(text, structural=False)
        repaired = lexical.run()
        notes += lexical.notes
        if not _valid(repaired) and fill is not None:
            repaired, used_model = _model_pass(repaired, fill, should_stop)
            if used_model:
                notes.append("model wrote missing values")
        if not _valid(repaired):
            structural = _Fixer(repaired, structural=True)
            repaired = structural.run()
            notes += [n for n in structural.notes if n not in notes]
    valid = _valid(repaired)
    if not valid:
        notes.append("could not make the JSON valid")
    elif schema:
        repaired, schema_notes, schema_model = _add_required(repaired, schema, fill, should_stop)
        notes += schema_notes
        used_model = used_model or schema_model
    return RepairResult(repaired, repaired != text, used_model, notes, valid)


def _resolve(schema: dict, root: dict) -> dict:
    """Follow a local "$ref" ("#/definitions/x", "#/$defs/x")."""
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 16:
        ref = schema["$ref"]
        if not ref.startswith("#"):
            return schema
        target = root
        for part in ref.lstrip("#").strip("/").split("/"):
            if not part:
                continue
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, dict) else {}
        schema = target
        seen += 1
    return schema if isinstance(schema, dict) else {}


def _schema_types(schema: dict) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, list):
        return [k for k in kind if k != "null"] or ["null"]
    return [kind] if isinstance(kind, str) else []


def default_value(schema: dict, root: dict, depth: int = 0):
    """A value that satisfies the simple parts of schema: its default, const, first enum
    value, or the empty value of its type (objects with their own required keys, down to
    MAX_SCHEMA_DEPTH: below it an object that requires itself gets null)."""
    schema = _resolve(schema, root)
    for key in ("default", "const"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    types = _schema_types(schema)
    kind = types[0] if types else ("object" if "properties" in schema else "null")
    if kind == "object":
        if depth >= MAX_SCHEMA_DEPTH:
            return None
        properties = schema.get("properties", {})
        return {key: default_value(properties.get(key, {}), root, depth + 1) for key in schema.get("required", [])}
    return _DEFAULTS.get(kind)


def _matches_type(value, schema: dict) -> bool:
    checks = {
        "string": lambda v: isinstance(v, str),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
        "null": lambda v: v is None,
    }
    types = _schema_types(schema)
    if "enum" in schema and value not in schema["enum"]:
        return False
    return not types or any(checks.get(kind, lambda v: True)(value) for kind in types)


def _add_required(
    text: str, schema: dict, fill: Fill | None, should_stop: StopPredicate | None
) -> tuple[str, list[str], bool]:
    """Insert the keys the schema requires that the document's objects lack; the model writes
    their values when there are at most MAX_MODEL_VALUES of them."""
    tree = SyntaxTree(text, "json")
    value = next((n for n in tree.tree.root_node.named_children if n.type != "comment"), None)
    insertions: list[tuple[int, str, str, dict]] = []  # (offset, lead, key, schema)
    if value is not None:
        _collect_missing(tree, value, schema, schema, insertions)
    notes: list[str] = []
    used_model = False
    if fill is not None and len(insertions) > MAX_MODEL_VALUES:
        fill = None
        notes.append(f"{len(insertions)} required keys missing: more than the {MAX_MODEL_VALUES} values the model "
                     "writes in one repair, so all took the schema's defaults")
    # From the end, and among keys inserted at one offset the last first, so offsets hold.
    ordered = sorted(enumerate(insertions), key=lambda item: (item[1][0], item[0]), reverse=True)
    for _, (offset, lead, key, key_schema) in ordered:
        head = text[:offset] + lead + json.dumps(key) + ": "
        value_text = None
        if fill is not None and not _stopped(should_stop):
            value_text = _model_value(fill, head, text[offset:], key_schema, schema)
            used_model = used_model or value_text is not None
        if value_text is None:
            value_text = json.dumps(default_value(key_schema, schema))
        text = head + value_text + text[offset:]
        notes.insert(0, f"added required key {key!r}")
    return text, notes, used_model


def _model_value(fill: Fill, prefix: str, suffix: str, key_schema: dict, root: dict) -> str | None:
    for candidate in fill(prefix[-PREFIX_CHARS:], suffix[:SUFFIX_CHARS], 24) or []:
        candidate = candidate.strip().rstrip(",").strip()
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if "\n" not in candidate and _matches_type(value, _resolve(key_schema, root)):
            return candidate
    return None


def _collect_missing(tree: SyntaxTree, node, schema: dict, root: dict, out: list) -> None:
    schema = _resolve(schema, root)
    if node.type == "array":
        items = schema.get("items")
        if isinstance(items, dict):
            for element in node.named_children:
                _collect_missing(tree, element, items, root, out)
        return
    if node.type != "object":
        return
    pairs = [child for child in node.named_children if child.type == "pair"]
    properties = schema.get("properties", {})
    present = set()
    for pair in pairs:
        key = json.loads(pair.child_by_field_name("key").text.decode("utf-8"))
        present.add(key)
        if isinstance(properties.get(key), dict):
            _collect_missing(tree, pair.child_by_field_name("value"), properties[key], root, out)
    missing = [key for key in schema.get("required", []) if key not in present]
    if not missing:
        return
    text = tree.text
    if pairs:
        after = tree.node_span(pairs[-1])[1]
        first_start = tree.node_span(pairs[0])[0]
        if len(pairs) > 1:
            gap = text[tree.node_span(pairs[-2])[1] : tree.node_span(pairs[-1])[0]]
            separator = "," + gap[gap.index(",") + 1 :] if "," in gap else ", "
        else:
            inside = text[tree.node_span(node)[0] + 1 : first_start]
            separator = "," + inside if "\n" in inside else ", "
        for key in missing:
            out.append((after, separator, key, properties.get(key, {})))
    else:
        inside = tree.node_span(node)[0] + 1
        for i, key in enumerate(missing):
            out.append((inside, ", " if i else "", key, properties.get(key, {})))
