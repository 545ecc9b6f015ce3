"""The server's model work as plain functions of text, str offsets and Settings.

Functions taking an `engine` run on the model worker thread; the rest are pure. Results are
str-offset `Edit`s plus the `Usage` the model calls cost. Knows nothing about LSP.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from dgemma_ls import context, postprocess, repair_json, repair_markdown
from dgemma_ls.settings import Settings
from dgemma_ls.syntax import SyntaxTree
from dgemma_ls.textedits import minimal_edits

StopPredicate = Callable[[], bool]
# A round is one batch of candidates; when post-processing rejects all of them the next round
# samples again with a new seed. Explicit requests (a fill, an Invoked completion) are worth
# more rounds. Ghost text while typing gets one: a rejected candidate shows nothing and the next
# keystroke asks again. (Measured with the embedded model on 20 held-out spots: 11 first
# candidates were rejected; a second round doubled their latency and rescued one of them.)
AUTOMATIC_ROUNDS = 1
EXPLICIT_ROUNDS = 3
FILL_CANDIDATES = 3


@dataclass(frozen=True)
class Edit:
    """Replace text[start:end] by new_text (str offsets into the text it was computed on)."""

    start: int
    end: int
    new_text: str


@dataclass
class Usage:
    """What the model calls behind one result cost."""

    steps: int = 0
    tokens: int = 0
    forwards: float = 0.0
    ms: float = 0.0

    def add(self, infills: Sequence) -> None:
        for infill in infills:
            self.steps += infill.steps
            self.tokens += infill.tokens
            self.ms += infill.ms
            if infill.tokens_per_forward > 0:
                self.forwards += infill.tokens / infill.tokens_per_forward

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / self.forwards if self.forwards else 0.0


@dataclass
class Result:
    edits: list[Edit]
    usage: Usage = field(default_factory=Usage)


def token_counter(engine) -> Callable[[str], int]:
    return lambda text: len(engine.tokenizer.encode(text))


def build_context(
    engine,
    tree: SyntaxTree,
    cursor: int,
    settings: Settings,
    *,
    replace_end: int | None = None,
    scope: str | None = None,
    extra: Sequence[context.Snippet] = (),
) -> context.FimContext:
    return context.build_context(
        tree,
        cursor,
        count_tokens=token_counter(engine),
        prefix_budget=settings.prefix_tokens,
        suffix_budget=settings.suffix_tokens,
        extra=extra,
        replace_end=replace_end,
        scope=scope,
    )


def generate(
    engine, ctx, settings: Settings, num_candidates: int, should_stop: StopPredicate, usage: Usage, seed: int = 0
) -> list[str]:
    """Raw middles for a context; raises engine.Cancelled when should_stop() turns true."""
    infills = engine.infill(
        ctx.prefix,
        ctx.suffix,
        max_middle_tokens=min(ctx.max_middle_tokens, settings.max_middle_tokens),
        num_candidates=num_candidates,
        steps=settings.steps,
        entropy_bound=settings.entropy_bound,
        seed=seed,
        should_stop=should_stop,
    )
    usage.add(infills)
    return [infill.text for infill in infills]


_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")


def printable(middle: str) -> str:
    """The middle without control characters, lone carriage returns and U+FFFD (a token cut
    inside a UTF-8 sequence): none of them belongs in a source file the user is typing."""
    return _UNPRINTABLE.sub("", middle.replace("\r\n", "\n").replace("\r", ""))


def accepted(middles: Sequence[str], ctx) -> list[str]:
    """Post-processed, non-empty, de-duplicated middles in the engine's order."""
    out: list[str] = []
    for middle in middles:
        final = postprocess.finalize(printable(middle), ctx)
        if final and final.strip() and final not in out:
            out.append(final)
    return out


def sample(
    engine,
    ctx,
    settings: Settings,
    num_candidates: int,
    rounds: int,
    should_stop: StopPredicate,
    usage: Usage,
    keep: Callable[[str], bool] = lambda text: True,
) -> list[str]:
    """The accepted candidates that `keep` likes from the first of `rounds` seeded batches with any."""
    for seed in range(rounds):
        middles = generate(engine, ctx, settings, num_candidates, should_stop, usage, seed=seed)
        if texts := [text for text in accepted(middles, ctx) if keep(text)]:
            return texts
    return []


@dataclass(frozen=True)
class Hole:
    """text[start:end] is to be replaced by a fill of the given scope (None: read from the syntax)."""

    start: int
    end: int
    scope: str | None = None


def fill_hole(
    engine, tree: SyntaxTree, hole: Hole, settings: Settings, should_stop: StopPredicate, usage: Usage
) -> Edit | None:
    """A model-written replacement for a hole, or None if no candidate survived.

    A candidate survives post-processing and must not leave the whole document with more
    syntax errors than it has now (the post-processor judges windows around a hole whose
    removal may itself break the syntax, as removing `pass` does). An explicit fill is worth a
    few rounds."""
    ctx = build_context(engine, tree, hole.start, settings, replace_end=hole.end, scope=hole.scope)
    baseline = tree.error_count()

    def keeps_syntax(text: str) -> bool:
        filled = SyntaxTree(tree.text[: hole.start] + text + tree.text[hole.end :], tree.language)
        return filled.error_count() <= baseline

    texts = sample(engine, ctx, settings, FILL_CANDIDATES, EXPLICIT_ROUNDS, should_stop, usage, keep=keeps_syntax)
    return Edit(hole.start, hole.end, texts[0]) if texts else None


def fill_holes(
    engine, text: str, language: str, holes: Sequence[Hole], settings: Settings, should_stop: StopPredicate
) -> Result:
    """Fill each hole independently against the same text; edits are in document order."""
    tree = SyntaxTree(text, language)  # a private parse: the live tree belongs to the event loop
    result = Result([])
    for hole in sorted(holes, key=lambda h: (h.start, h.end)):
        edit = fill_hole(engine, tree, hole, settings, should_stop, result.usage)
        if edit is not None:
            result.edits.append(edit)
    return result


def model_fill(engine, settings: Settings, should_stop: StopPredicate, usage: Usage):
    """A `fill(prefix, suffix, max_tokens) -> list[str]` callable for the repair modules;
    None without an engine, which makes the repairs deterministic."""
    if engine is None:
        return None

    def fill(prefix: str, suffix: str, max_tokens: int) -> list[str]:
        infills = engine.infill(
            prefix,
            suffix,
            max_middle_tokens=max(1, min(max_tokens, settings.max_middle_tokens)),
            steps=settings.steps,
            entropy_bound=settings.entropy_bound,
            should_stop=should_stop,
        )
        usage.add(infills)
        return [printable(infill.text) for infill in infills]

    return fill


def _edits(old: str, new: str) -> list[Edit]:
    return [Edit(start, end, new_text) for start, end, new_text in minimal_edits(old, new)]


def repair_json_text(
    engine, text: str, settings: Settings, should_stop: StopPredicate, schema: dict | None = None
) -> Result:
    started = time.perf_counter()
    usage = Usage()
    repaired = repair_json.repair_json(text, fill=model_fill(engine, settings, should_stop, usage), schema=schema)
    usage.ms = usage.ms or (time.perf_counter() - started) * 1000
    return Result(_edits(text, repaired.text) if repaired.changed else [], usage)


def repair_markdown_text(
    engine, text: str, start: int | None, end: int | None, settings: Settings, should_stop: StopPredicate
) -> Result:
    started = time.perf_counter()
    usage = Usage()
    fill = model_fill(engine, settings, should_stop, usage)
    repaired = repair_markdown.repair_tables(text, fill=fill, start=start, end=end)
    usage.ms = usage.ms or (time.perf_counter() - started) * 1000
    return Result(_edits(text, repaired), usage)


def json_needs_repair(tree: SyntaxTree, schema: dict | None) -> bool:
    """Syntax errors, or keys the document's schema requires that a deterministic repair adds."""
    if tree.error_count() > 0:
        return True
    return schema is not None and repair_json.repair_json(tree.text, schema=schema).changed


_SCHEMA_REF = re.compile(r'"\$schema"\s*:\s*"([^"]+)"')
MAX_SCHEMA_BYTES = 1_000_000
_schemas: dict[tuple[str, int], dict | None] = {}


def json_schema(text: str, uri: str) -> dict | None:
    """The JSON Schema a document names in "$schema" when it is a local file (a path relative
    to the document, or a file: URI) that loads; remote schemas are never fetched."""
    match = _SCHEMA_REF.search(text)
    document = urllib.parse.urlparse(uri)
    if match is None or document.scheme != "file":
        return None
    ref = urllib.parse.urlparse(match.group(1))
    if ref.scheme == "file":
        path = Path(urllib.request.url2pathname(ref.path))
    elif ref.scheme:
        return None
    else:
        path = Path(urllib.request.url2pathname(document.path)).parent / match.group(1)
    try:
        stat = path.stat()
        if stat.st_size > MAX_SCHEMA_BYTES:
            return None
        key = (str(path), stat.st_mtime_ns)
        if key not in _schemas:
            if len(_schemas) > 32:
                _schemas.clear()
            loaded = json.loads(path.read_text(encoding="utf-8"))
            _schemas[key] = loaded if isinstance(loaded, dict) else None
        return _schemas[key]
    except (OSError, ValueError):
        return None


def tables_needing_repair(text: str) -> list[tuple[int, int]]:
    """Spans of the Markdown tables that deterministic repair changes."""
    spans = []
    for table in repair_markdown.find_tables(text):
        source = text[table.start : table.end]
        if repair_markdown.repair_table(source, None) != source:
            spans.append((table.start, table.end))
    return spans


# -- the completion cache ----------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """Candidates computed for a cursor in one version of a document."""

    version: int | None
    offset: int
    text: str
    candidates: tuple[str, ...]
    num_candidates: int


class CompletionCache:
    """Last candidates per document, re-served when the user types into them.

    If the text differs from the cached text only by characters typed at the cached cursor and
    those characters start a candidate, the rest of that candidate is the answer: no model call.
    """

    def __init__(self) -> None:
        self._last: dict[str, Shown] = {}

    def put(self, uri: str, shown: Shown) -> None:
        self._last[uri] = shown

    def forget(self, uri: str) -> None:
        self._last.pop(uri, None)

    def lookup(self, uri: str, version: int | None, offset: int, text: str, num_candidates: int) -> Shown | None:
        shown = self._last.get(uri)
        if shown is None or shown.num_candidates < num_candidates:
            return None
        if shown.version == version and shown.offset == offset:
            return shown
        typed = offset - shown.offset
        if typed <= 0 or len(text) - len(shown.text) != typed:
            return None
        if text[: shown.offset] != shown.text[: shown.offset] or text[offset:] != shown.text[shown.offset :]:
            return None
        prefix = text[shown.offset : offset]
        rest = tuple(c[typed:] for c in shown.candidates if c.startswith(prefix) and len(c) > typed)
        if not rest:
            return None
        follow = Shown(version, offset, text, rest, shown.num_candidates)
        self._last[uri] = follow
        return follow
