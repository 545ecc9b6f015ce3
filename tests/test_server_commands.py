"""workspace/executeCommand for scripts: dgemma.fill / repairJson / repairMarkdownTables / fillTableCells return
{version, edits: [{range, newText}], metadata: {steps, tokensPerForward, ms, model}}, and a
stale version or an unknown document gets a clear error, not a wrong edit."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio
from lsp_support import CLIENTS, Doc, session
from lsprotocol import types
from pygls.exceptions import JsonRpcException

# real server processes, seconds each: the fast tier (-m "not slow") skips this module
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

CODE = "def area(width, height):\n    # multiply the width and the \n    return width * height\n"


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=CLIENTS)
async def client(request, tiny_model_dir):
    async with session(request.param, model=tiny_model_dir) as client:
        yield client


async def execute(client, command: str, **argument):
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=command, arguments=[argument])
    )


def text_edits(result: dict) -> list[types.TextEdit]:
    return [
        types.TextEdit(
            range=types.Range(types.Position(**e["range"]["start"]), types.Position(**e["range"]["end"])),
            new_text=e["newText"],
        )
        for e in result["edits"]
    ]


def check_shape(result: dict, version: int, model_calls: bool) -> None:
    assert set(result) == {"version", "edits", "metadata"} and result["version"] == version
    assert set(result["metadata"]) == {"steps", "tokensPerForward", "ms", "model"}
    assert "DiffusionGemma" in result["metadata"]["model"]
    if model_calls:
        assert result["metadata"]["steps"] > 0 and result["metadata"]["tokensPerForward"] > 0


async def test_fill_at_a_position_inserts_there(client):
    doc = Doc(client, CODE)
    cursor = CODE.index("the \n") + len("the ")
    result = await execute(
        client, "dgemma.fill", uri=doc.uri, position={"line": 1, "character": doc.position(cursor).character}, version=1
    )
    check_shape(result, 1, model_calls=True)
    [edit] = text_edits(result)
    assert edit.range == doc.range(cursor, cursor) and edit.new_text.strip()
    assert doc.applied([edit]) == CODE[:cursor] + edit.new_text + CODE[cursor:]


async def test_fill_a_range_replaces_it(client):
    text = "def area(width, height):\n    pass  # TODO compute the area\n"
    doc = Doc(client, text)
    start, end = text.index("pass"), text.index("area\n") + len("area")
    span = {"start": {"line": 1, "character": 4}, "end": {"line": 1, "character": doc.position(end).character}}
    result = await execute(client, "dgemma.fill", uri=doc.uri, range=span)
    check_shape(result, 1, model_calls=True)
    [edit] = text_edits(result)
    assert edit.range == doc.range(start, end)
    assert "TODO" not in doc.applied([edit])


async def test_repair_json_command(client):
    text = "{'a': 1, 'b': [True, None,]"
    doc = Doc(client, text, "json", ".json")
    result = await execute(client, "dgemma.repairJson", uri=doc.uri)
    check_shape(result, 1, model_calls=False)
    assert json.loads(doc.applied(text_edits(result))) == {"a": 1, "b": [True, None]}


async def test_repair_markdown_tables_command(client):
    text = "| x | long header |\n|-|-|\n| 1 | 2 |\n"
    doc = Doc(client, text, "markdown", ".md")
    result = await execute(client, "dgemma.repairMarkdownTables", uri=doc.uri)
    check_shape(result, 1, model_calls=False)
    rows = doc.applied(text_edits(result)).strip("\n").split("\n")
    assert len(rows) == 3 and len({len(row) for row in rows}) == 1


async def test_repair_json_asks_the_model_nothing_for_a_trailing_comma(client):
    # the tiny random model writes junk: once it filled the comma's slot (`"b","bification "`)
    doc = Doc(client, '["a", "b",]\n', "json", ".json")
    result = await execute(client, "dgemma.repairJson", uri=doc.uri)
    assert doc.applied(text_edits(result)) == '["a", "b"]\n' and result["metadata"]["steps"] == 0


async def test_the_table_repair_asks_the_model_nothing_and_the_fill_does(client):
    text = "| x | long header |\n|-|-|\n| 1 | |\n| 2 |\n"
    doc = Doc(client, text, "markdown", ".md")
    repaired = await execute(client, "dgemma.repairMarkdownTables", uri=doc.uri)
    assert repaired["metadata"]["steps"] == 0
    assert doc.applied(text_edits(repaired)).split("\n") == [
        "| x   | long header |", "| --- | ----------- |", "| 1   |             |", "| 2   |             |", ""]
    filled = await execute(client, "dgemma.fillTableCells", uri=doc.uri)
    check_shape(filled, 1, model_calls=True)


async def test_a_stale_version_is_an_error_naming_both_versions(client):
    doc = Doc(client, CODE)
    doc.edit(0, 0, "# header\n")
    with pytest.raises(JsonRpcException, match=r"version 2, not 1"):
        await execute(client, "dgemma.fill", uri=doc.uri, position={"line": 0, "character": 0}, version=1)


@pytest.mark.parametrize(
    "argument, message",
    [
        ({"uri": "file:///nowhere.py", "position": {"line": 0, "character": 0}}, "not open"),
        ({"position": {"line": 0, "character": 0}}, "takes one argument"),
    ],
)
async def test_bad_arguments_are_clear_errors(client, argument, message):
    with pytest.raises(JsonRpcException, match=message):
        await execute(client, "dgemma.fill", **argument)


async def test_a_fill_without_range_or_position_is_an_error(client):
    doc = Doc(client, CODE)
    with pytest.raises(JsonRpcException, match="range or a position"):
        await execute(client, "dgemma.fill", uri=doc.uri)


async def test_malformed_requests_get_errors_and_the_server_keeps_answering(client):
    with pytest.raises(JsonRpcException, match="takes one argument"):
        await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="dgemma.fill", arguments=["x", 1])
        )
    with pytest.raises(JsonRpcException):
        await client.code_action_resolve_async(types.CodeAction(title="Fill in the middle", data={"uri": 3}))
    doc = Doc(client, CODE)
    with pytest.raises(JsonRpcException, match="bad range"):
        await execute(client, "dgemma.fill", uri=doc.uri, range={"start": "nowhere"})
    cursor = CODE.index("the \n") + len("the ")
    result = await execute(
        client, "dgemma.fill", uri=doc.uri, position={"line": 1, "character": doc.position(cursor).character}
    )
    assert result["edits"]
