"""Issue 16 against the real server, over raw JSON-RPC on stdio and on TCP: framing errors
resynchronise (logged) and the next request is answered; invalid JSON, `"id": null`, stale
versions and a refused workspace/applyEdit get well-formed answers; injected engine faults
(DGEMMA_FAULT, test-only) end in an empty result or an error with a logged reason, and the
next request is served."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from lsp_support import FAST, REPO, server_env

pytestmark = pytest.mark.slow  # real server processes

PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS, REQUEST_FAILED = -32700, -32600, -32602, -32803
PY = (REPO / "tests" / "reliability.py").as_uri()
JSON_DOC = (REPO / "tests" / "reliability.json").as_uri()


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RawServer:
    """The real dgemma-ls over stdio or TCP, spoken to in raw bytes. A reader thread collects every
    framed message the server sends and answers its requests (workspace/applyEdit with `applied`)."""

    def __init__(self, model: str, log_path: Path, *, transport: str = "stdio", env: dict | None = None,
                 settings: dict | None = None):
        self.received: list[dict] = []
        self.applied = True
        self._new = threading.Condition()
        self._next_id = 0
        command = [sys.executable, "-m", "dgemma_ls", "--model", model, "--log-level", "INFO"]
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in close())
        if transport == "tcp":
            port = _free_port()
            command += ["--tcp", "--port", str(port)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                        env={**server_env(), **(env or {})})
        if transport == "tcp":
            for _ in range(600):
                try:
                    self.sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                raise AssertionError("the TCP server never listened")
            self.sock.settimeout(None)
            self._in, self._out = self.sock.makefile("rb"), self.sock
            self._write = self.sock.sendall
        else:
            self._in = self.process.stdout

            def write(data: bytes) -> None:
                self.process.stdin.write(data)
                self.process.stdin.flush()

            self._write = write
        threading.Thread(target=self._read, daemon=True).start()
        init = self.request("initialize", {"processId": None, "capabilities": {
            "workspace": {"applyEdit": True}, "textDocument": {"inlineCompletion": {}}},
            "initializationOptions": {"dgemma": {**FAST, **(settings or {})}}})
        assert "result" in init, init
        self.notify("initialized", {})
        self.wait_log("model ready")

    def _read(self) -> None:
        while True:
            length = None
            while (line := self._in.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if not line or length is None:
                return
            message = json.loads(self._in.read(length))
            if "method" in message and "id" in message:  # a request from the server
                result = {"applied": self.applied, "failureReason": "the user undid it"} \
                    if message["method"] == "workspace/applyEdit" else None
                self.send({"jsonrpc": "2.0", "id": message["id"], "result": result})
            with self._new:
                self.received.append(message)
                self._new.notify_all()

    def send_bytes(self, data: bytes) -> None:
        self._write(data)

    def send(self, message: dict) -> None:
        self._write(frame(json.dumps(message).encode()))

    def replies(self, msg_id) -> list[dict]:
        return [m for m in self.received if "method" not in m and "id" in m and m["id"] == msg_id]

    def reply(self, msg_id, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        with self._new:
            while not (found := self.replies(msg_id)):
                if not self._new.wait(max(0.0, deadline - time.monotonic())):
                    raise AssertionError(f"no reply to {msg_id!r} in {timeout} s; log: {self.log()[-2000:]}")
        return found[0]

    def request(self, method: str, params, timeout: float = 60) -> dict:
        self._next_id += 1
        msg_id = self._next_id
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return self.reply(msg_id, timeout)

    def notify(self, method: str, params) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never logged; log: {self.log()[-3000:]}")
            time.sleep(0.05)

    def alive_and_answering(self) -> None:
        """The server process lives and answers a valid request."""
        assert self.process.poll() is None
        reply = self.request("textDocument/codeAction", {
            "textDocument": {"uri": "file:///none.py"}, "range": RANGE, "context": {"diagnostics": []}}, timeout=30)
        assert "result" in reply, reply

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()


POSITION = {"line": 0, "character": 0}
RANGE = {"start": POSITION, "end": POSITION}


@pytest.fixture(scope="module", params=["stdio", "tcp"])
def server(request, tiny_model_dir, tmp_path_factory):
    raw = RawServer(tiny_model_dir, tmp_path_factory.mktemp("raw") / "server.log", transport=request.param)
    yield raw
    raw.close()


MESSAGE = json.dumps({"jsonrpc": "2.0", "method": "$/noise", "params": {}}).encode()
FRAMING_ERRORS = {
    "lowercase-header": b"content-length: %d\r\n\r\n%s" % (len(MESSAGE), MESSAGE),
    "bare-lf": b"Content-Length: %d\n\n%s" % (len(MESSAGE), MESSAGE),
    "length-too-small": b"Content-Length: %d\r\n\r\n%s" % (len(MESSAGE) - 7, MESSAGE),
    "length-too-large": b"Content-Length: %d\r\n\r\n%s" % (len(MESSAGE) + 40, MESSAGE),
    "length-not-a-number": b"Content-Length: twelve\r\n\r\n%s" % MESSAGE,
    "junk-between-messages": b"\x00\xff garbage \r\n\r\n",
}


@pytest.mark.parametrize("name", FRAMING_ERRORS)
def test_after_a_framing_error_the_next_request_is_answered(server, name):
    server.send_bytes(FRAMING_ERRORS[name])
    server.alive_and_answering()
    if name != "lowercase-header" and name != "bare-lf":
        server.wait_log("framing:", timeout=5)


def test_a_request_sent_with_a_too_large_length_and_nothing_after_it_is_answered(server):
    """The length runs past the end of what the client sent: the body is found when the bytes stop."""
    body = json.dumps({"jsonrpc": "2.0", "id": "long", "method": "textDocument/codeAction", "params": {
        "textDocument": {"uri": "file:///none.py"}, "range": RANGE, "context": {"diagnostics": []}}}).encode()
    server.send_bytes(b"Content-Length: %d\r\n\r\n%s" % (len(body) + 100, body))
    assert "result" in server.reply("long", timeout=15)


def test_invalid_json_is_a_parse_error_with_id_null(server):
    before = len(server.replies(None))
    server.send_bytes(frame(b'{"jsonrpc": "2.0", "id": 5, "method": '))
    deadline = time.monotonic() + 10
    while len(server.replies(None)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    error = server.replies(None)[-1]
    assert error["error"]["code"] == PARSE_ERROR and "id" in error and error["id"] is None
    server.alive_and_answering()


@pytest.mark.parametrize("method, params", [
    ("textDocument/hover", {}),  # params that do not parse
    ("dgemma/noSuchMethod", {}),  # an unknown method
    ("textDocument/codeAction", [1, 2]),  # params of the wrong type
])
def test_a_request_with_id_null_is_answered_with_id_null(server, method, params):
    before = len(server.replies(None))
    server.send({"jsonrpc": "2.0", "id": None, "method": method, "params": params})
    deadline = time.monotonic() + 10
    while len(server.replies(None)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    reply = server.replies(None)[-1]
    assert "id" in reply and reply["id"] is None and reply["error"]["code"] < 0
    server.alive_and_answering()


@pytest.mark.parametrize("method, params, code", [
    ("textDocument/inlineCompletion", {"textDocument": "x", "position": 3, "context": []}, INVALID_PARAMS),
    ("workspace/executeCommand", {"command": 7, "arguments": "x"}, INVALID_PARAMS),
    ("dgemma/noSuchMethod", {"a": 1}, -32601),
    ("initialize", {"processId": None, "capabilities": {}}, INVALID_REQUEST),
])
def test_wrong_params_unknown_methods_and_a_second_initialize_are_errors(server, method, params, code):
    reply = server.request(method, params)
    assert reply["error"]["code"] == code and "Traceback" not in json.dumps(reply)
    server.alive_and_answering()


def _open(server: RawServer, uri: str, text: str, version: int, language: str = "json") -> None:
    server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language, "version": version,
                                                            "text": text}})


def test_a_change_to_an_older_version_is_ignored_and_logged(server):
    _open(server, JSON_DOC, "{'a': 1,}", 5)
    server.notify("textDocument/didChange", {"textDocument": {"uri": JSON_DOC, "version": 7},
                                             "contentChanges": [{"text": "{'b': 2,}"}]})
    server.notify("textDocument/didChange", {"textDocument": {"uri": JSON_DOC, "version": 6},
                                             "contentChanges": [{"text": "{'stale': 0,}"}]})
    reply = server.request("workspace/executeCommand",
                           {"command": "dgemma.repairJson", "arguments": [{"uri": JSON_DOC, "version": 7}]})
    assert reply["result"]["version"] == 7
    assert "".join(e["newText"] for e in reply["result"]["edits"]).count("stale") == 0
    server.wait_log("to version 6 ignored", timeout=5)


def test_a_command_whose_edit_the_client_refused_reports_the_failure(server):
    _open(server, JSON_DOC + "?refused", "{'a': True,}", 1)
    server.applied = False
    try:
        reply = server.request("workspace/executeCommand", {
            "command": "dgemma.repairJson", "arguments": [{"uri": JSON_DOC + "?refused", "apply": True}]})
    finally:
        server.applied = True
    assert reply["error"]["code"] == REQUEST_FAILED and "the user undid it" in reply["error"]["message"]


# -- injected engine faults (DGEMMA_FAULT is a test-only switch read once at start) ----------------

def _complete(server: RawServer, uri: str, timeout: float = 60) -> dict:
    return server.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": 1, "character": 4},
        "context": {"triggerKind": 1}}, timeout=timeout)


@pytest.mark.parametrize("fault", ["raise", "oom"])
def test_an_engine_fault_gives_an_empty_result_with_a_logged_reason(fault, tiny_model_dir, tmp_path):
    server = RawServer(tiny_model_dir, tmp_path / "server.log", env={"DGEMMA_FAULT": fault})
    try:
        _open(server, PY, "def f():\n    ", 1, "python")
        assert _complete(server, PY)["result"] is None
        assert any("completion failed" in m["params"]["message"] for m in server.received
                   if m.get("method") == "window/logMessage")
        reply = server.request("workspace/executeCommand",
                               {"command": "dgemma.fill", "arguments": [{"uri": PY, "position": {"line": 1,
                                                                                                  "character": 4}}]})
        assert reply["error"]["code"] == REQUEST_FAILED and "DGEMMA_FAULT" in reply["error"]["message"]
        assert "Traceback" not in json.dumps(reply)
        server.alive_and_answering()
    finally:
        server.close()


def test_a_hung_engine_answers_at_the_deadline_and_serves_the_next_request(tiny_model_dir, tmp_path):
    server = RawServer(tiny_model_dir, tmp_path / "server.log", env={"DGEMMA_FAULT": "hang"},
                       settings={"requestTimeoutMs": 1000})
    try:
        _open(server, PY, "def f():\n    ", 1, "python")
        started = time.monotonic()
        assert _complete(server, PY, timeout=10)["result"] is None
        assert time.monotonic() - started < 5  # the deadline, not the hang (8 s)
        server.wait_log("did not answer", timeout=5)
        server.alive_and_answering()
        time.sleep(8)  # the hang ends; the model thread serves again
        server.notify("textDocument/didChange", {"textDocument": {"uri": PY, "version": 2},
                                                 "contentChanges": [{"text": "def g():\n    "}]})
        assert "result" in _complete(server, PY, timeout=30)
        assert server.log().count("did not answer") == 1  # only the hung request
    finally:
        server.close()


def test_the_model_file_removed_after_start_changes_nothing(tiny_model_dir, tmp_path):
    """The weights are read at load (safetensors, memory-mapped: the inode lives while mapped)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    server = RawServer(str(model), tmp_path / "server.log")
    try:
        _open(server, PY, "def f():\n    ", 1, "python")
        first = _complete(server, PY)
        shutil.rmtree(model)
        server.notify("textDocument/didChange", {"textDocument": {"uri": PY, "version": 2},
                                                 "contentChanges": [{"text": "def f():\n    "}]})
        again = _complete(server, PY)
        assert "result" in first and "result" in again
        server.alive_and_answering()
    finally:
        server.close()


def test_an_unpaired_surrogate_blocks_the_model_with_a_logged_reason(server):
    """JSON can carry a lone "\\ud800"; the tokenizer raises TypeError on it (found by the fuzz)."""
    uri = PY + "?surrogate"
    _open(server, uri, "def f():\n    \ud800", 1, "python")
    assert _complete(server, uri)["result"] is None
    server.wait_log("unpaired UTF-16 surrogate", timeout=5)
    assert "completion failed" not in server.log()
