"""The completion service: open documents, settings, the model worker and every request's policy
(debounce, supersession, the type-through cache, staleness, action discovery, command arguments).

Takes plain text, (line, character) positions in the negotiated encoding and dataclasses; knows
nothing about LSP or JSON-RPC (server.py converts). Context building and post-processing run on
the model worker's thread, never on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dgemma_ls import actions, backends, context, placeholders, syntax
from dgemma_ls.actions import Edit, Hole, Result
from dgemma_ls.documents import Document
from dgemma_ls.settings import SECTION, Settings, parse_settings
from dgemma_ls.syntax import SyntaxTree
from dgemma_ls.worker import ACTION, INTERACTIVE, ModelUnavailable, ModelWorker
from engine import Cancelled, EngineError, set_threads

log = logging.getLogger(__name__)

FILL, REPAIR_JSON, REPAIR_MARKDOWN = "dgemma.fill", "dgemma.repairJson", "dgemma.repairMarkdownTables"
FILL_TABLE_CELLS = "dgemma.fillTableCells"  # the model writes empty cells; the repair above never does
ACTIONS = (FILL, REPAIR_JSON, REPAIR_MARKDOWN, FILL_TABLE_CELLS)
INVOKED_CANDIDATES = 3

Position = tuple[int, int]  # (line, character) in the document's position encoding
_WORD_BEFORE = re.compile(r"[A-Za-z0-9_$]*\Z")

_LARGE_DOCUMENT = 256_000  # characters; closing a larger document hands freed heap back to the OS
_RELEASE_DELAY_S = 0.5  # closes within this of the first share one release (an editor closing 100 files)


def _release_freed_heap() -> None:
    """glibc's malloc_trim: return freed heap pages to the OS (a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


# TEST-ONLY switch, read once at start: a fault in every model job of a request (not the warm-up).
# raise: an exception; oom: MemoryError; hang: the first job blocks HANG_S without polling
# cancellation (past the request deadline, dgemma.requestTimeoutMs). Never set it in normal use.
FAULT = os.environ.get("DGEMMA_FAULT", "")
FAULT_HANG_S = 8.0
_hung = False


def _inject_fault() -> None:
    global _hung
    if FAULT == "raise":
        raise RuntimeError("DGEMMA_FAULT=raise: injected engine failure")
    if FAULT == "oom":
        raise MemoryError("DGEMMA_FAULT=oom: injected out of memory in a denoising step")
    if FAULT == "hang" and not _hung:
        _hung = True
        time.sleep(FAULT_HANG_S)


# -- what requests fail with (server.py maps each to its JSON-RPC error) -------------------------


class InvalidArguments(ValueError):
    """The request names no open document, or its arguments do not make sense."""


class Stale(Exception):
    """The document moved on from the version the request was made for; nothing was applied."""


class Failed(Exception):
    """A valid request that could not be carried out (the message says why)."""


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestions:
    """Texts that each replace [start, end) of the version they were computed for."""

    start: Position
    end: Position
    texts: list[str]


@dataclass(frozen=True)
class PositionedEdit:
    start: Position
    end: Position
    new_text: str


@dataclass(frozen=True)
class ActionResult:
    """The edits of a fill or repair against `version`, and what its model calls cost."""

    uri: str
    version: int | None
    edits: list[PositionedEdit]
    usage: actions.Usage
    model: str


@dataclass(frozen=True)
class Offer:
    """A code action: `data` round-trips through the client and comes back to `resolve`.
    `disabled` says why it cannot run now (the model is loading or failed to load)."""

    title: str
    quick_fix: bool  # a repair; otherwise a rewrite (fill in the middle)
    data: dict[str, Any]
    disabled: str | None = None


class Reporter:
    """Where the service's messages go: the server sends them to the client; by default (tests,
    scripts) they are logged. `show` is for what the user must act on."""

    def log(self, level: int, message: str) -> None:
        log.log(level, "%s", message)

    def show(self, level: int, message: str) -> None:
        log.log(level, "%s", message)

    def trace(self, message: str) -> None:
        log.debug("%s", message)


# -- the completion cache ------------------------------------------------------------------------


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


# -- the service ---------------------------------------------------------------------------------


class Ticket:
    """One request's claim on the model: stale once cancelled or once its document moved on."""

    def __init__(self, service: CompletionService, uri: str, version: int | None):
        self.service, self.uri, self.version = service, uri, version
        self.cancelled = False

    def should_stop(self) -> bool:  # polled from the worker thread every denoising step
        doc = self.service.documents.get(self.uri)
        return self.cancelled or doc is None or doc.version != self.version or self.service.worker.closing


@dataclass(frozen=True)
class Change:
    """One didChange entry: replace [start, end) by text, or the whole text when start is None."""

    text: str
    start: Position | None = None
    end: Position | None = None


class CompletionService:
    def __init__(self, reporter: Reporter | None = None, cli_model: str | None = None, cli_quantize: str = "none",
                 cli_backend: Settings | None = None):
        self.reporter = reporter or Reporter()
        self.cli_model = cli_model
        self.cli_backend = cli_backend or Settings()  # dgemma-ls --backend*; the dgemma.backend* settings override
        self.cli_quantize = cli_quantize  # dgemma-ls --quantize; the dgemma.quantize setting overrides it
        self.settings = Settings()
        self.documents: dict[str, Document] = {}
        self.worker = ModelWorker()
        # Long actions orchestrate their model calls here, one call at a time on the worker.
        self._actions = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgemma-action")
        self.cache = CompletionCache()
        self.recent = context.RecentChunks()
        self._edited: dict[str, int] = {}  # uri -> offset of its last edit, not yet in `recent`
        self._automatic: dict[str, Ticket] = {}  # the newest automatic inline request per document
        self._loads = 0
        self._logged_reasons: dict[str, str] = {}
        self._language_logged: set[str] = set()
        self._release_lock = threading.Lock()
        self._release_timer: threading.Timer | None = None

    def close(self) -> None:
        self.worker.close()
        self._actions.shutdown(wait=False, cancel_futures=True)

    def log_reason_once(self, key: str, reason: str) -> None:
        """Say why requests get empty answers, once per (key, reason), not on every keystroke."""
        if self._logged_reasons.get(key) != reason:
            self._logged_reasons[key] = reason
            self.reporter.log(logging.INFO, f"dgemma: {key}: no model call: {reason}")

    # -- settings and the model -------------------------------------------------------------

    def apply_settings(self, raw: Any) -> bool:
        """Validate and apply a `dgemma` section (warnings are shown); True if the model must reload."""
        settings, warnings = parse_settings(raw)
        for warning in warnings:
            self.reporter.show(logging.WARNING, f"dgemma: {warning}")
        old, self.settings = self.settings, settings
        if settings.threads is not None and settings.threads != old.threads:
            set_threads(settings.threads)  # process-wide, as --threads; unsetting it keeps the last count
        return settings.engine_key() != old.engine_key()

    def next_load(self) -> int:
        """Number a new model load; loads with lower numbers are superseded from now on."""
        self._loads += 1
        return self._loads

    def is_current_load(self, number: int) -> bool:
        return number == self._loads

    async def load_model(
        self, number: int, settings: Settings, progress: Callable[[str, str, int | None], None]
    ) -> None:
        """Load number `number` with the settings it was started with, reporting
        progress(stage, message, percentage) with stage "begin", "report" or "end". A newer load
        supersedes it at any point: it then ends as superseded and never announces itself ready."""
        path = settings.model or self.cli_model
        what = path or "the embedded model"
        remote = backends.backend_config(settings, self.cli_backend)
        if remote is not None:
            what = f"the {remote.kind} backend at {remote.url}"
        progress("begin", what, 0)
        compiling = ", then compiling the denoising step in the background" if settings.compile else ""
        self.reporter.log(logging.INFO, f"dgemma: loading {what} ({settings.device}, {settings.dtype}{compiling})")
        superseded = "superseded by a newer model load"
        if not self.is_current_load(number):  # overtaken before it began
            progress("end", superseded, None)
            return
        loop = asyncio.get_running_loop()
        try:
            description = await asyncio.wrap_future(
                self.worker.load(path, settings.device, settings.dtype, settings.compile,
                                 quantize=settings.quantize or self.cli_quantize, remote=remote,
                                 on_compiled=lambda text: loop.call_soon_threadsafe(self._compile_finished, text),
                                 on_progress=lambda text: loop.call_soon_threadsafe(self._building, number, text,
                                                                                    progress))
            )
        except Cancelled:
            progress("end", superseded, None)
            return
        except Exception as error:
            detail = str(error)  # a checkpoint error names its path already: say it once
            message = f"dgemma: could not load {'the model' if str(what) in detail else what}: {detail}"
            self.reporter.show(logging.ERROR, message)
            self.reporter.log(logging.ERROR, message)
            progress("end", "failed", None)
            return
        progress("report", f"warming up {description}", 80)
        await self._warm_up(settings)
        if not self.is_current_load(number):
            progress("end", superseded, None)
            return
        progress("end", f"ready: {description}", None)
        self.reporter.log(logging.INFO, f"dgemma: model ready: {description}")

    def _building(self, number: int, message: str, progress: Callable[[str, str, int | None], None]) -> None:
        """The embedded model's first-use build, step by step, while load `number` is current."""
        if self.is_current_load(number):
            progress("report", message, None)
            self.reporter.log(logging.INFO, f"dgemma: {message}")

    def _compile_finished(self, description: str) -> None:
        self.reporter.log(logging.INFO, f"dgemma: compile finished: {description}")

    async def _warm_up(self, settings: Settings) -> None:
        """One tiny infill so the first real request does not pay for lazy initialisation."""
        job = self.worker.run(
            lambda engine: engine.infill(
                "def add(a, b):\n    return ", "\n", max_middle_tokens=4, steps=settings.steps
            ),
            should_stop=lambda: False,
        )
        try:
            await asyncio.wrap_future(job)
        except Exception as error:
            log.warning("warm-up infill failed: %r", error)

    def _language_enabled(self, doc: Document) -> bool:
        return self.settings.language_enabled(doc.language_id) or self.settings.language_enabled(doc.language)

    def block_reason(self, doc: Document) -> str | None:
        """Why no model call may be made for this document now, or None."""
        if not self._language_enabled(doc):
            return f"language {doc.language_id!r} is not in {SECTION}.enabledLanguages"
        if reason := doc.model_block_reason():
            return reason
        if not self.worker.ready:
            return self.worker.unavailable_reason
        return None

    async def _run(
        self, ticket: Ticket, job: Callable[[Any], Any], what: str, *, needs_engine: bool = True, lane: bool = False
    ) -> Any:
        """job(backend) with the model: on the worker (interactive), or with `lane` on the action
        thread making its model calls through the worker at low priority. Cancelling the awaiting
        task (a $/cancelRequest) stops it at its next model call or denoising step."""
        loop = asyncio.get_running_loop()

        def started() -> None:
            loop.call_soon_threadsafe(self.reporter.trace, f"model started: {what}")

        if lane:
            def task() -> Any:
                if ticket.should_stop():
                    raise Cancelled("superseded before it started")
                backend = self.worker.lane_backend(ticket.should_stop, ACTION)
                if backend is None and needs_engine:
                    raise ModelUnavailable(self.worker.unavailable_reason)
                started()
                if FAULT:
                    _inject_fault()
                return job(backend)

            future = self._actions.submit(task)
        else:
            def traced(engine: Any) -> Any:
                started()
                if FAULT:
                    _inject_fault()
                return job(engine)

            future = self.worker.run(traced, ticket.should_stop, needs_engine=needs_engine, priority=INTERACTIVE)
        deadline = None if lane else self.settings.request_timeout_ms / 1000
        wrapped = asyncio.wrap_future(future)
        # a job whose awaiting task was cancelled or timed out still ends, often with Cancelled:
        # read that outcome, or asyncio logs "Future exception was never retrieved" for it
        wrapped.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            # shield: at the deadline the job is told to stop (ticket), the future is left to finish
            return await asyncio.wait_for(asyncio.shield(wrapped), deadline)
        except asyncio.TimeoutError:
            ticket.cancelled = True
            raise Failed(f"the model did not answer {what} within {deadline:g} s (dgemma.requestTimeoutMs)") from None
        except asyncio.CancelledError:
            ticket.cancelled = True

            def stopped(done) -> None:
                if done.cancelled() or isinstance(done.exception(), Cancelled):
                    loop.call_soon_threadsafe(self.reporter.trace, f"model stopped: {what}: $/cancelRequest")

            future.add_done_callback(stopped)
            raise
        except Cancelled as reason:
            self.reporter.trace(f"model stopped: {what}: {reason}")
            raise

    # -- documents --------------------------------------------------------------------------

    def open(self, uri: str, language_id: str, version: int | None, text: str, encoding: str = "utf-16") -> None:
        doc = Document(uri, language_id, version, text, encoding)
        self.documents[uri] = doc
        if doc.language_note and uri not in self._language_logged:
            self._language_logged.add(uri)
            self.reporter.log(logging.INFO, f"dgemma: {uri}: {doc.language_note}")
        if doc.skip_reason:
            self.log_reason_once(uri, doc.skip_reason)

    def change(self, uri: str, version: int | None, changes: Sequence[Change]) -> None:
        doc = self.documents.get(uri)
        if doc is None:
            self.reporter.log(logging.DEBUG, f"dgemma: didChange for {uri}, which is not open: ignored")
            return
        if _is_int(version) and _is_int(doc.version) and version <= doc.version:
            # LSP versions only increase: an older change is stale, applying it would corrupt the newer text
            self.reporter.log(logging.WARNING, f"dgemma: didChange for {uri} to version {version} ignored: "
                              f"the document is already at version {doc.version}")
            return
        last_edit = 0
        for change in changes:
            if change.start is None or change.end is None:
                doc.replace_all(change.text, doc.version)
                last_edit = 0
            else:
                doc.apply_change(change.start, change.end, change.text)
                last_edit = doc.offset_at(*change.start)
        doc.version = version
        if doc.skip_reason:
            self.log_reason_once(uri, doc.skip_reason)
            self._edited.pop(uri, None)
        else:
            self._logged_reasons.pop(uri, None)
            self._edited[uri] = last_edit

    def close_document(self, uri: str) -> None:
        doc = self.documents.pop(uri, None)
        if doc is not None and len(doc.text) > _LARGE_DOCUMENT:
            # Measured (docs/reliability.md): no Python object of a closed document survives, but
            # glibc keeps the freed heap of its trees and its parse-cache entries (whole texts).
            syntax.parse.cache_clear()
            del doc
            self._schedule_release()
        self.cache.forget(uri)
        self._edited.pop(uri, None)
        self._automatic.pop(uri, None)
        self._logged_reasons.pop(uri, None)
        self._language_logged.discard(uri)

    def _schedule_release(self) -> None:
        """One gc + malloc_trim for a burst of large closes, off the caller's thread: run on each
        close (on the event loop), a full collection per document kept the server busy for
        minutes when ~2,900 were closed in a row (the fuzz)."""
        with self._release_lock:
            if self._release_timer is not None:
                return
            self._release_timer = threading.Timer(_RELEASE_DELAY_S, self._release)
            self._release_timer.daemon = True
            self._release_timer.start()

    def _release(self) -> None:
        with self._release_lock:
            self._release_timer = None
        gc.collect()
        _release_freed_heap()

    def document(self, uri: Any) -> Document:
        doc = self.documents.get(uri) if isinstance(uri, str) else None
        if doc is None:
            raise InvalidArguments(f"dgemma: {uri} is not open in the server (send textDocument/didOpen first)")
        return doc

    def _snippets_for(self, uri: str) -> list[context.Snippet]:
        """Recently edited code of the other documents, for the model's prompt. Chunks are cut
        here, when a completion needs them, not on every keystroke."""
        for other, offset in list(self._edited.items()):
            if other != uri and (doc := self.documents.get(other)) is not None:
                self.recent.add(other, context.chunk_around(doc.text, offset))
                del self._edited[other]
        return self.recent.snippets(exclude_uri=uri)

    # -- completions ------------------------------------------------------------------------

    async def complete(
        self,
        uri: str,
        position: Position,
        *,
        automatic: bool,
        selected: tuple[Position, Position, str] | None = None,
    ) -> Suggestions | None:
        """Ghost text at `position` of the current version: one candidate when `automatic`
        (debounced, superseding the document's previous automatic request), several when
        invoked. `selected` is a completion-menu item (its range and text) to extend. None when
        stale, blocked or nothing valid."""
        doc = self.documents.get(uri)
        if doc is None:
            return None
        offset = doc.offset_at(*position)
        choice = None if selected is None else (*self._offsets(doc, selected[0], selected[1]), selected[2])
        num_candidates = 1 if automatic else INVOKED_CANDIDATES
        found = await self._complete(doc, offset, num_candidates=num_candidates, automatic=automatic, selected=choice)
        if found is None:
            return None
        start, end, texts = found
        return Suggestions(doc.position_at(start), doc.position_at(end), texts)

    async def complete_word(self, uri: str, position: Position) -> Suggestions | None:
        """The completion-menu fallback: one candidate that replaces the word being typed (so
        clients that filter by it keep the item); each text starts with that word."""
        doc = self.documents.get(uri)
        if doc is None:
            return None
        offset = doc.offset_at(*position)
        found = await self._complete(doc, offset, num_candidates=1, automatic=True)
        if found is None:
            return None
        line_start = doc.text.rfind("\n", 0, offset) + 1
        word = _WORD_BEFORE.search(doc.text, line_start, offset).group()
        return Suggestions(doc.position_at(offset - len(word)), doc.position_at(offset), [word + t for t in found[2]])

    async def _complete(
        self,
        doc: Document,
        offset: int,
        *,
        num_candidates: int,
        automatic: bool,
        selected: tuple[int, int, str] | None = None,
    ) -> tuple[int, int, list[str]] | None:
        uri, version = doc.uri, doc.version
        if reason := self.block_reason(doc):
            self.log_reason_once(uri, reason)
            return None
        if selected is None and (hit := self.cache.lookup(uri, version, offset, doc.text, num_candidates)):
            self.reporter.trace(f"completion at {uri}:{offset} (version {version}) answered from the cache")
            return offset, offset, list(hit.candidates)
        if automatic and self.settings.debounce_ms:
            await asyncio.sleep(self.settings.debounce_ms / 1000)
            if self.documents.get(uri) is not doc or doc.version != version:
                return None
        ticket = Ticket(self, uri, version)
        if automatic:
            if (previous := self._automatic.get(uri)) is not None:
                previous.cancelled = True
            self._automatic[uri] = ticket

        settings = self.settings
        if self.worker.engine is None:  # a reload began during the debounce
            return None
        text = doc.text
        if selected is None:
            tree, cursor, start, end, head = doc.tree, offset, offset, offset, ""
        else:
            start, end, head = selected[0], max(selected[1], offset), selected[2]
            tree, cursor = None, start + len(head)
        language, snippets = doc.language, self._snippets_for(uri)
        usage = actions.Usage()
        rounds = actions.AUTOMATIC_ROUNDS if automatic else actions.EXPLICIT_ROUNDS

        def job(engine) -> list[str]:
            # Context building (tokenizer work) and post-processing run here, off the event
            # loop. The tree is this version's: edits replace the document's tree, never change it.
            nonlocal tree
            if tree is None:
                tree = SyntaxTree(text[:start] + head + text[end:], language)
            ctx = actions.prompt_context(engine, tree, cursor, settings, extra=snippets)
            return actions.sample(engine, ctx, settings, num_candidates, rounds, ticket.should_stop, usage)

        try:
            texts = await self._run(ticket, job, f"completion at {uri}:{offset} (version {version})")
        except (Cancelled, ModelUnavailable) as reason:
            log.debug("completion at %s:%d dropped: %s", uri, offset, reason)
            return None
        except EngineError as error:  # e.g. settings this checkpoint refuses: say so once, stay quiet
            self.log_reason_once(uri, f"the engine refused the request: {error}")
            return None
        except Failed as error:  # past the request deadline: ghost text stays empty
            self.reporter.log(logging.WARNING, f"dgemma: {error}")
            return None
        except Exception as error:  # an engine fault: no ghost text, the reason in the log, the server lives
            log.exception("completion at %s:%d failed", uri, offset)
            self.reporter.log(logging.ERROR, f"dgemma: completion failed: {error!r}")
            return None
        if ticket.should_stop():  # a newer version arrived while the model ran: never send stale text
            return None
        log.debug("completion %s v%s@%d: %d candidates, %d steps, %.0f ms", uri, version, offset, len(texts),
                  usage.steps, usage.ms)
        if selected is None:
            self.cache.put(uri, Shown(version, offset, text, tuple(texts), num_candidates))
        return (start, end, [head + t for t in texts]) if texts else None

    # -- code actions and commands ----------------------------------------------------------

    def offers(self, uri: str, start: Position, end: Position, *, fills: bool, repairs: bool) -> list[Offer] | None:
        """The actions that apply to [start, end) of the current version; None for a document
        the server does not handle. While the model loads (or after it failed to), fills are
        offered disabled with the reason."""
        doc = self.documents.get(uri)
        if doc is None or doc.tree is None or not self._language_enabled(doc):
            return None
        low, high = self._offsets(doc, start, end)
        offers: list[Offer] = []

        def offer(title: str, quick_fix: bool, action: str, hole: Hole | None, disabled: str | None = None) -> None:
            data: dict[str, Any] = {"uri": doc.uri, "version": doc.version, "action": action}
            if hole is not None:
                data.update(start=hole.start, end=hole.end, scope=hole.scope)
            offers.append(Offer(title, quick_fix, data, disabled))

        blocked = self.block_reason(doc)
        model_only = blocked is not None and blocked == self.worker.unavailable_reason and not self.worker.ready
        if fills and (blocked is None or model_only):
            for target in placeholders.find_fill_targets(doc.tree, low, high):
                if target.kind == "selection":
                    title = "Fill in the middle (selection)"
                elif target.hint:
                    title = f"Fill in the middle: {target.hint}"
                else:
                    row = doc.position_at(target.start)[0] + 1
                    title = f"Fill in the middle ({target.kind.replace('_', ' ')}, line {row})"
                offer(title, False, FILL, Hole(target.start, target.end, target.scope), blocked)
            if doc.language == "markdown":
                empty = doc.memo("empty cells", lambda: actions.tables_with_empty_cells(doc.text))
                for table_start, table_end in empty:
                    if table_end >= low and table_start <= high:
                        title = f"Fill empty table cells (model) (line {doc.position_at(table_start)[0] + 1})"
                        offer(title, False, FILL_TABLE_CELLS, Hole(table_start, table_end), blocked)
        if repairs:
            if doc.language == "json":
                schema = actions.json_schema(doc.text, doc.uri)
                if doc.memo(("json", id(schema)), lambda: actions.json_needs_repair(doc.tree, schema)):
                    offer("Repair JSON", True, REPAIR_JSON, None)
            if doc.language == "markdown":
                for table_start, table_end in doc.memo("tables", lambda: actions.tables_needing_repair(doc.text)):
                    if table_end >= low and table_start <= high:
                        title = f"Repair Markdown table (line {doc.position_at(table_start)[0] + 1})"
                        offer(title, True, REPAIR_MARKDOWN, Hole(table_start, table_end))
        return offers

    def command_arguments(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """An offer's data as the argument of its command (for clients without codeAction/resolve)."""
        doc = self.document(data.get("uri"))
        args: dict[str, Any] = {"uri": data["uri"], "version": data["version"], "apply": True}
        if "start" in data:
            args["range"] = {"start": _position_json(doc.position_at(data["start"])),
                             "end": _position_json(doc.position_at(data["end"]))}
        return args

    async def resolve(self, data: Any, title: str) -> ActionResult:
        """The edits of an offer whose `data` came back from the client."""
        if not isinstance(data, Mapping):
            raise InvalidArguments(f"dgemma: '{title}': the action's data is missing; ask for code actions again")
        doc = self.document(data.get("uri"))
        action = data.get("action")
        if action not in ACTIONS:
            raise InvalidArguments(f"dgemma: '{title}': unknown action {action!r}")
        if doc.version != data.get("version"):
            raise Stale(
                f"dgemma: {doc.uri} changed (version {data.get('version')} -> {doc.version}) since "
                f"'{title}' was offered; ask for code actions again"
            )
        hole = None
        if "start" in data:
            start, end, scope = data.get("start"), data.get("end"), data.get("scope")
            if not (_is_int(start) and _is_int(end) and 0 <= start <= end <= len(doc.text)):
                raise InvalidArguments(f"dgemma: '{title}': the action's range is invalid; ask for code actions again")
            if scope is not None and not isinstance(scope, str):
                raise InvalidArguments(f"dgemma: '{title}': the action's scope is invalid")
            hole = Hole(start, end, scope)
        result = await self.compute(doc, action, hole)
        if not result.edits:
            raise Failed(f"dgemma: '{title}': no candidate kept the document valid; nothing was changed")
        return result

    async def execute(self, action: str, args: Sequence[Any]) -> ActionResult:
        """A command's edits; args is its one argument {uri, version?, range? | position?}."""
        if len(args) != 1 or not isinstance(args[0], Mapping) or not isinstance(args[0].get("uri"), str):
            raise InvalidArguments(f"dgemma: {action} takes one argument {{uri, range? | position?, version?}}")
        arg = args[0]
        doc = self.document(arg["uri"])
        version = arg.get("version")
        if version is not None and not _is_int(version):
            raise InvalidArguments(f"dgemma: {action}: version must be an integer, not {version!r}")
        if version is not None and version != doc.version:
            raise Stale(f"dgemma: {doc.uri} is at version {doc.version}, not {version}: the request is stale")
        hole = None
        try:
            if arg.get("range") is not None:
                start, end = self._offsets(doc, _parse_position(arg["range"]["start"]),
                                           _parse_position(arg["range"]["end"]))
                targets = placeholders.find_fill_targets(doc.tree, start, end) if doc.tree and start < end else []
                hole = Hole(start, end, targets[0].scope if targets else None)
            elif arg.get("position") is not None:
                offset = doc.offset_at(*_parse_position(arg["position"]))
                hole = Hole(offset, offset)
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidArguments(f"dgemma: {action}: bad range or position: {error!r}") from None
        return await self.compute(doc, action, hole)

    async def compute(self, doc: Document, action: str, hole: Hole | None) -> ActionResult:
        """The edits of one fill / repair against the current version of doc; raises Stale if
        the document moved on meanwhile. Runs on the action lane: interactive completions go
        between its model calls, and cancelling the awaiting task stops it at the next one."""
        text, language, settings, version = doc.text, doc.language, self.settings, doc.version
        ticket = Ticket(self, doc.uri, version)
        if action == FILL:
            if reason := self.block_reason(doc):
                raise Failed(f"dgemma: cannot fill: {reason}")
            if hole is None:
                raise InvalidArguments("dgemma: a fill needs a range or a position")
            job = functools.partial(
                actions.fill_holes, text=text, language=language, holes=[hole], settings=settings,
                should_stop=ticket.should_stop,
            )
        elif action == REPAIR_JSON:
            job = functools.partial(
                actions.repair_json_text, text=text, settings=settings, should_stop=ticket.should_stop,
                schema=actions.json_schema(text, doc.uri),
            )
        elif action in (REPAIR_MARKDOWN, FILL_TABLE_CELLS):
            if action == FILL_TABLE_CELLS and (reason := self.block_reason(doc)):
                raise Failed(f"dgemma: cannot fill table cells: {reason}")
            start, end = (hole.start, hole.end) if hole else (None, None)
            job = functools.partial(
                actions.repair_markdown_text, text=text, start=start, end=end, settings=settings,
                should_stop=ticket.should_stop, fill_cells=action == FILL_TABLE_CELLS,
            )
        else:
            raise InvalidArguments(f"dgemma: unknown action {action!r}")
        started = time.perf_counter()
        try:  # the repairs work without a model too, only less well
            result: Result | None = await self._run(
                ticket, job, f"{action} on {doc.uri} (version {version})",
                needs_engine=action in (FILL, FILL_TABLE_CELLS), lane=True,
            )
        except Cancelled:
            result = None
        except (ModelUnavailable, EngineError) as reason:
            raise Failed(f"dgemma: {reason}") from None
        if result is None or ticket.should_stop():
            raise Stale(f"dgemma: {doc.uri} changed while computing {action}; nothing was applied")
        log.debug("%s on %s v%s: %d edits in %.0f ms", action, doc.uri, version, len(result.edits),
                  (time.perf_counter() - started) * 1000)
        return ActionResult(doc.uri, version, self._positioned(doc, result.edits), result.usage,
                            self.worker.description)

    # -- positions --------------------------------------------------------------------------

    @staticmethod
    def _offsets(doc: Document, start: Position, end: Position) -> tuple[int, int]:
        low = doc.offset_at(*start)
        return low, max(low, doc.offset_at(*end))

    @staticmethod
    def _positioned(doc: Document, edits: Sequence[Edit]) -> list[PositionedEdit]:
        return [PositionedEdit(doc.position_at(e.start), doc.position_at(e.end), e.new_text) for e in edits]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_position(value: Any) -> Position:
    """{line, character} (non-negative integers) from a command's JSON argument."""
    if not isinstance(value, Mapping):
        raise ValueError(f"expected {{line, character}}, got {value!r}")
    line, character = value.get("line"), value.get("character")
    if not (_is_int(line) and _is_int(character) and line >= 0 and character >= 0):
        raise ValueError(f"expected non-negative integers line and character, got {value!r}")
    return line, character


def _position_json(position: Position) -> dict[str, int]:
    return {"line": position[0], "character": position[1]}
