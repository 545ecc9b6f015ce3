"""The model-backed actions as plain functions of text, str offsets and Settings: sample
completions for a context, fill holes, repair JSON and Markdown tables.

Functions taking a `backend` make model calls through it (its `infill` may block while
interactive work goes first); the rest are pure. Results are str-offset `Edit`s plus the
`Usage` the model calls cost. Knows nothing about LSP, documents or threads.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from dgemma_ls import context, postprocess, repair_json, repair_markdown
from dgemma_ls.backends import BackendError
from dgemma_ls.settings import Settings
from dgemma_ls.syntax import SyntaxTree
from dgemma_ls.textedits import minimal_edits

StopPredicate = Callable[[], bool]
log = logging.getLogger(__name__)


class Backend(Protocol):
    """The one model interface the actions use; `engine.Engine` is one. `tokenizer.encode`
    only counts tokens (it must be safe to call from any thread)."""

    tokenizer: Any

    def infill(
        self,
        prefix: str,
        suffix: str,
        *,
        max_middle_tokens: int,
        num_candidates: int = 1,
        steps: int | None = None,
        entropy_bound: float | None = None,
        seed: int = 0,
        should_stop: StopPredicate | None = None,
        one_line: bool = False,  # the fill's scope is a line: a model decoding token by token may stop there
        stop_when: Callable[[str], bool] | None = None,  # ... or once this says the middle so far left its scope
    ) -> Sequence[Any]: ...  # each with .text, .steps, .tokens, .ms, .tokens_per_forward

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


def token_counter(backend: Backend) -> Callable[[str], int]:
    return lambda text: len(backend.tokenizer.encode(text))


def prompt_context(
    backend: Backend,
    tree: SyntaxTree,
    cursor: int,
    settings: Settings,
    *,
    replace_end: int | None = None,
    scope: str | None = None,
    extra: Sequence[context.Snippet] = (),
) -> context.FimContext:
    """context.build_context with the settings' token budgets, counted by the backend's tokenizer."""
    return context.build_context(
        tree,
        cursor,
        count_tokens=token_counter(backend),
        prefix_budget=settings.prefix_tokens,
        suffix_budget=settings.suffix_tokens,
        extra=extra,
        replace_end=replace_end,
        scope=scope,
    )


def generate(
    backend: Backend,
    ctx: context.FimContext,
    settings: Settings,
    num_candidates: int,
    should_stop: StopPredicate,
    usage: Usage,
    seed: int = 0,
) -> list[str]:
    """Raw middles for a context; raises engine.Cancelled when should_stop() turns true."""
    infills = backend.infill(
        ctx.prefix,
        ctx.suffix,
        max_middle_tokens=min(ctx.max_middle_tokens, settings.max_middle_tokens),
        num_candidates=num_candidates,
        steps=settings.steps,
        entropy_bound=settings.entropy_bound,
        seed=seed,
        should_stop=should_stop,
        one_line=ctx.scope == "line",
        stop_when=lambda middle: postprocess.scope_ended(middle, ctx),
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
    backend: Backend,
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
        middles = generate(backend, ctx, settings, num_candidates, should_stop, usage, seed=seed)
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
    backend: Backend, tree: SyntaxTree, hole: Hole, settings: Settings, should_stop: StopPredicate, usage: Usage
) -> Edit | None:
    """A model-written replacement for a hole, or None if no candidate survived.

    A candidate survives post-processing and must not leave the whole document with more
    syntax errors than it has now (the post-processor judges windows around a hole whose
    removal may itself break the syntax, as removing `pass` does). An explicit fill is worth a
    few rounds."""
    ctx = prompt_context(backend, tree, hole.start, settings, replace_end=hole.end, scope=hole.scope)
    baseline = tree.error_count()

    def keeps_syntax(text: str) -> bool:
        filled = SyntaxTree(tree.text[: hole.start] + text + tree.text[hole.end :], tree.language)
        return filled.error_count() <= baseline

    texts = sample(backend, ctx, settings, FILL_CANDIDATES, EXPLICIT_ROUNDS, should_stop, usage, keep=keeps_syntax)
    return Edit(hole.start, hole.end, texts[0]) if texts else None


def fill_holes(
    backend: Backend, text: str, language: str, holes: Sequence[Hole], settings: Settings, should_stop: StopPredicate
) -> Result:
    """Fill each hole independently against the same text; edits are in document order."""
    tree = SyntaxTree(text, language)  # a private parse: the live tree belongs to the event loop
    result = Result([])
    for hole in sorted(holes, key=lambda h: (h.start, h.end)):
        edit = fill_hole(backend, tree, hole, settings, should_stop, result.usage)
        if edit is not None:
            result.edits.append(edit)
    return result


def model_fill(backend: Backend | None, settings: Settings, should_stop: StopPredicate, usage: Usage):
    """A `fill(prefix, suffix, max_tokens) -> list[str]` callable for the repair modules;
    None without a backend, which makes the repairs deterministic."""
    if backend is None:
        return None

    def fill(prefix: str, suffix: str, max_tokens: int) -> list[str]:
        try:
            infills = backend.infill(
                prefix,
                suffix,
                max_middle_tokens=max(1, min(max_tokens, settings.max_middle_tokens)),
                steps=settings.steps,
                entropy_bound=settings.entropy_bound,
                should_stop=should_stop,
            )
        except BackendError as error:  # a remote backend is down: the repair goes on with its rules alone
            log.warning("repair without the model: %s", error)
            return []
        usage.add(infills)
        return [printable(infill.text) for infill in infills]

    return fill


def _edits(old: str, new: str) -> list[Edit]:
    return [Edit(start, end, new_text) for start, end, new_text in minimal_edits(old, new)]


def repair_json_text(
    backend: Backend | None, text: str, settings: Settings, should_stop: StopPredicate, schema: dict | None = None
) -> Result:
    started = time.perf_counter()
    usage = Usage()
    repaired = repair_json.repair_json(
        text, fill=model_fill(backend, settings, should_stop, usage), schema=schema, should_stop=should_stop
    )
    usage.ms = usage.ms or (time.perf_counter() - started) * 1000
    return Result(_edits(text, repaired.text) if repaired.changed else [], usage)


def repair_markdown_text(
    backend: Backend | None,
    text: str,
    start: int | None,
    end: int | None,
    settings: Settings,
    should_stop: StopPredicate,
    fill_cells: bool = False,
) -> Result:
    """The tables touching [start, end] repaired: structurally only (no model call, no cell
    gets content it did not have), or, with fill_cells, their empty cells written by the model
    too ("Fill empty table cells (model)")."""
    started = time.perf_counter()
    usage = Usage()
    fill = model_fill(backend, settings, should_stop, usage) if fill_cells else None
    repaired = repair_markdown.repair_tables(text, fill=fill, start=start, end=end, should_stop=should_stop)
    usage.ms = usage.ms or (time.perf_counter() - started) * 1000
    return Result(_edits(text, repaired.text), usage)


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


def tables_with_empty_cells(text: str) -> list[tuple[int, int]]:
    """Spans of the Markdown tables with empty cells in the header's columns, no more than the
    model fills in one go (repair_markdown.MAX_FILL_CELLS)."""
    spans = []
    for table in repair_markdown.find_tables(text):
        empty = repair_markdown.repair_table(text[table.start : table.end]).empty_cells
        if 0 < empty <= repair_markdown.MAX_FILL_CELLS:
            spans.append((table.start, table.end))
    return spans


def tables_needing_repair(text: str) -> list[tuple[int, int]]:
    """Spans of the Markdown tables that deterministic repair changes."""
    spans = []
    for table in repair_markdown.find_tables(text):
        source = text[table.start : table.end]
        if repair_markdown.repair_table(source).text != source:
            spans.append((table.start, table.end))
    return spans
