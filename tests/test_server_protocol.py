"""Raw JSON-RPC over stdio: bytes in, framed replies out. Every request is answered with its id,
malformed ones with an error (never a popup); a second initialize is an error that keeps the
open documents; protocol noise stays in the log."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
import pytest_asyncio
from lsp_support import FAST, REPO, server_env

# real server processes, seconds each: the fast tier (-m "not slow") skips this module
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND = -32602, -32600, -32601
DOC = (REPO / "tests" / "raw_protocol.json").as_uri()


class RawClient:
    """Writes framed messages to the server's stdin and collects every framed message it sends."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.received: list[dict] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        stdout = self.process.stdout
        while True:
            length = None
            while (line := await stdout.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if not line or length is None:
                return
            self.received.append(json.loads(await stdout.readexactly(length)))

    def send(self, message: dict | bytes) -> None:
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    async def reply(self, msg_id, timeout: float = 60) -> dict:
        for _ in range(int(timeout / 0.02)):
            for message in self.received:
                if message.get("id") == msg_id and "method" not in message:
                    return message
            await asyncio.sleep(0.02)
        raise AssertionError(f"no reply to request {msg_id!r}; received {self.received}")

    async def request(self, msg_id, method: str, params, **extra) -> dict:
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params, **extra})
        return await self.reply(msg_id)

    def notify(self, method: str, params) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def sent(self, method: str) -> list[dict]:
        return [m for m in self.received if m.get("method") == method]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def raw(tiny_model_dir, tmp_path_factory):
    log = open(tmp_path_factory.mktemp("raw") / "server.log", "wb")  # read it when a test fails
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dgemma_ls", "--model", tiny_model_dir, "--log-level", "INFO",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, env=server_env(),
    )
    client = RawClient(process)
    init = await client.request(1, "initialize", {"processId": None, "capabilities": {},
                                                  "initializationOptions": {"dgemma": FAST}})
    client.capabilities = init["result"]["capabilities"]
    client.notify("initialized", {})
    client.notify("textDocument/didOpen", {"textDocument": {"uri": DOC, "languageId": "json", "version": 1,
                                                            "text": "{'a': True,}"}})
    yield client
    if process.returncode is None:
        process.kill()
    await process.wait()
    log.close()


POSITION = {"line": 0, "character": 0}
RANGE = {"start": POSITION, "end": POSITION}
DOCUMENT = {"uri": DOC}


async def test_without_ghost_text_the_completion_fallback_opens_on_trigger_characters(raw):
    """Neovim 0.11's completion menu opens by itself only on a server's trigger characters."""
    triggers = raw.capabilities["completionProvider"]["triggerCharacters"]
    assert {".", "(", ","} <= set(triggers) and not any(t.isalnum() for t in triggers)


@pytest.mark.parametrize(
    "method, params, code",
    [
        ("textDocument/inlineCompletion", {"textDocument": DOCUMENT, "position": POSITION}, INVALID_PARAMS),
        ("textDocument/inlineCompletion",
         {"textDocument": DOCUMENT, "position": POSITION, "context": {"triggerKind": 99}}, INVALID_PARAMS),
        ("textDocument/codeAction", {"textDocument": DOCUMENT, "range": RANGE}, INVALID_PARAMS),
        ("textDocument/codeAction", None, INVALID_PARAMS),
        ("workspace/executeCommand", None, INVALID_PARAMS),
        ("textDocument/hover", {}, INVALID_PARAMS),
        ("dgemma/noSuchMethod", None, METHOD_NOT_FOUND),
    ],
    ids=["inline-no-context", "inline-trigger-99", "action-no-context", "action-null", "command-null", "hover-empty",
         "unknown-null"],
)
async def test_a_request_whose_params_do_not_parse_is_answered_with_its_id(raw, method, params, code):
    msg_id = f"{method}-{json.dumps(params)}"
    reply = await raw.request(msg_id, method, params)
    assert reply["id"] == msg_id and reply["error"]["code"] == code and "result" not in reply


async def test_a_request_that_is_not_json_rpc_2_is_an_invalid_request(raw):
    raw.send({"jsonrpc": "1.0", "id": "old", "method": "textDocument/hover", "params": {}})
    reply = await raw.reply("old")
    assert reply["error"]["code"] == INVALID_REQUEST


async def test_a_second_initialize_is_an_error_and_the_documents_stay_open(raw):
    reply = await raw.request(2, "initialize", {"processId": None, "capabilities": {}})
    assert reply["error"]["code"] == INVALID_REQUEST and "already initialized" in reply["error"]["message"]
    raw.notify("textDocument/didChange", {"textDocument": {"uri": DOC, "version": 2},
                                          "contentChanges": [{"text": "{'b': False,}"}]})
    result = (await raw.request(3, "workspace/executeCommand",
                                {"command": "dgemma.repairJson", "arguments": [{"uri": DOC, "version": 2}]}))["result"]
    assert result["version"] == 2 and [e["newText"] for e in result["edits"]]


async def test_protocol_noise_is_logged_never_shown(raw):
    raw.notify("textDocument/didChange", {"textDocument": {"uri": "file:///never/opened.py", "version": 2},
                                          "contentChanges": [{"text": "x"}]})
    raw.notify("textDocument/didChange", {"textDocument": {"uri": DOC}})  # a notification that does not parse
    raw.send(b"{not json")
    reply = await raw.request(4, "textDocument/codeAction",
                              {"textDocument": DOCUMENT, "range": RANGE, "context": {"diagnostics": []}})
    assert [a["title"] for a in reply["result"]] == ["Repair JSON"]  # the server still answers
    assert raw.sent("window/showMessage") == []
    assert raw.sent("window/logMessage")


@pytest.mark.parametrize(
    "method, params",
    [
        ("codeAction/resolve", {"title": "Fill in the middle", "data": {"uri": 3}}),
        ("codeAction/resolve", {"title": "Fill in the middle", "data": {"uri": DOC, "action": "dgemma.nope"}}),
        ("codeAction/resolve", {"title": "Fill in the middle", "data": [1, 2]}),
        ("workspace/executeCommand", {"command": "dgemma.repairJson", "arguments": [{"uri": DOC, "version": "abc"}]}),
        ("workspace/executeCommand",
         {"command": "dgemma.fill", "arguments": [{"uri": DOC, "position": {"line": -1, "character": "x"}}]}),
    ],
    ids=["resolve-uri-not-a-string", "resolve-unknown-action", "resolve-data-a-list", "command-version-abc",
         "command-bad-position"],
)
async def test_tampered_action_data_and_command_arguments_are_invalid_params(raw, method, params):
    reply = await raw.request(f"tampered-{json.dumps(params)}", method, params)
    assert reply["error"]["code"] == INVALID_PARAMS and "Traceback" not in json.dumps(reply)
