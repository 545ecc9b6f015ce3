"""Helpers for the end-to-end server tests: start the real `dgemma-ls` subprocess under a
pytest-lsp client with a given editor's capabilities, apply the edits it returns, and wait
for what it sends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

REPO = Path(__file__).resolve().parents[1]
CLIENTS = ("neovim", "visual_studio_code")
# Small and quick on 2 shared cores: the tests check behaviour, not completion quality.
FAST = {"maxMiddleTokens": 4, "debounceMs": 0, "steps": 4, "compile": False}
READY, FAILED = "model ready", "could not load"


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@contextlib.asynccontextmanager
async def session(
    client: str | types.ClientCapabilities,
    *,
    model: str | None,
    settings: dict | None = None,
    args: tuple[str, ...] = (),
    wait: str | None = READY,
    trace: bool = True,
):
    """A client with an editor's capabilities (a pytest-lsp client name, or capabilities) speaking to a
    fresh server initialized with `settings` and, by default, with its model loaded."""
    command = [sys.executable, "-m", "dgemma_ls", "--log-level", "INFO", *args]
    if model is not None:
        command += ["--model", model]
    capabilities = client_capabilities(client) if isinstance(client, str) else client
    client: LanguageClient = await ClientServerConfig(server_command=command, server_env=server_env()).start()
    client.traces = []

    @client.feature(types.LOG_TRACE)
    def log_trace(params: types.LogTraceParams) -> None:
        client.traces.append(params.message)

    try:
        client.initialize_result = await client.initialize_session(
            types.InitializeParams(
                capabilities=capabilities,
                initialization_options={"dgemma": dict(FAST if settings is None else settings)},
                root_uri=REPO.as_uri(),
                trace=types.TraceValue.Verbose if trace else None,
            )
        )
        if wait is not None:
            await log_containing(client, wait, timeout=120)
        yield client
    finally:
        await client.shutdown_session()
        await client.stop()


async def eventually(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def log_containing(
    client: LanguageClient, needle: str, timeout: float = 30, after: int = 0
) -> types.LogMessageParams:
    def find():
        for message in client.log_messages[after:]:
            if needle in message.message:
                return message
        if needle == READY:  # fail fast with the reason instead of timing out
            for message in client.log_messages[after:]:
                if FAILED in message.message:
                    raise AssertionError(f"the model did not load: {message.message}")
        return None

    return await eventually(find, timeout, f"a window/logMessage containing {needle!r}")


class Doc:
    """The client's copy of one open document."""

    _count = 0

    def __init__(
        self,
        client: LanguageClient,
        text: str,
        language_id: str = "python",
        suffix: str = ".py",
        path: Path | None = None,
    ):
        Doc._count += 1
        self.client = client
        self.uri = (path or REPO / "tests" / f"scratch_{Doc._count}{suffix}").as_uri()
        self.text = text
        self.version = 1
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(types.TextDocumentItem(self.uri, language_id, self.version, text))
        )

    def position(self, offset: int) -> types.Position:
        """ASCII texts only: characters are code units in every encoding."""
        line = self.text.count("\n", 0, offset)
        return types.Position(line, offset - (self.text.rfind("\n", 0, offset) + 1))

    def offset(self, position: types.Position) -> int:
        lines = self.text.split("\n")
        return sum(len(line) + 1 for line in lines[: position.line]) + position.character

    def range(self, start: int, end: int) -> types.Range:
        return types.Range(self.position(start), self.position(end))

    def identifier(self) -> types.TextDocumentIdentifier:
        return types.TextDocumentIdentifier(self.uri)

    def edit(self, start: int, end: int, new_text: str) -> None:
        """Send an incremental change, as an editor does on every keystroke."""
        change = types.TextDocumentContentChangePartial(range=self.range(start, end), text=new_text)
        self.text = self.text[:start] + new_text + self.text[end:]
        self.version += 1
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(version=self.version, uri=self.uri),
                content_changes=[change],
            )
        )

    def applied(self, edits: list[types.TextEdit]) -> str:
        """The text with `edits` (non-overlapping, against this version) applied."""
        text = self.text
        for start, end, new_text in sorted(
            ((self.offset(e.range.start), self.offset(e.range.end), e.new_text) for e in edits), reverse=True
        ):
            text = text[:start] + new_text + text[end:]
        return text

    def edits_of(self, edit: types.WorkspaceEdit) -> list[types.TextEdit]:
        """The TextEdits a WorkspaceEdit makes to this document, checking versioned edits' version."""
        if edit.document_changes is not None:
            changes = [c for c in edit.document_changes if isinstance(c, types.TextDocumentEdit)]
            assert [c.text_document.uri for c in changes] == [self.uri]
            assert changes[0].text_document.version == self.version, "edit computed against another version"
            return list(changes[0].edits)
        assert edit.changes is not None and list(edit.changes) == [self.uri]
        return list(edit.changes[self.uri])
