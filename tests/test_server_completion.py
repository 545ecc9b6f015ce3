"""Inline completion (Automatic / Invoked / selectedCompletionInfo), the completion fallback,
the type-through cache and stale-request handling, end to end against the real server."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from lsp_support import CLIENTS, FAST, Doc, eventually, session
from lsprotocol import types

# real server processes, seconds each: the fast tier (-m "not slow") skips this module
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

# A random-weight model writes byte soup. The cursor sits where almost any text is valid (a
# Python comment, plain text), so its candidates survive post-processing and the tests can
# check placement exactly; the syntax checks are exercised by the fill tests.
CODE = "def area(width, height):\n    # multiply the width and the \n    return width * height\n"
CURSOR = CODE.index("the \n") + len("the ")
PROSE = "Shopping list for the weekend:\napples, pears and \nDone.\n"
PROSE_CURSOR = PROSE.index("and \n") + len("and ")


def prose(client) -> Doc:
    return Doc(client, PROSE, "plaintext", ".txt")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=CLIENTS)
async def client(request, tiny_model_dir):
    async with session(request.param, model=tiny_model_dir) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def slow_model(client):
    """Settings under which one completion denoises for seconds (1024 steps a canvas on the tiny
    model, ~1000x a message round trip), so an edit or a cancel sent once the model has started
    always lands while it runs; the fast settings come back even when the test fails."""
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"dgemma": {**FAST, "maxMiddleTokens": 64, "steps": 1024}})
    )
    yield
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"dgemma": FAST}))


def inline_params(
    doc: Doc, offset: int, kind: types.InlineCompletionTriggerKind, selected: types.SelectedCompletionInfo | None = None
) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        context=types.InlineCompletionContext(trigger_kind=kind, selected_completion_info=selected),
        text_document=doc.identifier(),
        position=doc.position(offset),
    )


def apply_item(doc: Doc, item: types.InlineCompletionItem) -> str:
    assert isinstance(item.insert_text, str) and item.range is not None
    return doc.applied([types.TextEdit(range=item.range, new_text=item.insert_text)])


async def test_automatic_trigger_gives_one_item_that_inserts_at_the_cursor(client):
    doc = Doc(client, CODE)
    result = await client.text_document_inline_completion_async(
        inline_params(doc, CURSOR, types.InlineCompletionTriggerKind.Automatic)
    )
    assert result is not None and len(result.items) == 1
    item = result.items[0]
    assert item.insert_text.strip()
    assert item.range == doc.range(CURSOR, CURSOR)
    assert apply_item(doc, item) == CODE[:CURSOR] + item.insert_text + CODE[CURSOR:]


async def test_invoked_trigger_gives_distinct_candidates_that_each_apply_cleanly(client):
    doc = Doc(client, CODE)
    result = await client.text_document_inline_completion_async(
        inline_params(doc, CURSOR, types.InlineCompletionTriggerKind.Invoked)
    )
    assert result is not None and 1 <= len(result.items) <= 3
    texts = [item.insert_text for item in result.items]
    assert len(set(texts)) == len(texts)
    for item in result.items:
        assert apply_item(doc, item) == CODE[:CURSOR] + item.insert_text + CODE[CURSOR:]


async def test_selected_completion_is_extended_over_its_range(client):
    text = "import os\n# read it with os.pa\nprint(os.sep)\n"
    doc = Doc(client, text)
    cursor = text.index("os.pa\n") + len("os.pa")
    word = cursor - len("pa")
    selected = types.SelectedCompletionInfo(range=doc.range(word, cursor), text="path")
    result = await client.text_document_inline_completion_async(
        inline_params(doc, cursor, types.InlineCompletionTriggerKind.Invoked, selected)
    )
    assert result is not None and result.items
    for item in result.items:
        assert item.range == doc.range(word, cursor)
        assert item.insert_text.startswith("path") and len(item.insert_text) > len("path")
        assert apply_item(doc, item) == text[:word] + item.insert_text + text[cursor:]


async def test_typing_into_a_shown_completion_is_answered_from_the_cache(client):
    doc = prose(client)
    first = await client.text_document_inline_completion_async(
        inline_params(doc, PROSE_CURSOR, types.InlineCompletionTriggerKind.Automatic)
    )
    shown = first.items[0].insert_text
    if len(shown) < 2:
        pytest.skip(f"the model's completion {shown!r} is too short to type into")
    traces = len(client.traces)
    doc.edit(PROSE_CURSOR, PROSE_CURSOR, shown[0])
    second = await client.text_document_inline_completion_async(
        inline_params(doc, PROSE_CURSOR + 1, types.InlineCompletionTriggerKind.Automatic)
    )
    assert [item.insert_text for item in second.items] == [shown[1:]]
    assert second.items[0].range == doc.range(PROSE_CURSOR + 1, PROSE_CURSOR + 1)
    assert any("answered from the cache" in t for t in client.traces[traces:])


async def test_completion_fallback_gives_one_text_edit_item(client):
    text = "Shopping list for the weekend:\napples, pears and gra\nDone.\n"
    doc = Doc(client, text, "plaintext", ".txt")
    cursor = text.index("gra\n") + len("gra")
    result = await client.text_document_completion_async(
        types.CompletionParams(
            text_document=doc.identifier(),
            position=doc.position(cursor),
            context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked),
        )
    )
    assert isinstance(result, types.CompletionList) and len(result.items) == 1
    item = result.items[0]
    edit = item.text_edit
    assert isinstance(edit, types.TextEdit)
    assert edit.range == doc.range(cursor - len("gra"), cursor)  # replaces the word being typed
    assert edit.new_text.startswith("gra") and len(edit.new_text) > len("gra")
    assert doc.applied([edit]) == text[:cursor] + edit.new_text[len("gra") :] + text[cursor:]


async def test_a_newer_version_makes_the_pending_request_return_nothing(client, slow_model):
    doc = prose(client)
    traces = len(client.traces)
    pending = asyncio.ensure_future(
        client.text_document_inline_completion_async(
            inline_params(doc, PROSE_CURSOR, types.InlineCompletionTriggerKind.Invoked)
        )
    )
    await eventually(lambda: any("model started" in t for t in client.traces[traces:]), what="the model to start")
    doc.edit(PROSE_CURSOR, PROSE_CURSOR, "x")
    result = await pending
    assert result is None or result.items == []
    assert any("stopped" in t for t in client.traces[traces:])


async def test_cancel_request_stops_the_model_and_the_server_keeps_answering(client, slow_model):
    doc = prose(client)
    traces = len(client.traces)
    params = inline_params(doc, PROSE_CURSOR, types.InlineCompletionTriggerKind.Invoked)
    pending = asyncio.ensure_future(
        client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="cancel-me")
    )
    await eventually(lambda: any("model started" in t for t in client.traces[traces:]), what="the model to start")
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
    try:
        result = await pending
        assert result is None or result.items == []
    except Exception as error:  # pygls answers a cancelled request with RequestCancelled
        assert "cancel" in str(error).lower()
    await eventually(lambda: any("stopped" in t for t in client.traces[traces:]), what="the model to stop")
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"dgemma": FAST}))
    again = await client.text_document_inline_completion_async(
        inline_params(doc, PROSE_CURSOR, types.InlineCompletionTriggerKind.Automatic)
    )
    assert again is not None and len(again.items) == 1


async def test_cancelling_a_command_stops_its_model_work(client, slow_model):
    """pygls runs a command as an inner task that $/cancelRequest does not reach; the server tracks
    it by request id, so the fill stops at its next denoising step instead of running on."""
    doc = Doc(client, CODE, "python", ".py")
    traces = len(client.traces)
    argument = {"uri": doc.uri, "position": {"line": 1, "character": doc.position(CURSOR).character}}
    pending = asyncio.ensure_future(client.protocol.send_request_async(
        types.WORKSPACE_EXECUTE_COMMAND, types.ExecuteCommandParams(command="dgemma.fill", arguments=[argument]),
        msg_id="cancel-command"))
    await eventually(lambda: any("model started" in t for t in client.traces[traces:]), what="the fill to start")
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-command"))
    with pytest.raises(Exception, match="(?i)cancel"):
        await pending
    await eventually(lambda: any("model stopped" in t and "cancelRequest" in t for t in client.traces[traces:]),
                     what="the fill's model work to stop")
