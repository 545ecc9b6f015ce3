"""Model loading with $/progress, settings from initializationOptions and didChangeConfiguration
(invalid -> a warning naming the setting), reloads, a failed load that leaves the server up,
documents the model must not see, and the TCP transport."""

from __future__ import annotations

import asyncio
import json
import socket
import sys

import pytest
import pytest_asyncio
from lsp_support import CLIENTS, FAILED, FAST, READY, Doc, eventually, log_containing, server_env, session
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import client_capabilities

# real server processes, seconds each: the fast tier (-m "not slow") skips this module
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

CODE = "def area(width, height):\n    # multiply the width and the \n    return width * height\n"
CURSOR = CODE.index("the \n") + len("the ")
PROSE = "Shopping list for the weekend:\napples, pears and \nDone.\n"  # almost any text is valid here
PROSE_CURSOR = PROSE.index("and \n") + len("and ")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=CLIENTS)
async def client(request, tiny_model_dir):
    async with session(request.param, model=tiny_model_dir) as client:
        yield client


def automatic(doc: Doc, offset: int) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        text_document=doc.identifier(),
        position=doc.position(offset),
    )


def progress_kinds(client, token: str) -> list[str]:
    return [report.kind for report in client.progress_reports.get(token, [])]


async def warning_about(client, setting: str) -> types.ShowMessageParams:
    def find():
        return next((m for m in client.messages if m.type == types.MessageType.Warning and setting in m.message), None)

    return await eventually(find, what=f"a window/showMessage warning about {setting}")


def ready_load(client) -> str | None:
    """The progress token of a load that ended ready (whichever number it got: earlier tests in
    the module may have started loads of their own)."""
    return next((token for token, reports in client.progress_reports.items()
                 if token.startswith("dgemma/load/") and reports and reports[-1].kind == "end"
                 and (reports[-1].message or "").startswith("ready: ")), None)


async def test_loading_reports_progress_begin_report_end(client):
    token = await eventually(lambda: ready_load(client), what="a load's progress to end ready")
    reports = client.progress_reports[token]
    assert [r.kind for r in reports] == ["begin", "report", "end"]
    assert reports[0].title == "dgemma: loading model" and "checkpoint" in reports[0].message
    assert reports[-1].message.startswith("ready: ")


async def test_an_invalid_setting_warns_by_name_and_the_server_keeps_working(client):
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"dgemma": {**FAST, "steps": "many", "device": "tpu"}})
    )
    steps = await warning_about(client, "dgemma.steps")
    assert "default" in steps.message
    await warning_about(client, "dgemma.device")
    doc = Doc(client, PROSE, "plaintext", ".txt")
    result = await client.text_document_inline_completion_async(automatic(doc, PROSE_CURSOR))
    assert result is not None and len(result.items) == 1


async def test_settings_are_pulled_when_the_notification_carries_none(client):
    client.set_configuration({"maxMiddleTokens": "lots"}, section="dgemma")
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
    await warning_about(client, "dgemma.maxMiddleTokens")
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"dgemma": FAST}))


async def test_pulled_settings_never_undo_a_newer_change(client):
    """The pull answers after the next notification was applied: that answer is stale."""
    client.set_configuration({**FAST, "maxMiddleTokens": "stale"}, section="dgemma")
    after = len(client.log_messages)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"dgemma": FAST}))
    await log_containing(client, "pulled settings ignored", after=after)
    assert not [m for m in client.messages if "stale" in m.message]


async def test_a_dtype_change_reloads_the_model_with_progress(client):
    """Only the newest load reports ready; any load it overtook ends its progress as superseded."""
    ready, earlier = len(client.log_messages), set(client.progress_reports)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"dgemma": {**FAST, "dtype": "float32"}})
    )
    message = await log_containing(client, READY, timeout=120, after=ready)
    assert "float32 on cpu" in message.message
    loads = sorted(set(client.progress_reports) - earlier, key=lambda token: int(token.rsplit("/", 1)[1]))
    assert progress_kinds(client, loads[-1]) == ["begin", "report", "end"]
    assert client.progress_reports[loads[-1]][-1].message.startswith("ready: ")
    doc = Doc(client, PROSE, "plaintext", ".txt")
    result = await client.text_document_inline_completion_async(automatic(doc, PROSE_CURSOR))
    assert result is not None and len(result.items) == 1


async def test_the_compile_setting_reloads_and_compiles_in_the_background(client):
    """The model serves as soon as it is loaded; its step compiles on another thread meanwhile
    and takes over once done (the server says so)."""
    ready = len(client.log_messages)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"dgemma": {**FAST, "dtype": "bfloat16", "compile": True}})
    )
    message = await log_containing(client, READY, timeout=120, after=ready)
    assert "compiled" not in message.message  # ready before the compile: eager meanwhile
    doc = Doc(client, PROSE, "plaintext", ".txt")
    result = await client.text_document_inline_completion_async(automatic(doc, PROSE_CURSOR))
    assert result is not None and len(result.items) == 1
    message = await log_containing(client, "compile finished", timeout=300, after=ready)
    assert "denoising step compiled" in message.message
    doc.edit(PROSE_CURSOR, PROSE_CURSOR, "b")
    result = await client.text_document_inline_completion_async(automatic(doc, PROSE_CURSOR + 1))
    assert result is not None and len(result.items) == 1


async def test_disabled_languages_get_no_completion_and_a_logged_reason(client):
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(
            settings={"dgemma": {**FAST, "dtype": "float32", "enabledLanguages": ["json"]}}
        )
    )
    doc = Doc(client, CODE)
    assert await client.text_document_inline_completion_async(automatic(doc, CURSOR)) is None
    await log_containing(client, "enabledLanguages")
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"dgemma": {**FAST, "dtype": "float32"}})
    )


@pytest.mark.parametrize(
    "text, reason",
    [("x = 1\n" * 350_000, "too large"), ("data = '\x00\x01'\n", "binary")],
    ids=["huge", "binary"],
)
async def test_documents_the_model_must_not_see_get_nothing_and_a_reason(client, text, reason):
    doc = Doc(client, text)
    await log_containing(client, reason)
    assert await client.text_document_inline_completion_async(automatic(doc, 4)) is None


@pytest.mark.parametrize("client_name", CLIENTS)
async def test_a_failed_load_shows_the_error_and_the_server_still_answers(client_name, tmp_path):
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    async with session(client_name, model=str(broken), wait=FAILED) as client:
        error = await eventually(lambda: next((m for m in client.messages if m.type == types.MessageType.Error), None))
        assert "could not load" in error.message and error.message.count(str(broken)) == 1  # named once
        doc = Doc(client, CODE)
        assert await client.text_document_inline_completion_async(automatic(doc, CURSOR)) is None
        await log_containing(client, "no model call")
        with pytest.raises(JsonRpcException, match="cannot fill"):
            await client.workspace_execute_command_async(
                types.ExecuteCommandParams(
                    command="dgemma.fill", arguments=[{"uri": doc.uri, "position": {"line": 1, "character": 4}}]
                )
            )
        # the deterministic repairs do not need the model
        broken_json = Doc(client, "{'a': True,}", "json", ".json")
        result = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="dgemma.repairJson", arguments=[{"uri": broken_json.uri}])
        )
        assert result["edits"] and result["metadata"]["steps"] == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_tcp_transport_binds_loopback_and_speaks_lsp(tiny_model_dir):
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dgemma_ls",
        "--tcp",
        "--port",
        str(port),
        "--model",
        tiny_model_dir,
        env=server_env(),
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the server never listened on 127.0.0.1")
        body = json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}, "processId": None}}
        )
        writer.write(f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        await writer.drain()
        length = 0
        while (line := await asyncio.wait_for(reader.readline(), 30)) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        response = json.loads(await reader.readexactly(length))
        assert response["id"] == 1 and response["result"]["serverInfo"]["name"] == "dgemma-ls"
        assert response["result"]["capabilities"]["inlineCompletionProvider"] is not None
        writer.close()
    finally:
        server.kill()
        await server.wait()


async def test_clients_with_inline_completion_are_not_offered_the_completion_fallback(tiny_model_dir):
    capabilities = client_capabilities("visual_studio_code")
    capabilities.text_document.inline_completion = types.InlineCompletionClientCapabilities()
    async with session(capabilities, model=tiny_model_dir, wait=None) as client:
        assert client.initialize_result.capabilities.completion_provider is None
        assert client.initialize_result.capabilities.inline_completion_provider is not None


async def test_invalid_initialization_options_warn_by_name(tiny_model_dir):
    async with session("neovim", model=tiny_model_dir, settings={**FAST, "dtype": "int3"}, wait=None) as client:
        warning = await warning_about(client, "dgemma.dtype")
        assert "int3" in warning.message and "'auto'" in warning.message
