"""Generated LSP inputs against the real server (hypothesis, bounded): positions and ranges out of
bounds, surrogate pairs, CRLF and lone CR, NUL bytes, unknown language ids, didChange storms with
out-of-order versions, tampered resolve data, 1 MB lines and 5 MB documents. Every request gets
exactly one well-formed response, none carries a traceback, and the next request is answered.
(The repairs' own invariants are properties in test_repair_json.py / test_repair_markdown.py.)"""

from __future__ import annotations

import itertools
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reliability import RawServer

pytestmark = pytest.mark.slow  # a real server process

_uris = itertools.count()
PIECES = list("ab (){}[],:;\"'|-\t") + ["\r\n", "\r", "\n", "\x00", "😀", "é", "\u2028", "def f():\n    "]
TEXT = st.lists(st.sampled_from(PIECES), max_size=120).map("".join)
LANGUAGES = st.sampled_from(["python", "json", "markdown", "typescript", "cobol-85", "", "😀"])
NUMBER = st.one_of(st.integers(-3, 40), st.sampled_from([2**31 - 1, 2**31, -(2**31)]))
POSITION = st.fixed_dictionaries({"line": NUMBER, "character": NUMBER})
RANGE = st.fixed_dictionaries({"start": POSITION, "end": POSITION})
CHANGE = st.one_of(
    st.fixed_dictionaries({"text": TEXT}),
    st.fixed_dictionaries({"range": RANGE, "text": TEXT}),
)
RESOLVE_DATA = st.one_of(
    st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3),
    st.fixed_dictionaries({}, optional={"uri": st.one_of(st.text(max_size=5), st.integers()),
                                        "version": st.one_of(st.integers(), st.text(max_size=3), st.none()),
                                        "action": st.sampled_from(["dgemma.fill", "dgemma.repairJson", "x", 3]),
                                        "start": st.one_of(POSITION, st.integers()), "end": POSITION}),
)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    raw = RawServer(tiny_model_dir, tmp_path_factory.mktemp("props") / "server.log")
    yield raw
    raw.close()


def check_answered(server: RawServer, msg_id: int) -> dict:
    """Exactly one well-formed response to msg_id, without a traceback."""
    reply = server.reply(msg_id, timeout=120)
    time.sleep(0.01)
    replies = server.replies(msg_id)
    assert len(replies) == 1, replies
    assert reply["jsonrpc"] == "2.0" and ("result" in reply) != ("error" in reply), reply
    if "error" in reply:
        assert isinstance(reply["error"]["code"], int) and isinstance(reply["error"]["message"], str)
    assert "Traceback" not in json.dumps(reply)
    return reply


def send_request(server: RawServer, method: str, params) -> int:
    server._next_id += 1
    server.send({"jsonrpc": "2.0", "id": server._next_id, "method": method, "params": params})
    return server._next_id


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=TEXT, language=LANGUAGES, changes=st.lists(st.tuples(st.integers(-2, 12), CHANGE), max_size=8),
       positions=st.lists(POSITION, min_size=1, max_size=3), ranges=st.lists(RANGE, min_size=1, max_size=2),
       data=RESOLVE_DATA)
def test_every_request_on_generated_input_gets_one_well_formed_answer(server, text, language, changes, positions,
                                                                      ranges, data):
    uri = f"file:///generated/{next(_uris)}.txt"
    server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language, "version": 1,
                                                            "text": text}})
    for version, change in changes:  # a storm, versions out of order
        server.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                                 "contentChanges": [change]})
    ids = []
    for position in positions:
        ids.append(send_request(server, "textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": position, "context": {"triggerKind": 1}}))
    for span in ranges:
        ids.append(send_request(server, "textDocument/codeAction", {
            "textDocument": {"uri": uri}, "range": span, "context": {"diagnostics": []}}))
        ids.append(send_request(server, "workspace/executeCommand", {
            "command": "dgemma.repairJson", "arguments": [{"uri": uri, "range": span}]}))
    ids.append(send_request(server, "codeAction/resolve", {"title": "Fill in the middle", "data": data}))
    for msg_id in ids:
        check_answered(server, msg_id)
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    server.alive_and_answering()


@pytest.mark.parametrize("shape", ["1MB-line", "5MB-document"])
def test_huge_lines_and_documents_are_answered(server, shape):
    uri = f"file:///generated/{shape}.py"
    text = "x = '" + "a" * 1_000_000 + "'\n" if shape == "1MB-line" else "def f(a):\n    return a\n" * 210_000
    server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                            "text": text}})
    server.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
        {"range": {"start": {"line": 0, "character": 500_000}, "end": {"line": 0, "character": 500_001}},
         "text": "😀"}]})
    for method, params in [
        ("textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 999_999},
                                           "context": {"triggerKind": 1}}),
        ("textDocument/codeAction", {"textDocument": {"uri": uri}, "range": {"start": {"line": 0, "character": 3},
                                     "end": {"line": 0, "character": 3}}, "context": {"diagnostics": []}}),
    ]:
        check_answered(server, send_request(server, method, params))
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    server.alive_and_answering()
