"""dgemma-ls with a remote backend, end to end: the real language server (pytest-lsp) whose
backend is the real `dgemma serve` on a tiny checkpoint (`dgemma`, and `openai` against its
/v1/completions), or an OpenAI-protocol stand-in that fails in one way (refused, slow, 500,
malformed). Failures are an empty result with a logged reason; the server keeps answering and
uses a backend that comes back without a restart."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web
from lsp_support import FAST, Doc, log_containing, session
from lsprotocol import types
from test_backends import StandIn

# real server processes, seconds each: the fast tier (-m "not slow") skips this module
pytestmark = pytest.mark.slow

CODE = "def area(width, height):\n    # multiply the width and the \n    return width * height\n"
CURSOR = CODE.index("the \n") + len("the ")  # inside a comment: the tiny model's byte soup survives


async def complete(client, doc: Doc) -> types.InlineCompletionList | None:
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        text_document=doc.identifier(), position=doc.position(CURSOR)))


async def repair_json(client) -> dict:
    text = "{'a': 1, 'b': [True, None,]"
    doc = Doc(client, text, "json", ".json")
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="dgemma.repairJson", arguments=[{"uri": doc.uri}]))


async def holes_served(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/health") as response:
        return (await response.json())["batched_holes"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["dgemma", "openai"])
async def test_completion_and_repair_through_dgemma_serve(start_serve, tiny_model_dir, kind):
    _, url = start_serve("--model", tiny_model_dir)
    settings = {**FAST, "backend": kind, "backendUrl": url + ("/v1" if kind == "openai" else "")}
    async with session("visual_studio_code", model=None, settings=settings) as client:
        assert any(f"{kind} backend at {url}" in m.message for m in client.log_messages)
        before = await holes_served(url)
        result = await complete(client, Doc(client, CODE))
        assert result is not None and result.items and all(i.insert_text.strip() for i in result.items)
        assert await holes_served(url) > before  # the middles came from the server
        repaired = await repair_json(client)
        edits = repaired["edits"]
        assert edits and kind in repaired["metadata"]["model"]


async def test_a_killed_server_gives_empty_results_with_a_reason_then_recovers(start_serve, tiny_model_dir):
    port = free_port()
    process, url = start_serve("--model", tiny_model_dir, "--port", str(port))
    async with session("neovim", model=None, settings={**FAST, "backend": "dgemma", "backendUrl": url}) as client:
        # a new document for each request: the type-through cache would answer a repeated one
        assert (await complete(client, Doc(client, CODE))) is not None

        process.terminate()
        process.wait(timeout=20)
        seen = len(client.log_messages)
        assert await complete(client, Doc(client, CODE)) is None
        await log_containing(client, "cannot connect", after=seen)
        assert (await repair_json(client))["edits"]  # the server still answers (the repair needs no model)

        _, again = start_serve("--model", tiny_model_dir, "--port", str(port))
        assert again == url
        result = await complete(client, Doc(client, CODE))
        assert result is not None and result.items  # used again, no restart, no reload


def stand_in_failing(how: str) -> StandIn:
    async def completions(request):
        if how == "slow":
            await asyncio.sleep(30)
        if how == "500":
            return web.json_response({"error": {"message": "CUDA out of memory"}}, status=500)
        return web.Response(text='{"choices": [', content_type="application/json")

    return StandIn([web.post("/v1/completions", completions)])


@pytest.mark.parametrize("how, reason", [
    ("refused", "cannot connect"),
    ("slow", "no reply within 500 ms"),
    ("500", "HTTP 500: CUDA out of memory"),
    ("malformed", "malformed reply (not JSON)"),
])
async def test_backend_failures_are_logged_and_the_server_keeps_answering(how, reason):
    stand_in = None if how == "refused" else stand_in_failing(how)
    url = f"http://127.0.0.1:{free_port()}" if stand_in is None else stand_in.url
    settings = {**FAST, "backend": "openai", "backendUrl": url, "backendModel": "m", "backendTimeoutMs": 500}
    try:
        async with session("neovim", model=None, settings=settings) as client:
            seen = len(client.log_messages)
            assert await complete(client, Doc(client, CODE)) is None
            await log_containing(client, reason, after=seen)
            assert (await repair_json(client))["edits"]  # the server still answers
    finally:
        if stand_in is not None:
            stand_in.close()


async def test_a_remote_backend_without_url_fails_to_load_with_a_message():
    settings = {**FAST, "backend": "dgemma"}
    async with session("neovim", model=None, settings=settings, wait="could not load") as client:
        message = await log_containing(client, "backendUrl")
        assert "not set" in message.message
