"""Code actions end to end: each is offered where it applies, resolves to a WorkspaceEdit
against the version it was offered for (versioned when the client supports documentChanges),
and applying that edit gives the promised text."""

from __future__ import annotations

import json
from typing import Union

import pytest
import pytest_asyncio
from lsp_support import CLIENTS, FAILED, Doc, session
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import client_capabilities

# real server processes, seconds each: the fast tier (-m "not slow") skips this module
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=CLIENTS)
async def client(request, tiny_model_dir):
    async with session(request.param, model=tiny_model_dir) as client:
        yield client


async def actions_at(client, doc: Doc, start: int, end: int | None = None) -> list[types.CodeAction]:
    result = await client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=doc.identifier(),
            range=doc.range(start, start if end is None else end),
            context=types.CodeActionContext(diagnostics=[]),
        )
    )
    return [a for a in result or [] if isinstance(a, types.CodeAction)]


async def resolved_edits(client, doc: Doc, action: types.CodeAction) -> list[types.TextEdit]:
    """The action's edits: via codeAction/resolve (both clients advertise resolve support)."""
    assert action.edit is None and action.data is not None  # computed lazily, not on every cursor move
    resolved = await client.code_action_resolve_async(action)
    assert resolved.edit is not None
    return doc.edits_of(resolved.edit)


def titled(actions: list[types.CodeAction], prefix: str) -> list[types.CodeAction]:
    return [a for a in actions if a.title.startswith(prefix)]


async def test_fill_in_the_middle_replaces_the_todo_placeholder(client):
    text = "def area(width, height):\n    pass  # TODO compute the area\n\n\nprint(area(2, 3))\n"
    doc = Doc(client, text)
    actions = titled(await actions_at(client, doc, text.index("pass") + 2), "Fill in the middle")
    assert [a.title for a in actions] == ["Fill in the middle: TODO compute the area"]
    assert actions[0].kind == types.CodeActionKind.RefactorRewrite
    after = doc.applied(await resolved_edits(client, doc, actions[0]))
    assert "pass  # TODO" not in after
    start = text.index("pass")
    end = text.index("area\n") + len("area")
    assert after.startswith(text[:start]) and after.endswith(text[end:])
    assert after[start : len(after) - len(text[end:])].strip()


async def test_fill_in_the_middle_of_a_selection(client):
    text = "def area(width, height):\n    # the result is WIDTH TIMES HEIGHT here\n    return width * height\n"
    doc = Doc(client, text)
    start = text.index("WIDTH")
    end = text.index(" here")
    actions = titled(await actions_at(client, doc, start, end), "Fill in the middle")
    assert [a.title for a in actions] == ["Fill in the middle (selection)"]
    edits = await resolved_edits(client, doc, actions[0])
    assert [doc.offset(e.range.start) for e in edits] == [start] and [doc.offset(e.range.end) for e in edits] == [end]
    after = doc.applied(edits)
    assert after == text[:start] + edits[0].new_text + text[end:] and edits[0].new_text.strip()


async def test_repair_json_gives_loadable_json_with_the_data_kept(client):
    text = '{\n  "name": "dgemma",\n  "items": [1, 2, 3,],\n  \'ok\': True\n'
    doc = Doc(client, text, "json", ".json")
    actions = titled(await actions_at(client, doc, 0), "Repair JSON")
    assert len(actions) == 1 and actions[0].kind == types.CodeActionKind.QuickFix
    after = doc.applied(await resolved_edits(client, doc, actions[0]))
    assert json.loads(after) == {"name": "dgemma", "items": [1, 2, 3], "ok": True}


async def test_repair_json_removes_a_trailing_comma_and_adds_nothing(client):
    # the tiny random model writes junk: once it filled the comma's slot (`"b","bification "`)
    text = '["a", "b",]\n'
    doc = Doc(client, text, "json", ".json")
    [action] = titled(await actions_at(client, doc, 0), "Repair JSON")
    assert doc.applied(await resolved_edits(client, doc, action)) == '["a", "b"]\n'


async def test_valid_json_offers_no_repair(client):
    doc = Doc(client, '{"a": [1, 2]}\n', "json", ".json")
    assert titled(await actions_at(client, doc, 0), "Repair JSON") == []


async def test_repair_markdown_table_aligns_it_and_keeps_every_cell(client):
    table = "| Name | Value |\n|---|--:|\n| alpha | 1 |\n| b | 22222 | extra |\n"
    text = "# Results\n\n" + table + "\nDone.\n"
    doc = Doc(client, text, "markdown", ".md")
    actions = titled(await actions_at(client, doc, text.index("alpha")), "Repair Markdown table")
    assert len(actions) == 1
    after = doc.applied(await resolved_edits(client, doc, actions[0]))
    assert after.startswith("# Results\n\n") and after.endswith("\nDone.\n")
    rows = [line for line in after.split("\n") if line.startswith("|")]
    assert len({len(row) for row in rows}) == 1, f"rows not aligned:\n{after}"
    cells = {cell.strip() for row in rows for cell in row.strip("|").split("|")}
    assert {"Name", "Value", "alpha", "1", "b", "22222", "extra"} <= cells


def table_cells(text: str) -> list[str]:
    rows = [line.strip() for line in text.split("\n") if line.strip().startswith("|")]
    cells = [cell.strip() for row in rows for cell in row.strip("|").split("|")]
    return sorted(cell for cell in cells if cell and set(cell) - set("-:"))


async def test_repair_markdown_table_writes_no_content_and_the_fill_is_its_own_action(client):
    # misaligned, a short row, an empty cell, a long row: the tiny model would write junk
    table = "| Name | Value |\n|---|--:|\n| alpha | |\n| b |\n| c | 3 | extra |\n"
    text = "# Results\n\n" + table + "\nDone.\n"
    doc = Doc(client, text, "markdown", ".md")
    offered = await actions_at(client, doc, text.index("alpha"))
    [repair] = titled(offered, "Repair Markdown table")
    [fill] = titled(offered, "Fill empty table cells (model)")
    assert repair.kind == types.CodeActionKind.QuickFix and fill.kind == types.CodeActionKind.RefactorRewrite
    repaired = doc.applied(await resolved_edits(client, doc, repair))
    assert table_cells(repaired) == table_cells(text)  # every cell kept, none invented
    again = doc.applied(await resolved_edits(client, doc, repair))
    assert again == repaired  # deterministic
    rows = [line for line in repaired.split("\n") if line.startswith("|")]
    assert len({len(row) for row in rows}) == 1, f"rows not aligned:\n{repaired}"


async def test_a_table_without_empty_cells_offers_no_model_fill(client):
    text = "| a | b |\n|---|---|\n| 1 | 2 |\n"
    doc = Doc(client, text, "markdown", ".md")
    offered = await actions_at(client, doc, 2)
    assert titled(offered, "Repair Markdown table") and not titled(offered, "Fill empty table cells")


async def test_aligned_markdown_table_offers_no_repair(client):
    text = "| a   | b   |\n| --- | --- |\n| 1   | 2   |\n"
    doc = Doc(client, text, "markdown", ".md")
    assert titled(await actions_at(client, doc, 2), "Repair Markdown table") == []


async def test_resolving_after_an_edit_is_refused_not_applied_to_the_wrong_text(client):
    text = "def area(width, height):\n    pass  # TODO compute the area\n"
    doc = Doc(client, text)
    [action] = titled(await actions_at(client, doc, text.index("pass")), "Fill in the middle")
    doc.edit(0, 0, "import math\n")
    with pytest.raises(JsonRpcException, match="changed"):
        await client.code_action_resolve_async(action)


async def test_repair_json_adds_the_keys_a_local_schema_requires(client, tmp_path):
    schema = {
        "type": "object",
        "required": ["name", "port"],
        "properties": {"port": {"type": "integer", "default": 8080}},
    }
    (tmp_path / "config.schema.json").write_text(json.dumps(schema))
    text = '{\n  "$schema": "config.schema.json",\n  "name": "web"\n}\n'
    doc = Doc(client, text, "json", path=tmp_path / "config.json")
    actions = titled(await actions_at(client, doc, 0), "Repair JSON")
    assert len(actions) == 1
    after = json.loads(doc.applied(await resolved_edits(client, doc, actions[0])))
    assert after == {"$schema": "config.schema.json", "name": "web", "port": 8080}


@pytest.mark.parametrize("client_name", ["neovim"])
async def test_without_resolve_support_the_action_is_a_command_that_applies_its_edit(client_name, tiny_model_dir):
    capabilities = client_capabilities(client_name)
    capabilities.text_document.code_action.resolve_support = None
    async with session(capabilities, model=tiny_model_dir) as client:
        # lsprotocol's converter reads any object with a "command" key as a Command; a CodeAction's
        # command is an object, a Command's is a string (as VS Code and Neovim tell them apart).
        converter = client.protocol._converter
        converter.register_structure_hook(
            Union[types.Command, types.CodeAction],
            lambda obj, _: converter.structure(
                obj, types.Command if isinstance(obj.get("command"), str) else types.CodeAction
            ),
        )
        applied: list[types.ApplyWorkspaceEditParams] = []

        @client.feature(types.WORKSPACE_APPLY_EDIT)
        def apply_edit(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
            applied.append(params)
            return types.ApplyWorkspaceEditResult(applied=True)

        text = '{"a": [1, 2,], "b": True}'
        doc = Doc(client, text, "json", ".json")
        [action] = titled(await actions_at(client, doc, 0), "Repair JSON")
        assert action.edit is None and action.data is None and action.command is not None
        result = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=action.command.command, arguments=action.command.arguments)
        )
        assert len(applied) == 1
        edits = doc.edits_of(applied[0].edit)
        assert json.loads(doc.applied(edits)) == {"a": [1, 2], "b": True}
        assert [e["newText"] for e in result["edits"]] == [e.new_text for e in edits]


async def test_without_a_model_fills_are_offered_disabled_with_the_reason(tmp_path):
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    async with session("visual_studio_code", model=str(broken), wait=FAILED) as client:
        text = "def area(width, height):\n    pass  # TODO compute the area\n"
        doc = Doc(client, text)
        [action] = titled(await actions_at(client, doc, text.index("pass")), "Fill in the middle")
        assert action.disabled is not None and "failed to load" in action.disabled.reason
        broken_json = Doc(client, "{'a': True,}", "json", ".json")  # the repairs need no model
        [repair] = titled(await actions_at(client, broken_json, 0), "Repair JSON")
        assert repair.disabled is None
