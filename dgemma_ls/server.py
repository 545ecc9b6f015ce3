"""The only module that speaks LSP: it converts between lsprotocol types and the completion service.

Handlers are a few lines each: convert the params, call `service.CompletionService`, convert the
result back. `DgemmaProtocol` answers every request, malformed ones included, with an error
carrying its id, and keeps protocol noise in the log instead of the user's face.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from lsprotocol import types
from pygls.exceptions import (
    JsonRpcContentModified,
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
)
from pygls.io_ import run_async
from pygls.lsp.server import LanguageServer
from pygls.protocol import JsonRPCResponseMessage, LanguageServerProtocol
from pygls.protocol.json_rpc import ResponseErrorMessage
from pygls.protocol.language_server import lsp_method

from dgemma_ls import framing, service
from dgemma_ls.service import (
    FILL,
    FILL_TABLE_CELLS,
    REPAIR_JSON,
    REPAIR_MARKDOWN,
    CompletionService,
    Reporter,
)
from dgemma_ls.settings import SECTION, section_of

log = logging.getLogger(__name__)

try:
    VERSION = importlib.metadata.version("dgemma-ls")
except importlib.metadata.PackageNotFoundError:  # run from a source checkout
    VERSION = "0+source"

# The textDocument/completion fallback (clients without ghost text, e.g. Neovim 0.11) opens its
# menu by itself only after these: member access, a call or subscript, the next argument, an
# assignment. On held-out code (python -m benchmarks.trigger_characters) code follows each on its
# line 71-90 % of the time, and together they fire 59 times per 1000 typed characters. Left out:
# space (93 per 1000 on its own), ':' and '{' (a block opens: code follows 43-51 %), word
# characters (the open menu re-asks on every keystroke anyway, answered from the cache).
COMPLETION_TRIGGERS = [".", "(", "[", ",", "="]


class RequestFailed(JsonRpcException):
    """LSP RequestFailed: the request was valid but could not be carried out (the message says why)."""

    CODE = -32803


def lsp_errors(handler: Callable) -> Callable:
    """Map the service's exceptions to their JSON-RPC errors."""

    @functools.wraps(handler)
    async def wrapped(*args: Any) -> Any:
        try:
            return await handler(*args)
        except service.InvalidArguments as error:
            raise JsonRpcInvalidParams(str(error)) from None
        except service.Stale as error:
            raise JsonRpcContentModified(str(error)) from None
        except service.Failed as error:
            raise RequestFailed(str(error)) from None
        except JsonRpcException:
            raise
        except Exception as error:  # an engine fault: the reason, never a traceback, goes to the client
            log.exception("%s failed", handler.__name__)
            raise RequestFailed(f"dgemma: {handler.__name__} failed: {error!r}") from None

    return wrapped


class _Malformed:
    """A message that cannot be handled: a request among them is answered with `error`."""

    def __init__(self, data: dict, error: JsonRpcException):
        self.id, self.method, self.error = data.get("id"), data.get("method"), error
        self.is_request = "id" in data and "method" in data  # "id": null is a request too


class DgemmaProtocol(LanguageServerProtocol):
    """pygls's protocol, with every request answered and one copy of each document (ours)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._initialize_seen = False
        self._command_tasks: dict[Any, asyncio.Task] = {}  # request id -> the command's task

    def track_command(self) -> None:
        """Called first in a command coroutine: pygls runs it as an inner task that cancelling the
        request does not reach (it cancels only the outer future), so remember it by request id."""
        msg_id, task = self._ctx_msg_id.get(None), asyncio.current_task()
        if msg_id is None or task is None:
            return
        self._command_tasks[msg_id] = task
        task.add_done_callback(lambda _: self._command_tasks.pop(msg_id, None))

    def _execute_handler(self, msg_id: Any, handler: Callable, callback: Callable, args=None, kwargs=None):
        # pygls 2 files the future of every coroutine, thread and generator handler under msg_id in
        # _request_futures, and only a request's answer takes it out again: each notification (a
        # fresh uuid) and each inner step of a generator handler (our didOpen / didChange /
        # didClose) left a finished Future there for good, one per keystroke (docs/reliability.md)
        def forget(future: Any) -> None:
            if self._request_futures.get(msg_id) is future:
                del self._request_futures[msg_id]
            callback(future)

        super()._execute_handler(msg_id, handler, forget, args, kwargs)

    def _handle_cancel_notification(self, msg_id: Any):
        super()._handle_cancel_notification(msg_id)  # answers -32800 at once
        task = self._command_tasks.pop(msg_id, None)
        if task is not None and not task.done():
            task.cancel()  # the service marks the job's ticket: it stops at its next model call or step
            log.info("cancelled command request %s", msg_id)

    def structure_message(self, data: dict[str, Any]):
        # json.loads calls this for every object, innermost first; only messages carry "jsonrpc"
        if "jsonrpc" in data and data["jsonrpc"] != self.VERSION:
            return _Malformed(data, JsonRpcInvalidRequest(f'"jsonrpc" must be "{self.VERSION}"'))
        try:
            return super().structure_message(data)
        except JsonRpcException as error:  # pygls would drop it; the client would wait forever
            cause = f": {error.__cause__}" if error.__cause__ else ""
            return _Malformed(data, type(error)(f"invalid params for {data.get('method')}{cause}"))

    def handle_message(self, message: Any):
        if isinstance(message, dict):  # no "jsonrpc" member at all
            message = _Malformed(message, JsonRpcInvalidRequest(f'"jsonrpc" must be "{self.VERSION}"'))
        if isinstance(message, _Malformed):
            log.warning("%s (id %r) not handled: %s", message.method, message.id, message.error)
            if message.is_request:
                self._send_response(message.id, error=message.error.to_response_error())
            return
        super().handle_message(message)

    def _serialize_message(self, data: Any) -> dict[str, Any]:
        unstructured = super()._serialize_message(data)
        # JSON-RPC: a response always has "id", null when the request's was (cattrs drops None)
        if isinstance(data, (ResponseErrorMessage, JsonRPCResponseMessage)) and data.id is None:
            unstructured = {"jsonrpc": self.VERSION, "id": None, **unstructured}
        return unstructured

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        if self._initialize_seen:  # LSP: initialize is sent once; a second one must not reset state
            raise JsonRpcInvalidRequest("dgemma: the server is already initialized")
        self._initialize_seen = True
        return (yield from super().lsp_initialize(params))

    # The service keeps the only copy of each document (documents.py says why not pygls's).
    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        yield self.fm.features[types.TEXT_DOCUMENT_DID_OPEN], (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        yield self.fm.features[types.TEXT_DOCUMENT_DID_CHANGE], (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        yield self.fm.features[types.TEXT_DOCUMENT_DID_CLOSE], (params,), None


_MESSAGE_TYPES = {
    logging.ERROR: types.MessageType.Error,
    logging.WARNING: types.MessageType.Warning,
    logging.INFO: types.MessageType.Info,
    logging.DEBUG: types.MessageType.Log,
}


class ClientReporter(Reporter):
    """The service's messages as window/logMessage, window/showMessage (each text once: a popup
    the user has seen is not repeated) and $/logTrace."""

    def __init__(self, server: DgemmaServer):
        self.server = server
        self._shown: set[str] = set()

    def log(self, level: int, message: str) -> None:
        super().log(level, message)
        self.server.window_log_message(types.LogMessageParams(type=_MESSAGE_TYPES[level], message=message))

    def show(self, level: int, message: str) -> None:
        if message in self._shown:
            self.log(level, message)
            return
        self._shown.add(message)
        self.server.window_show_message(types.ShowMessageParams(type=_MESSAGE_TYPES[level], message=message))

    def trace(self, message: str) -> None:
        if self.server.protocol.trace != types.TraceValue.Off:
            self.server.log_trace(types.LogTraceParams(message=message))


def _position(position: types.Position) -> service.Position:
    return position.line, position.character


def _lsp_range(start: service.Position, end: service.Position) -> types.Range:
    return types.Range(start=types.Position(*start), end=types.Position(*end))


class DgemmaServer(LanguageServer):
    def __init__(self, cli_model: str | None = None, cli_quantize: str = "none", cli_backend=None):
        super().__init__(
            "dgemma-ls", VERSION, text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            protocol_cls=DgemmaProtocol,
        )
        self.service = CompletionService(ClientReporter(self), cli_model, cli_quantize, cli_backend)
        self._load_task: asyncio.Task | None = None
        self._configuration_changes = 0

    def supports(self, path: str) -> bool:
        value: Any = self.client_capabilities
        for name in path.split("."):
            value = getattr(value, name, None)
        return bool(value)

    def report_server_error(self, error: Exception, source: Any) -> None:
        """Protocol noise (a notification that failed, a message that did not parse) goes to the
        log, never to a popup: the user cannot act on it."""
        log.error("dgemma-ls: %s: %s", getattr(source, "__name__", source), error)
        if framing.parse_error_reply(error, self.protocol._send_data):
            return
        with_cause = f"{error}: {error.__cause__}" if error.__cause__ else str(error)
        self.window_log_message(types.LogMessageParams(type=types.MessageType.Error, message=f"dgemma: {with_cause}"))

    # -- transports: pygls's loops, fed by a reader that resynchronises after a framing error --

    def start_io(self, stdin: Any = None, stdout: Any = None) -> None:
        super().start_io(stdin or framing.StdioReader(sys.stdin.buffer.fileno()), stdout)

    def start_tcp(self, host: str, port: int) -> None:
        """pygls's start_tcp with framing.StreamReader around the connection (one client)."""
        self._stop_event = stop_event = threading.Event()

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.protocol.set_writer(writer)  # type: ignore[arg-type]
            await run_async(stop_event=stop_event, reader=framing.StreamReader(reader), protocol=self.protocol,
                            logger=log, error_handler=self.report_server_error)
            self.shutdown()

        async def serve() -> None:
            self._server = await asyncio.start_server(connection, host, port)
            log.info("listening on %s:%s", host, port)
            async with self._server:
                await self._server.serve_forever()

        try:
            asyncio.run(serve())
        except asyncio.CancelledError:
            log.debug("TCP server cancelled")

    # -- the model ----------------------------------------------------------------------------

    def start_model_load(self) -> None:
        number = self.service.next_load()
        self._load_task = asyncio.ensure_future(self.load_model(number))

    async def load_model(self, number: int) -> None:
        settings = self.service.settings
        token = f"dgemma/load/{number}"
        progress = self.supports("window.work_done_progress")
        if progress:
            try:
                await self.work_done_progress.create_async(token)
            except Exception as error:
                log.warning("window/workDoneProgress/create failed: %s", error)
                progress = False

        def report(stage: str, message: str, percentage: int | None) -> None:
            if not progress:
                return
            if stage == "begin":
                value: Any = types.WorkDoneProgressBegin(title="dgemma: loading model", message=message, percentage=0)
            elif stage == "report":
                value = types.WorkDoneProgressReport(message=message, percentage=percentage)
            else:
                value = types.WorkDoneProgressEnd(message=message)
            self.progress(types.ProgressParams(token=token, value=value))

        await self.service.load_model(number, settings, report)

    async def configuration_changed(self, params: types.DidChangeConfigurationParams) -> None:
        self._configuration_changes += 1
        change = self._configuration_changes
        raw = section_of(params.settings)
        if raw is None and self.supports("workspace.configuration"):
            items = [types.ConfigurationItem(section=SECTION)]
            raw = (await self.workspace_configuration_async(types.ConfigurationParams(items=items)))[0]
            if change != self._configuration_changes:  # applying them now would undo the newer change
                self.service.reporter.log(logging.DEBUG, "dgemma: pulled settings ignored: a newer "
                                          "didChangeConfiguration arrived while workspace/configuration was answered")
                return
        if self.service.apply_settings(raw):
            self.start_model_load()

    # -- completions --------------------------------------------------------------------------

    async def inline_completion(self, params: types.InlineCompletionParams) -> types.InlineCompletionList | None:
        selected = None
        if (info := params.context.selected_completion_info) is not None:
            selected = (_position(info.range.start), _position(info.range.end), info.text)
        found = await self.service.complete(
            params.text_document.uri,
            _position(params.position),
            automatic=params.context.trigger_kind == types.InlineCompletionTriggerKind.Automatic,
            selected=selected,
        )
        if found is None:
            return None
        span = _lsp_range(found.start, found.end)
        return types.InlineCompletionList(
            items=[types.InlineCompletionItem(insert_text=text, range=span) for text in found.texts]
        )

    async def completion(self, params: types.CompletionParams) -> types.CompletionList:
        found = await self.service.complete_word(params.text_document.uri, _position(params.position))
        items = []
        for text in found.texts if found else []:
            first_line = text.strip().split("\n", 1)[0]
            items.append(
                types.CompletionItem(
                    label=first_line[:60] or text,
                    kind=types.CompletionItemKind.Text,
                    detail="dgemma",
                    filter_text=text,
                    insert_text_format=types.InsertTextFormat.PlainText,
                    text_edit=types.TextEdit(range=_lsp_range(found.start, found.end), new_text=text),
                )
            )
        # incomplete: typing re-asks, and the cache answers while the user types into the item
        return types.CompletionList(is_incomplete=True, items=items)

    # -- code actions and commands ------------------------------------------------------------

    def code_actions(self, params: types.CodeActionParams) -> list[types.CodeAction] | None:
        only = params.context.only

        def wanted(kind: str) -> bool:
            return not only or any(kind == k or kind.startswith(f"{k}.") for k in only)

        offers = self.service.offers(
            params.text_document.uri,
            _position(params.range.start),
            _position(params.range.end),
            fills=wanted(types.CodeActionKind.RefactorRewrite),
            repairs=wanted(types.CodeActionKind.QuickFix),
        )
        if offers is None:
            return None
        disabled_support = self.supports("text_document.code_action.disabled_support")
        resolve_support = self.supports("text_document.code_action.resolve_support")
        actions = []
        for offer in offers:
            if offer.disabled is not None and not disabled_support:
                continue
            kind = types.CodeActionKind.QuickFix if offer.quick_fix else types.CodeActionKind.RefactorRewrite
            action = types.CodeAction(title=offer.title, kind=kind, data=offer.data)
            if offer.disabled is not None:
                action.disabled = types.CodeActionDisabled(reason=f"dgemma: {offer.disabled}")
            elif not resolve_support:  # no lazy edits: the command computes and applies when chosen
                arguments = [self.service.command_arguments(offer.data)]
                action.command = types.Command(title=offer.title, command=offer.data["action"], arguments=arguments)
                action.data = None
            actions.append(action)
        return actions

    @lsp_errors
    async def resolve_code_action(self, action: types.CodeAction) -> types.CodeAction:
        result = await self.service.resolve(action.data, action.title)
        action.edit = self.workspace_edit(result)
        return action

    @lsp_errors
    async def execute(self, action: str, args: tuple[Any, ...]) -> dict:
        self.protocol.track_command()
        apply = len(args) == 1 and isinstance(args[0], dict) and args[0].get("apply")
        result = await self.service.execute(action, args)
        response = {
            "version": result.version,
            "edits": [
                {"range": self.protocol._converter.unstructure(_lsp_range(e.start, e.end)), "newText": e.new_text}
                for e in result.edits
            ],
            "metadata": {
                "steps": result.usage.steps,
                "tokensPerForward": round(result.usage.tokens_per_forward, 3),
                "ms": round(result.usage.ms, 1),
                "model": result.model,
            },
        }
        if apply and result.edits:  # after this await the document is a newer version
            edit = self.workspace_edit(result)
            applied = await self.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label=action))
            if not applied.applied:
                reason = applied.failure_reason or "no reason given"
                log.warning("the client did not apply %s: %s", action, reason)
                raise service.Failed(f"dgemma: {action}: the client did not apply the edit: {reason}")
        return response

    def workspace_edit(self, result: service.ActionResult) -> types.WorkspaceEdit:
        text_edits = [types.TextEdit(range=_lsp_range(e.start, e.end), new_text=e.new_text) for e in result.edits]
        if self.supports("workspace.workspace_edit.document_changes"):
            identifier = types.OptionalVersionedTextDocumentIdentifier(uri=result.uri, version=result.version)
            return types.WorkspaceEdit(
                document_changes=[types.TextDocumentEdit(text_document=identifier, edits=text_edits)]
            )
        return types.WorkspaceEdit(changes={result.uri: text_edits})


def _changes(params: types.DidChangeTextDocumentParams) -> list[service.Change]:
    changes = []
    for change in params.content_changes:
        if isinstance(change, types.TextDocumentContentChangePartial):
            changes.append(service.Change(change.text, _position(change.range.start), _position(change.range.end)))
        else:
            changes.append(service.Change(change.text))
    return changes


def build_server(cli_model: str | None = None, cli_quantize: str = "none", cli_backend=None) -> DgemmaServer:
    """`cli_backend`: a Settings holding the --backend* flags (the dgemma.backend* settings override them)."""
    server = DgemmaServer(cli_model, cli_quantize, cli_backend)

    async def completion(ls: DgemmaServer, params: types.CompletionParams):
        return await ls.completion(params)

    @server.feature(types.INITIALIZE)
    def initialize(ls: DgemmaServer, params: types.InitializeParams) -> None:
        if params.trace is not None:
            ls.protocol.trace = params.trace
        ls.service.apply_settings(section_of(params.initialization_options))
        if getattr(params.capabilities.text_document, "inline_completion", None) is None:
            # The fallback only for clients without ghost text: one model call per keystroke, not two.
            options = types.CompletionOptions(trigger_characters=COMPLETION_TRIGGERS)
            server.feature(types.TEXT_DOCUMENT_COMPLETION, options)(completion)

    @server.feature(types.INITIALIZED)
    def initialized(ls: DgemmaServer, params: types.InitializedParams) -> None:
        ls.start_model_load()

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: DgemmaServer, params: None) -> None:
        ls.service.close()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: DgemmaServer, params: types.DidOpenTextDocumentParams) -> None:
        item = params.text_document
        encoding = str(ls.workspace.position_encoding or "utf-16")
        ls.service.open(item.uri, item.language_id, item.version, item.text, encoding)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: DgemmaServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.service.change(params.text_document.uri, params.text_document.version, _changes(params))

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: DgemmaServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.service.close_document(params.text_document.uri)

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

    @server.command(FILL_TABLE_CELLS)
    async def fill_table_cells(ls: DgemmaServer, *args):
        return await ls.execute(FILL_TABLE_CELLS, args)

    return server
