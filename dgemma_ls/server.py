"""The only module that speaks LSP: it converts between lsprotocol types and the domain code.

Handlers are thin: read the document, call `infill` / `documents` / the repair modules, and
convert back. State lives here at the edge (open documents, settings, the completion cache,
in-flight requests); the model runs on `worker.ModelWorker`'s thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from lsprotocol import types
from pygls.exceptions import JsonRpcContentModified, JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from dgemma_ls import context, infill, placeholders
from dgemma_ls.documents import Document
from dgemma_ls.settings import SECTION, Settings, parse_settings, section_of
from dgemma_ls.syntax import SyntaxTree
from dgemma_ls.worker import ModelUnavailable, ModelWorker
from engine import Cancelled, EngineError

log = logging.getLogger(__name__)

try:
    VERSION = importlib.metadata.version("dgemma-ls")
except importlib.metadata.PackageNotFoundError:  # run from a source checkout
    VERSION = "0+source"

FILL, REPAIR_JSON, REPAIR_MARKDOWN = "dgemma.fill", "dgemma.repairJson", "dgemma.repairMarkdownTables"
INVOKED_CANDIDATES = 3
_WORD_BEFORE = re.compile(r"[A-Za-z0-9_$]*\Z")


class RequestFailed(JsonRpcException):
    """LSP RequestFailed: the request was valid but could not be carried out (the message says why)."""

    CODE = -32803


class Ticket:
    """One request's claim on the model: stale once cancelled or once its document moved on."""

    def __init__(self, server: DgemmaServer, uri: str, version: int | None):
        self.server, self.uri, self.version = server, uri, version
        self.cancelled = False

    def should_stop(self) -> bool:  # polled from the worker thread every denoising step
        doc = self.server.documents.get(self.uri)
        return self.cancelled or doc is None or doc.version != self.version or self.server.worker.closing


@dataclass
class Completion:
    """Texts that replace document[start:end] of the version the request was made for."""

    start: int
    end: int
    texts: list[str]


class DgemmaServer(LanguageServer):
    def __init__(self, cli_model: str | None = None):
        super().__init__("dgemma-ls", VERSION, text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.cli_model = cli_model
        self.settings = Settings()
        self.documents: dict[str, Document] = {}
        self.worker = ModelWorker()
        self.cache = infill.CompletionCache()
        self.recent = context.RecentChunks()
        self._edited: dict[str, int] = {}  # uri -> offset of its last edit, not yet in `recent`
        self._automatic: dict[str, Ticket] = {}  # the newest automatic inline request per document
        self._loads = 0
        self._load_task: asyncio.Task | None = None
        self._configuration_changes = 0
        self._logged_reasons: dict[str, str] = {}

    # -- messages ------------------------------------------------------------------------

    def show(self, kind: types.MessageType, message: str) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    def log_to_client(self, kind: types.MessageType, message: str) -> None:
        (log.warning if kind <= types.MessageType.Warning else log.info)("%s", message)
        self.window_log_message(types.LogMessageParams(type=kind, message=message))

    def trace(self, message: str) -> None:
        """$/logTrace, sent only while the client has turned tracing on."""
        if self.protocol.trace != types.TraceValue.Off:
            self.log_trace(types.LogTraceParams(message=message))

    def log_reason_once(self, key: str, reason: str) -> None:
        """Say why requests get empty answers, once per (key, reason), not on every keystroke."""
        if self._logged_reasons.get(key) != reason:
            self._logged_reasons[key] = reason
            self.log_to_client(types.MessageType.Info, f"dgemma: {key}: no model call: {reason}")

    # -- settings and the model -----------------------------------------------------------

    def apply_settings(self, raw: Any, *, reload: bool) -> None:
        settings, warnings = parse_settings(raw)
        for warning in warnings:
            self.show(types.MessageType.Warning, f"dgemma: {warning}")
        old, self.settings = self.settings, settings
        if reload and settings.engine_key() != old.engine_key():
            self.start_model_load()

    def start_model_load(self) -> None:
        self._loads += 1
        self._load_task = asyncio.ensure_future(self.load_model(self._loads, self.settings))

    def _supports(self, path: str) -> bool:
        value: Any = self.client_capabilities
        for name in path.split("."):
            value = getattr(value, name, None)
        return bool(value)

    async def load_model(self, number: int, settings: Settings) -> None:
        """Load number `number` with the settings it was started with. A newer load supersedes it
        at any point: it then ends its progress as superseded and never announces itself ready."""
        token = f"dgemma/load/{number}"
        path = settings.model or self.cli_model
        what = path or "the embedded model"
        progress = self._supports("window.work_done_progress")
        if progress:
            try:
                await self.work_done_progress.create_async(token)
            except Exception as error:
                log.warning("window/workDoneProgress/create failed: %s", error)
                progress = False

        def report(
            value: types.WorkDoneProgressBegin | types.WorkDoneProgressReport | types.WorkDoneProgressEnd,
        ) -> None:
            if progress:
                self.progress(types.ProgressParams(token=token, value=value))

        report(types.WorkDoneProgressBegin(title="dgemma: loading model", message=what, percentage=0))
        compiling = ", then compiling the denoising step in the background" if settings.compile else ""
        self.log_to_client(
            types.MessageType.Info,
            f"dgemma: loading {what} ({settings.device}, {settings.dtype}{compiling})",
        )
        superseded = types.WorkDoneProgressEnd(message="superseded by a newer model load")
        if number != self._loads:  # overtaken while the client created the progress token
            report(superseded)
            return
        loop = asyncio.get_running_loop()
        try:
            description = await asyncio.wrap_future(
                self.worker.load(path, settings.device, settings.dtype, settings.compile,
                                 on_compiled=lambda text: loop.call_soon_threadsafe(self.compiled, text))
            )
        except Cancelled:
            report(superseded)
            return
        except Exception as error:
            message = f"dgemma: could not load {what}: {error}"
            self.show(types.MessageType.Error, message)
            self.log_to_client(types.MessageType.Error, message)
            report(types.WorkDoneProgressEnd(message="failed"))
            return
        report(types.WorkDoneProgressReport(message=f"warming up {description}", percentage=80))
        await self.warm_up(settings)
        if number != self._loads:
            report(superseded)
            return
        report(types.WorkDoneProgressEnd(message=f"ready: {description}"))
        self.log_to_client(types.MessageType.Info, f"dgemma: model ready: {description}")

    def compiled(self, description: str) -> None:
        """The background compile finished: say how it went (the description says which)."""
        self.log_to_client(types.MessageType.Info, f"dgemma: compile finished: {description}")

    async def warm_up(self, settings: Settings) -> None:
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

    def block_reason(self, doc: Document) -> str | None:
        """Why no model call may be made for this document now, or None."""
        if not (self.settings.language_enabled(doc.language_id) or self.settings.language_enabled(doc.language)):
            return f"language {doc.language_id!r} is not in {SECTION}.enabledLanguages"
        if reason := doc.model_block_reason():
            return reason
        if not self.worker.ready:
            return self.worker.unavailable_reason
        return None

    async def run_model(self, ticket: Ticket, job: Callable[[Any], Any], what: str, needs_engine: bool = True) -> Any:
        """Run job(engine) on the worker; a $/cancelRequest (task cancellation) stops it too."""
        loop = asyncio.get_running_loop()

        def traced(engine):
            loop.call_soon_threadsafe(self.trace, f"model started: {what}")
            return job(engine)

        future = self.worker.run(traced, ticket.should_stop, needs_engine=needs_engine)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            ticket.cancelled = True

            def stopped(done) -> None:
                if done.cancelled() or isinstance(done.exception(), Cancelled):
                    loop.call_soon_threadsafe(self.trace, f"model stopped: {what}: $/cancelRequest")

            future.add_done_callback(stopped)
            raise
        except Cancelled as reason:
            self.trace(f"model stopped: {what}: {reason}")
            raise

    # -- documents -------------------------------------------------------------------------

    def open_document(self, item: types.TextDocumentItem) -> None:
        encoding = str(self.workspace.position_encoding or "utf-16")
        doc = Document(item.uri, item.language_id, item.version, item.text, encoding)
        self.documents[item.uri] = doc
        if doc.skip_reason:
            self.log_reason_once(item.uri, doc.skip_reason)

    def change_document(self, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        doc = self.documents.get(uri)
        if doc is None:
            return
        try:
            for change in params.content_changes:
                if isinstance(change, types.TextDocumentContentChangePartial):
                    start, end = change.range.start, change.range.end
                    doc.apply_change((start.line, start.character), (end.line, end.character), change.text)
                    last_edit = doc.offset_at(start.line, start.character)
                else:
                    doc.replace_all(change.text, doc.version)
                    last_edit = 0
        except Exception:
            # pygls keeps its own copy of the text: resynchronise from it rather than drift
            log.exception("applying a change to %s failed; resynchronising the whole text", uri)
            doc.replace_all(self.workspace.get_text_document(uri).source, doc.version)
            last_edit = 0
        doc.version = params.text_document.version
        if doc.skip_reason:
            self.log_reason_once(uri, doc.skip_reason)
            self._edited.pop(uri, None)
        else:
            self._logged_reasons.pop(uri, None)
            self._edited[uri] = last_edit

    def snippets_for(self, uri: str) -> list[context.Snippet]:
        """Recently edited code of the other documents, for the model's prompt. Chunks are cut
        here, when a completion needs them, not on every keystroke."""
        for other, offset in list(self._edited.items()):
            if other != uri and (doc := self.documents.get(other)) is not None:
                self.recent.add(other, context.chunk_around(doc.text, offset))
                del self._edited[other]
        return self.recent.snippets(exclude_uri=uri)

    def close_document(self, uri: str) -> None:
        self.documents.pop(uri, None)
        self.cache.forget(uri)
        self._edited.pop(uri, None)
        self._automatic.pop(uri, None)
        self._logged_reasons.pop(uri, None)

    def document(self, uri: str) -> Document:
        doc = self.documents.get(uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"dgemma: {uri} is not open in the server (send textDocument/didOpen first)")
        return doc

    def lsp_range(self, doc: Document, start: int, end: int) -> types.Range:
        return types.Range(start=types.Position(*doc.position_at(start)), end=types.Position(*doc.position_at(end)))

    def offsets(self, doc: Document, lsp_range: types.Range) -> tuple[int, int]:
        start = doc.offset_at(lsp_range.start.line, lsp_range.start.character)
        return start, max(start, doc.offset_at(lsp_range.end.line, lsp_range.end.character))

    # -- completions ---------------------------------------------------------------------------

    async def complete(
        self,
        doc: Document,
        offset: int,
        *,
        num_candidates: int,
        automatic: bool,
        selected: tuple[int, int, str] | None = None,
    ) -> Completion | None:
        """Candidates at offset of the current version, or None (stale, blocked, nothing valid)."""
        uri, version = doc.uri, doc.version
        if reason := self.block_reason(doc):
            self.log_reason_once(uri, reason)
            return None
        if selected is None and (hit := self.cache.lookup(uri, version, offset, doc.text, num_candidates)):
            self.trace(f"completion at {uri}:{offset} (version {version}) answered from the cache")
            return Completion(offset, offset, list(hit.candidates))
        if automatic and self.settings.debounce_ms:
            await asyncio.sleep(self.settings.debounce_ms / 1000)
            if self.documents.get(uri) is not doc or doc.version != version:
                return None
        ticket = Ticket(self, uri, version)
        if automatic:
            if (previous := self._automatic.get(uri)) is not None:
                previous.cancelled = True
            self._automatic[uri] = ticket

        settings, engine = self.settings, self.worker.engine
        if engine is None:  # a reload began during the debounce
            return None
        if selected is None:
            tree, cursor, start, end, head = doc.tree, offset, offset, offset, ""
        else:
            start, end, head = selected[0], max(selected[1], offset), selected[2]
            tree = SyntaxTree(doc.text[:start] + head + doc.text[end:], doc.language)
            cursor = start + len(head)
        ctx = infill.build_context(engine, tree, cursor, settings, extra=self.snippets_for(uri))
        usage = infill.Usage()

        rounds = infill.AUTOMATIC_ROUNDS if automatic else infill.EXPLICIT_ROUNDS

        def job(engine) -> list[str]:  # finalize reads only ctx's windows, so it runs off the loop
            return infill.sample(engine, ctx, settings, num_candidates, rounds, ticket.should_stop, usage)

        try:
            texts = await self.run_model(ticket, job, f"completion at {uri}:{offset} (version {version})")
        except (Cancelled, ModelUnavailable) as reason:
            log.debug("completion at %s:%d dropped: %s", uri, offset, reason)
            return None
        except EngineError as error:  # e.g. settings this checkpoint refuses: say so once, stay quiet
            self.log_reason_once(uri, f"the engine refused the request: {error}")
            return None
        if ticket.should_stop():  # a newer version arrived while the model ran: never send stale text
            return None
        log.debug(
            "completion %s v%s@%d: %d candidates, %d steps, %.0f ms",
            uri,
            version,
            offset,
            len(texts),
            usage.steps,
            usage.ms,
        )
        if selected is None:
            self.cache.put(uri, infill.Shown(version, offset, doc.text, tuple(texts), num_candidates))
        return Completion(start, end, [head + text for text in texts]) if texts else None

    async def inline_completion(self, params: types.InlineCompletionParams) -> types.InlineCompletionList | None:
        doc = self.documents.get(params.text_document.uri)
        if doc is None:
            return None
        offset = doc.offset_at(params.position.line, params.position.character)
        automatic = params.context.trigger_kind == types.InlineCompletionTriggerKind.Automatic
        selected = None
        if (info := params.context.selected_completion_info) is not None:
            selected = (*self.offsets(doc, info.range), info.text)
        completion = await self.complete(
            doc, offset, num_candidates=1 if automatic else INVOKED_CANDIDATES, automatic=automatic, selected=selected
        )
        if completion is None:
            return None
        span = self.lsp_range(doc, completion.start, completion.end)
        return types.InlineCompletionList(
            items=[types.InlineCompletionItem(insert_text=text, range=span) for text in completion.texts]
        )

    async def completion(self, params: types.CompletionParams) -> types.CompletionList | None:
        doc = self.documents.get(params.text_document.uri)
        if doc is None:
            return None
        offset = doc.offset_at(params.position.line, params.position.character)
        completion = await self.complete(doc, offset, num_candidates=1, automatic=True)
        if completion is None:
            return types.CompletionList(is_incomplete=True, items=[])
        # Replace the word being typed so clients that filter by it keep the item.
        line_start = doc.text.rfind("\n", 0, offset) + 1
        word = _WORD_BEFORE.search(doc.text, line_start, offset).group()
        span = self.lsp_range(doc, offset - len(word), offset)
        items = []
        for text in completion.texts:
            new_text = word + text
            first_line = new_text.strip().split("\n", 1)[0]
            items.append(
                types.CompletionItem(
                    label=first_line[:60] or new_text,
                    kind=types.CompletionItemKind.Text,
                    detail="dgemma",
                    filter_text=new_text,
                    insert_text_format=types.InsertTextFormat.PlainText,
                    text_edit=types.TextEdit(range=span, new_text=new_text),
                )
            )
        # incomplete: typing re-asks, and the cache answers while the user types into the item
        return types.CompletionList(is_incomplete=True, items=items)

    # -- code actions and commands ----------------------------------------------------------

    def code_actions(self, params: types.CodeActionParams) -> list[types.CodeAction] | None:
        doc = self.documents.get(params.text_document.uri)
        if doc is None or doc.tree is None:
            return None
        start, end = self.offsets(doc, params.range)
        actions: list[types.CodeAction] = []

        def wanted(kind: str) -> bool:
            only = params.context.only
            return not only or any(kind == k or kind.startswith(f"{k}.") for k in only)

        def offer(title: str, kind: str, action: str, hole: infill.Hole | None) -> None:
            data = {"uri": doc.uri, "version": doc.version, "action": action}
            if hole is not None:
                data.update(start=hole.start, end=hole.end, scope=hole.scope)
            actions.append(types.CodeAction(title=title, kind=kind, data=data))

        if not self.settings.language_enabled(doc.language_id) and not self.settings.language_enabled(doc.language):
            return None
        if self.block_reason(doc) is None and wanted(types.CodeActionKind.RefactorRewrite):
            for target in placeholders.find_fill_targets(doc.tree, start, end):
                if target.kind == "selection":
                    title = "Fill in the middle (selection)"
                elif target.hint:
                    title = f"Fill in the middle: {target.hint}"
                else:
                    row = doc.position_at(target.start)[0] + 1
                    title = f"Fill in the middle ({target.kind.replace('_', ' ')}, line {row})"
                offer(
                    title,
                    types.CodeActionKind.RefactorRewrite,
                    FILL,
                    infill.Hole(target.start, target.end, target.scope),
                )
        if wanted(types.CodeActionKind.QuickFix):
            if doc.language == "json":
                schema = infill.json_schema(doc.text, doc.uri)
                if doc.memo(("json", id(schema)), lambda: infill.json_needs_repair(doc.tree, schema)):
                    offer("Repair JSON", types.CodeActionKind.QuickFix, REPAIR_JSON, None)
            if doc.language == "markdown":
                for table_start, table_end in doc.memo("tables", lambda: infill.tables_needing_repair(doc.text)):
                    if table_end >= start and table_start <= end:
                        title = f"Repair Markdown table (line {doc.position_at(table_start)[0] + 1})"
                        offer(
                            title, types.CodeActionKind.QuickFix, REPAIR_MARKDOWN, infill.Hole(table_start, table_end)
                        )
        if not self._supports("text_document.code_action.resolve_support"):
            for action in actions:  # no lazy edits: the command computes and applies when chosen
                arguments = [self._command_args(doc, action.data)]
                action.command = types.Command(title=action.title, command=action.data["action"], arguments=arguments)
                action.data = None
        return actions

    def _command_args(self, doc: Document, data: dict) -> dict:
        args: dict[str, Any] = {"uri": data["uri"], "version": data["version"], "apply": True}
        if "start" in data:
            span = self.lsp_range(doc, data["start"], data["end"])
            args["range"] = self.protocol._converter.unstructure(span)
        return args

    async def resolve_code_action(self, action: types.CodeAction) -> types.CodeAction:
        data = action.data if isinstance(action.data, dict) else {}
        doc = self.document(data.get("uri", ""))
        if doc.version != data.get("version"):
            raise JsonRpcContentModified(
                f"dgemma: {doc.uri} changed (version {data.get('version')} -> {doc.version}) since "
                f"'{action.title}' was offered; ask for code actions again"
            )
        hole = infill.Hole(data["start"], data["end"], data.get("scope")) if "start" in data else None
        result = await self.compute(doc, data.get("action", ""), hole)
        if not result.edits:
            raise RequestFailed(f"dgemma: '{action.title}': no candidate kept the document valid; nothing was changed")
        action.edit = self.workspace_edit(doc, result.edits)
        return action

    async def compute(self, doc: Document, action: str, hole: infill.Hole | None) -> infill.Result:
        """The edits of one fill / repair against the current version of doc; raises if stale."""
        text, language, settings = doc.text, doc.language, self.settings
        ticket = Ticket(self, doc.uri, doc.version)
        if action == FILL:
            if reason := self.block_reason(doc):
                raise RequestFailed(f"dgemma: cannot fill: {reason}")
            if hole is None:
                raise JsonRpcInvalidParams("dgemma: a fill needs a range or a position")
            job = functools.partial(
                infill.fill_holes,
                text=text,
                language=language,
                holes=[hole],
                settings=settings,
                should_stop=ticket.should_stop,
            )
        elif action == REPAIR_JSON:
            job = functools.partial(
                infill.repair_json_text,
                text=text,
                settings=settings,
                should_stop=ticket.should_stop,
                schema=infill.json_schema(text, doc.uri),
            )
        elif action == REPAIR_MARKDOWN:
            start, end = (hole.start, hole.end) if hole else (None, None)
            job = functools.partial(
                infill.repair_markdown_text,
                text=text,
                start=start,
                end=end,
                settings=settings,
                should_stop=ticket.should_stop,
            )
        else:
            raise JsonRpcInvalidParams(f"dgemma: unknown action {action!r}")
        try:  # the repairs work without a model too, only less well
            result = await self.run_model(
                ticket, job, f"{action} on {doc.uri} (version {doc.version})", needs_engine=action == FILL
            )
        except Cancelled:
            result = None
        except (ModelUnavailable, EngineError) as reason:
            raise RequestFailed(f"dgemma: {reason}") from None
        if result is None or ticket.should_stop():
            raise JsonRpcContentModified(f"dgemma: {doc.uri} changed while computing {action}; nothing was applied")
        return result

    async def execute(self, action: str, args: Sequence[Any]) -> dict:
        if len(args) != 1 or not isinstance(args[0], dict) or not isinstance(args[0].get("uri"), str):
            raise JsonRpcInvalidParams(f"dgemma: {action} takes one argument {{uri, range? | position?, version?}}")
        arg = args[0]
        doc = self.document(arg["uri"])
        if arg.get("version") is not None and arg["version"] != doc.version:
            raise JsonRpcContentModified(
                f"dgemma: {doc.uri} is at version {doc.version}, not {arg['version']}: the request is stale"
            )
        hole = None
        try:
            if arg.get("range") is not None:
                start, end = self.offsets(doc, self.protocol._converter.structure(arg["range"], types.Range))
                targets = placeholders.find_fill_targets(doc.tree, start, end) if doc.tree and start < end else []
                hole = infill.Hole(start, end, targets[0].scope if targets else None)
            elif arg.get("position") is not None:
                position = self.protocol._converter.structure(arg["position"], types.Position)
                offset = doc.offset_at(position.line, position.character)
                hole = infill.Hole(offset, offset)
        except Exception as error:
            raise JsonRpcInvalidParams(f"dgemma: {action}: bad range or position: {error}") from None
        version = doc.version
        result = await self.compute(doc, action, hole)
        unstructure = self.protocol._converter.unstructure
        response = {
            "version": version,
            "edits": [
                {"range": unstructure(self.lsp_range(doc, e.start, e.end)), "newText": e.new_text} for e in result.edits
            ],
            "metadata": {
                "steps": result.usage.steps,
                "tokensPerForward": round(result.usage.tokens_per_forward, 3),
                "ms": round(result.usage.ms, 1),
                "model": self.worker.description,
            },
        }
        if arg.get("apply") and result.edits:  # after this await the document is a newer version
            edit = self.workspace_edit(doc, result.edits)
            applied = await self.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label=action))
            if not applied.applied:
                log.warning("the client did not apply %s: %s", action, applied.failure_reason)
        return response

    def workspace_edit(self, doc: Document, edits: Sequence[infill.Edit]) -> types.WorkspaceEdit:
        text_edits = [types.TextEdit(range=self.lsp_range(doc, e.start, e.end), new_text=e.new_text) for e in edits]
        if self._supports("workspace.workspace_edit.document_changes"):
            identifier = types.OptionalVersionedTextDocumentIdentifier(uri=doc.uri, version=doc.version)
            return types.WorkspaceEdit(
                document_changes=[types.TextDocumentEdit(text_document=identifier, edits=text_edits)]
            )
        return types.WorkspaceEdit(changes={doc.uri: text_edits})

    async def configuration_changed(self, params: types.DidChangeConfigurationParams) -> None:
        self._configuration_changes += 1
        change = self._configuration_changes
        raw = section_of(params.settings)
        if raw is None and self._supports("workspace.configuration"):
            items = [types.ConfigurationItem(section=SECTION)]
            raw = (await self.workspace_configuration_async(types.ConfigurationParams(items=items)))[0]
            if change != self._configuration_changes:  # applying them now would undo the newer change
                self.log_to_client(types.MessageType.Log, "dgemma: pulled settings ignored: a newer "
                                   "didChangeConfiguration arrived while workspace/configuration was answered")
                return
        self.apply_settings(raw, reload=True)

    def report_server_error(self, error: Exception, source: Any) -> None:
        log.error("dgemma-ls internal error (%s): %s", getattr(source, "__name__", source), error)
        super().report_server_error(error, source)


def build_server(cli_model: str | None = None) -> DgemmaServer:
    server = DgemmaServer(cli_model)

    async def completion(ls: DgemmaServer, params: types.CompletionParams):
        return await ls.completion(params)

    @server.feature(types.INITIALIZE)
    def initialize(ls: DgemmaServer, params: types.InitializeParams) -> None:
        if params.trace is not None:
            ls.protocol.trace = params.trace
        ls.apply_settings(section_of(params.initialization_options), reload=False)
        if getattr(params.capabilities.text_document, "inline_completion", None) is None:
            # The fallback only for clients without ghost text: one model call per keystroke, not two.
            server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())(completion)

    @server.feature(types.INITIALIZED)
    def initialized(ls: DgemmaServer, params: types.InitializedParams) -> None:
        ls.start_model_load()

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: DgemmaServer, params: None) -> None:
        ls.worker.close()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: DgemmaServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.open_document(params.text_document)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: DgemmaServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.change_document(params)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: DgemmaServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.close_document(params.text_document.uri)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(ls: DgemmaServer, params: types.DidChangeConfigurationParams) -> None:
        await ls.configuration_changed(params)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: DgemmaServer, params: types.InlineCompletionParams):
        return await ls.inline_completion(params)

    @server.feature(
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionOptions(
            code_action_kinds=[types.CodeActionKind.RefactorRewrite, types.CodeActionKind.QuickFix],
            resolve_provider=True,
        ),
    )
    def code_action(ls: DgemmaServer, params: types.CodeActionParams):
        return ls.code_actions(params)

    @server.feature(types.CODE_ACTION_RESOLVE)
    async def code_action_resolve(ls: DgemmaServer, action: types.CodeAction):
        return await ls.resolve_code_action(action)

    @server.command(FILL)
    async def fill(ls: DgemmaServer, *args):
        return await ls.execute(FILL, args)

    @server.command(REPAIR_JSON)
    async def repair_json(ls: DgemmaServer, *args):
        return await ls.execute(REPAIR_JSON, args)

    @server.command(REPAIR_MARKDOWN)
    async def repair_markdown(ls: DgemmaServer, *args):
        return await ls.execute(REPAIR_MARKDOWN, args)

    return server
