"""Fuzz and soak the real `dgemma-ls` over stdio (issue 16), speaking raw framed JSON-RPC so
that malformed messages can be sent at all.

    python -m benchmarks.lsp_fuzz                      # ~2,000 messages, 1,000 completions (~10 min)
    python -m benchmarks.lsp_fuzz --quick --out /tmp/lsp_fuzz.json     # a few hundred (~1 min)

Phases: (1) fuzz: generated messages (malformed and mistyped requests, bad settings, huge,
binary and deeply nested documents, big tables, stale versions, tampered resolve data) sent
with a few requests in flight; (2) soak: inline completions on a document edited keystroke by
keystroke, ~20 % of them cancelled; (3) completion latency with and without a long repair
running on another document, both measured in this run; (4) framing errors, each on a fresh
server: is the next valid request answered? Reported: requests unanswered, crashes,
`window/showMessage` errors, tracebacks sent to the client, stale edits (an edit computed for
a version other than the one it claims or applies to), resident memory over time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.training.provenance import stamp

REPO = Path(__file__).resolve().parents[1]
# compile stays off so the CPU measures requests, not inductor; the soak and the latency phase run
# with the server's default budgets.
SETTINGS = {"compile": False}
# The fuzz asks for small prompts and middles: with the defaults, 90 % of the server's time went
# to encoding prompts (45 of 51 s for 1,000 messages, 39 of them completions), mostly prompts of
# 16k tokens cut from the multi-MB line (context.py cuts a huge line to 16 characters per token
# of budget, and the tiny tokenizer has about one character per token). A short prompt checks
# the same protocol paths: every message kind still reaches the model, and the fuzzed settings
# still set each budget to its extremes.
FUZZ_SETTINGS = {**SETTINGS, "prefixTokens": 64, "suffixTokens": 16, "maxMiddleTokens": 16, "steps": 8}
EXTENSIONS = {"python": "py", "json": "json", "markdown": "md", "typescript": "ts"}
LINE_BREAK = re.compile(r"\r\n|\r|\n")  # LSP's line breaks
COMMANDS = ("dgemma.fill", "dgemma.repairJson", "dgemma.repairMarkdownTables")
CAPABILITIES = {
    "textDocument": {
        "inlineCompletion": {"dynamicRegistration": False},
        "codeAction": {
            "codeActionLiteralSupport": {
                "codeActionKind": {"valueSet": ["", "quickfix", "refactor", "refactor.rewrite"]}
            },
            "resolveSupport": {"properties": ["edit"]},
            "dataSupport": True,
        },
        "synchronization": {"didSave": False},
    },
    "workspace": {"applyEdit": True, "workspaceEdit": {"documentChanges": True}, "configuration": True},
    "window": {"workDoneProgress": True},
}


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def encode(message) -> bytes:
    return json.dumps(message, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


class Server:
    """One `dgemma-ls` subprocess and the client half of the conversation: every request with
    an id waits for exactly one response; the server's own requests are answered; what the
    server shows or logs is counted."""

    def __init__(self, settings: dict, log_path: Path):
        self.settings = dict(settings)
        self.log_path = log_path
        self.pending: dict = {}  # id -> (method, sent_at, future)
        self.next_id = 0
        self.counts = collections.Counter()
        self.error_codes = collections.Counter()
        self.error_messages = collections.Counter()  # (code, message) of error responses
        self.shown_errors = collections.Counter()  # window/showMessage type 1, by message
        self.tracebacks: list[str] = []
        self.stale: list[str] = []
        self.malformed_replies: list[str] = []
        self.unmatched: list[str] = []  # responses for no pending request: late (after the drain) or unknown ids
        self.versions: dict[str, int] = {}  # the client's version of each open document
        self.texts: dict[tuple[str, int], str] = {}  # (uri, version) -> text, for checking edits
        self.logs: list[tuple[float, str]] = []  # (when, message) of logMessage, showMessage, $/logTrace
        self.ready = asyncio.Event()
        self.load_failed = ""

    async def start(self, model: str | None) -> None:
        command = [sys.executable, "-m", "dgemma_ls", "--log-level", "INFO"]
        if model:
            command += ["--model", model]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        env.setdefault("OMP_NUM_THREADS", "1")
        self.log = self.log_path.open("wb")  # the server's stderr, closed in stop()
        self.proc = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env, limit=1 << 26
        )
        self.reader = asyncio.create_task(self.read_loop())

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            return None
        return None

    # -- writing -----------------------------------------------------------------------------

    async def write(self, data: bytes) -> bool:
        if not self.alive:
            return False
        try:
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()
        except (ConnectionError, RuntimeError):
            return False
        return True

    def new_id(self):
        self.next_id += 1
        return self.next_id

    async def request(self, method: str, params, *, id=None, raw: dict | None = None) -> asyncio.Future:
        """Send a request (or `raw`, a hand-made message carrying `id`); the future resolves
        to the response message."""
        id = self.new_id() if id is None else id
        message = raw if raw is not None else {"jsonrpc": "2.0", "id": id, "method": method, "params": params}
        future = asyncio.get_running_loop().create_future()
        self.pending[json.dumps(id)] = (method, time.monotonic(), future)
        self.counts["requests"] += 1
        if not await self.write(frame(encode(message))):
            future.set_result(None)
        return future

    async def notify(self, method: str, params) -> None:
        self.counts["notifications"] += 1
        await self.write(frame(encode({"jsonrpc": "2.0", "method": method, "params": params})))

    async def call(self, method: str, params, timeout: float = 120):
        future = await self.request(method, params)
        return await asyncio.wait_for(future, timeout)

    # -- reading -----------------------------------------------------------------------------

    async def read_loop(self) -> None:
        stream = self.proc.stdout
        while True:
            try:
                header = await stream.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                for _, _, future in self.pending.values():  # the server is gone: nothing more will come
                    if not future.done():
                        future.set_result(None)
                return
            length = None
            for line in header.decode("ascii", errors="replace").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length is None:
                self.malformed_replies.append(f"no Content-Length in {header[:80]!r}")
                continue
            body = await stream.readexactly(length)
            try:
                message = json.loads(body)
            except ValueError:
                self.malformed_replies.append(f"invalid JSON from the server: {body[:80]!r}")
                continue
            try:
                await self.dispatch(message)
            except Exception as error:  # noqa: BLE001 (the fuzz client must keep reading whatever comes)
                self.malformed_replies.append(f"unexpected message shape {error!r}: {body[:120]!r}")

    async def dispatch(self, message: dict) -> None:
        if "method" in message and "id" in message:
            await self.answer_server_request(message)
        elif "method" in message:
            self.on_notification(message["method"], message.get("params") or {})
        else:
            self.on_response(message)

    def on_response(self, message: dict) -> None:
        self.counts["responses"] += 1
        if message.get("jsonrpc") != "2.0" or ("result" in message) == ("error" in message) or "id" not in message:
            self.malformed_replies.append(json.dumps(message)[:200])
        error = message.get("error")
        if error is not None:
            self.error_codes[error.get("code")] += 1
            self.error_messages[f"{error.get('code')} {str(error.get('message'))[:100]}"] += 1
            text = json.dumps(error)
            if "Traceback" in text or 'File "' in text:
                self.tracebacks.append(text[:300])
        if message.get("id") is None:  # a parse error, or a request whose id was null
            self.counts["responses with id null"] += 1
            return
        key = json.dumps(message.get("id"))
        entry = self.pending.pop(key, None)
        if entry is None:
            self.counts["responses without a pending request"] += 1
            self.unmatched.append(json.dumps(message)[:200])
            return
        if not entry[2].done():
            entry[2].set_result(message)

    def on_notification(self, method: str, params: dict) -> None:
        self.counts[f"notification {method}"] += 1
        message = str(params.get("message", "")) if isinstance(params, dict) else ""
        if method == "window/showMessage" and params.get("type") == 1:
            self.shown_errors[message[:160]] += 1
        if method in ("window/logMessage", "window/showMessage", "$/logTrace"):
            self.logs.append((time.monotonic(), message[:300]))
            if "Traceback" in message:
                self.tracebacks.append(message[:300])
            if "model ready" in message:
                self.ready.set()
            if "could not load" in message:
                self.load_failed = message
                self.ready.set()

    async def answer_server_request(self, message: dict) -> None:
        method, params = message["method"], message.get("params") or {}
        self.counts[f"server request {method}"] += 1
        result = None
        if method == "workspace/configuration":
            result = [
                {**self.settings} if item.get("section") == "dgemma" else None for item in params.get("items", [])
            ]
        elif method == "workspace/applyEdit":
            self.check_apply_edit(params.get("edit") or {})
            result = {"applied": False, "failureReason": "the fuzz client never applies edits"}
        await self.write(frame(encode({"jsonrpc": "2.0", "id": message["id"], "result": result})))

    # -- documents and stale edits --------------------------------------------------------

    def opened(self, uri: str, version: int, text: str) -> None:
        self.versions[uri] = version
        self.texts[(uri, version)] = text
        for key in [k for k in self.texts if k[0] == uri and k[1] < version - 50]:
            del self.texts[key]

    def check_apply_edit(self, edit: dict) -> None:
        for change in edit.get("documentChanges") or []:
            document = change.get("textDocument", {})
            uri, version = document.get("uri"), document.get("version")
            if version is not None and version != self.versions.get(uri):
                self.stale.append(f"applyEdit for {uri} version {version}, the client is at {self.versions.get(uri)}")

    def check_command_result(self, uri: str, sent_version: int, result) -> None:
        """A command's edits claim a version: it must be the one the request was made for (the
        server answers ContentModified when the document moved on), and they must fit its text."""
        if not isinstance(result, dict) or not result.get("edits"):
            return
        if result.get("version") != sent_version:
            self.stale.append(f"{uri}: edits for version {result.get('version')}, requested at {sent_version}")
            return
        text = self.texts.get((uri, sent_version))
        if text is None:
            return
        lines = LINE_BREAK.split(text)
        for edit in result["edits"]:
            for end in ("start", "end"):
                line, character = edit["range"][end]["line"], edit["range"][end]["character"]
                if line >= len(lines) or character > len(lines[line].encode("utf-16-le", "surrogatepass")) // 2:
                    self.stale.append(f"{uri}: edit range {edit['range']} outside version {sent_version}")
                    return

    # -- lifecycle ---------------------------------------------------------------------------

    async def initialize(self) -> dict:
        response = await self.call(
            "initialize",
            {
                "processId": os.getpid(),
                "rootUri": REPO.as_uri(),
                "capabilities": CAPABILITIES,
                "initializationOptions": {"dgemma": self.settings},
                "trace": "verbose",  # $/logTrace says when model work starts and stops
            },
        )
        if response is None:
            raise RuntimeError(f"the server exited during initialize; its log: {self.log_path}")
        await self.notify("initialized", {})
        return response

    async def stop(self, timeout: float = 30) -> dict:
        """shutdown + exit; how the process ended."""
        outcome = {"alive_before_shutdown": self.alive}
        if self.alive:
            try:
                response = await self.call("shutdown", None, timeout=timeout)
                outcome["shutdown_answered"] = response is not None
            except asyncio.TimeoutError:
                outcome["shutdown_answered"] = False
            await self.notify("exit", None)
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        try:
            outcome["exit_code"] = await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            outcome["exit_code"] = "killed after no exit"
        self.reader.cancel()
        self.log.close()
        return outcome


# -- generated content ----------------------------------------------------------------------


def python_text(rng: random.Random, lines: int) -> str:
    body = []
    for i in range(lines):
        kind = rng.random()
        if kind < 0.2:
            body.append(f"def f{i}(a, b):\n    ...\n")
        elif kind < 0.3:
            body.append(f"def g{i}():\n    pass  # TODO: compute {i}\n")
        else:
            body.append(f"x{i} = [{i}, {i + 1}, 'ü\U0001f600']\n")
    return "".join(body)


def big_table(rows: int, blanks: int, long_row: int | None) -> str:
    lines = ["| id | name | qty |", "|---|---|--:|"]
    for i in range(rows):
        lines.append(f"| {i} | {'' if i < blanks else f'item {i}'} | {i * 3} |")
    if long_row is not None:
        lines[2 + long_row] = "| " + " | ".join(f"c{k}" for k in range(12)) + " |"
    return "# Table\n\n" + "\n".join(lines) + "\n"


def documents(rng: random.Random, huge_mb: float) -> list[tuple[str, str]]:
    """(languageId, text) of every kind the fuzz opens."""
    binary = "".join(
        chr(rng.choice([0, 1, 7, 8, 27, 0x7F, 0xFFFD, 0x1F600, rng.randrange(32, 0x2FFF)])) for _ in range(4000)
    )
    return [
        ("python", python_text(rng, 40)),
        ("python", "x = " + "[" * 1200 + "]" * 1200 + "\n"),
        ("json", "[" * 10_000 + "]" * 10_000),
        ("json", '{"a": 1 "b": [1, 2,, "c": True, // note\n "d": None'),
        ("markdown", big_table(2000, 0, 500)),
        ("markdown", big_table(300, 40, None)),
        ("markdown", "| a | b |\n|---|\n| 1 |\n| 2 | 3 | 4 |\n"),
        ("plaintext", binary),
        ("python", binary),
        ("json", "\x00" * 1000 + '{"a": 1'),
        ("typescript", "function f() {}\n" * 200 + "f(" * 1500 + ")" * 1500 + ";\n"),
        ("python", "def h():\r\n    ...\r\n\rx = 1\r"),  # CRLF and lone CR
        ("python", "x = '\ud800'  # a lone surrogate: invalid UTF-8 on the wire\n"),
        ("cobol", "IDENTIFICATION DIVISION.\n"),
        ("python", "# huge\n" + "y = 1  # " + "z" * 1000 + "\n" * 1),
        ("python", python_text(rng, int(huge_mb * 1e6 / 30))),  # several MB
        ("markdown", "x" * int(huge_mb * 1e6) + "\n| a |\n"),  # a multi-MB line
    ]


def _order(position) -> tuple[int, int] | None:
    """A well-formed position as a sortable pair; None for the deliberately broken ones."""
    if (
        isinstance(position, dict)
        and isinstance(position.get("line"), int)
        and isinstance(position.get("character"), int)
    ):
        return position["line"], position["character"]
    return None


class Fuzzer:
    def __init__(self, server: Server, rng: random.Random, huge_mb: float):
        self.server, self.rng = server, rng
        self.docs = documents(rng, huge_mb)
        self.open: dict[str, tuple[str, str]] = {}  # uri -> (languageId, text)
        self.actions: list[dict] = []  # code actions the server offered, for resolve (tampered or not)
        self.inflight: dict[asyncio.Future, float] = {}  # future -> when sent
        self.patience = 10.0
        self.sent = collections.Counter()

    def position(self, uri: str | None = None) -> dict:
        rng = self.rng
        if rng.random() < 0.1:
            return rng.choice(
                [
                    {"line": -1, "character": 0},
                    {"line": 2**40, "character": 2**40},
                    {"line": "1", "character": 0},
                    {"line": 0},
                    {},
                    None,
                    [0, 0],
                ]
            )
        lines = self.open.get(uri, ("", "x"))[1].count("\n") + 1 if uri else 10
        return {"line": rng.randrange(0, lines + 3), "character": rng.randrange(0, 120)}

    def range(self, uri: str | None) -> dict:
        a, b = self.position(uri), self.position(uri)
        if _order(a) and _order(b) and _order(a) > _order(b) and self.rng.random() < 0.8:
            a, b = b, a
        return {"start": a, "end": b}

    def uri(self) -> str:
        if self.open and self.rng.random() < 0.9:
            return self.rng.choice(sorted(self.open))
        return f"file:///fuzz/unopened{self.rng.randrange(5)}.py"

    async def send_request(self, method: str, params, *, raw: dict | None = None, id=None, check=None) -> None:
        # A few requests in flight, as an editor has; one never answered stops blocking after
        # `patience` seconds (it is still counted as unanswered at the end).
        while len(self.inflight) >= 8:
            await asyncio.wait(list(self.inflight), timeout=1, return_when=asyncio.FIRST_COMPLETED)
            now = time.monotonic()
            self.inflight = {f: t for f, t in self.inflight.items() if not f.done() and now - t < self.patience}
        self.sent[method] += 1
        future = await self.server.request(method, params, raw=raw, id=id)
        if check is not None:
            future.add_done_callback(lambda f: not f.cancelled() and f.result() is not None and check(f.result()))
        self.inflight[future] = time.monotonic()

    async def step(self) -> None:
        rng, server = self.rng, self.server
        kind = rng.choices(
            ["open", "change", "close", "inline", "action", "resolve", "command", "settings", "malformed", "cancel"],
            weights=[4, 10, 2, 12, 12, 4, 6, 3, 20, 3],
        )[0]
        uri = self.uri()
        if kind == "open":
            language, text = rng.choice(self.docs)
            uri = f"file:///fuzz/doc{len(self.open) + rng.randrange(1000)}.{EXTENSIONS.get(language, 'txt')}"
            version = rng.choice([1, 1, 1, 0, -5])
            self.open[uri] = (language, text)
            # a reopened URI starts its versions again: an earlier open's texts no longer hold
            # (the 100,000-message run counted an edit "outside version 1" against such a text)
            for key in [key for key in server.texts if key[0] == uri]:
                del server.texts[key]
            server.opened(uri, version, text)
            self.sent["didOpen"] += 1
            await server.notify(
                "textDocument/didOpen",
                {"textDocument": {"uri": uri, "languageId": language, "version": version, "text": text}},
            )
        elif kind == "change":
            current = server.versions.get(uri, 0)
            version = rng.choice([current + 1] * 6 + [current, current - 3, "abc", None])
            change = {
                "range": self.range(uri),
                "text": rng.choice(["a", "\n", "", "]]]", "|", "\x00", "é\U0001f600", "    pass  # TODO x\n"]),
            }
            if rng.random() < 0.1:
                change = {"text": rng.choice(self.docs)[1][:20000]}
            if isinstance(version, int) and version > current and uri in self.open:
                server.versions[uri] = version  # the client's view; the text is no longer tracked exactly
                server.texts.pop((uri, version), None)
            self.sent["didChange"] += 1
            await server.notify(
                "textDocument/didChange", {"textDocument": {"uri": uri, "version": version}, "contentChanges": [change]}
            )
        elif kind == "close":
            self.open.pop(uri, None)
            self.sent["didClose"] += 1
            await server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        elif kind == "inline":
            params = {
                "textDocument": {"uri": uri},
                "position": self.position(uri),
                "context": {"triggerKind": rng.choice([1, 2, 2, 2, 99])},
            }
            if rng.random() < 0.1:
                del params["context"]
            await self.send_request("textDocument/inlineCompletion", params)
        elif kind == "action":
            params = {
                "textDocument": {"uri": uri},
                "range": self.range(uri),
                "context": {
                    "diagnostics": [],
                    "only": rng.choice([None, ["quickfix"], ["refactor.rewrite"], ["source"]]),
                },
            }
            if rng.random() < 0.1:
                del params["context"]

            def keep(response: dict) -> None:
                if isinstance(response.get("result"), list):
                    self.actions.extend(a for a in response["result"] if isinstance(a, dict) and a.get("data"))
                    del self.actions[:-50]

            await self.send_request("textDocument/codeAction", params, check=keep)
        elif kind == "resolve":
            action = dict(rng.choice(self.actions)) if self.actions else {"title": "x", "data": {}}
            data = dict(action.get("data") or {})
            tamper = rng.choice(["none", "none", "start", "version", "action", "uri", "type"])
            if tamper == "start":
                data["start"] = rng.choice([-1, 10**9, "a", None])
            elif tamper == "version":
                data["version"] = rng.choice(["abc", -1, 10**9])
            elif tamper == "action":
                data["action"] = "dgemma.nothing"
            elif tamper == "uri":
                data["uri"] = 42
            elif tamper == "type":
                data = [data]
            action["data"] = data
            await self.send_request("codeAction/resolve", action)
        elif kind == "command":
            command = rng.choice(COMMANDS + ("dgemma.unknown",))
            version = server.versions.get(uri)
            arg = {"uri": uri, "version": rng.choice([version, version, None, "abc", (version or 0) - 1])}
            if command == "dgemma.fill" or rng.random() < 0.3:
                arg["range"] = self.range(uri)
            args = rng.choice([[arg], [arg], [arg], [], [arg, arg], ["x"], None])
            sent_version = arg["version"]

            def check(response: dict, uri=uri, sent_version=sent_version) -> None:
                if isinstance(sent_version, int):
                    server.check_command_result(uri, sent_version, response.get("result"))

            params = {"command": command} if args is None else {"command": command, "arguments": args}
            await self.send_request("workspace/executeCommand", params, check=check)
        elif kind == "settings":
            key = rng.choice(
                [
                    "steps",
                    "entropyBound",
                    "maxMiddleTokens",
                    "prefixTokens",
                    "suffixTokens",
                    "enabledLanguages",
                    "debounceMs",
                    "model",
                    "device",
                    "dtype",
                    "quantize",
                    "bogus",
                ]
            )
            value = rng.choice([-1, 0, 10**9, "x", None, [], {"a": 1}, 3.5, True])
            dgemma = {**FUZZ_SETTINGS, key: value}
            server.settings = dgemma
            self.sent["didChangeConfiguration"] += 1
            await server.notify(
                "workspace/didChangeConfiguration", {"settings": rng.choice([{"dgemma": dgemma}, dgemma, None, [1]])}
            )
        elif kind == "cancel":
            self.sent["$/cancelRequest"] += 1
            await server.notify("$/cancelRequest", {"id": rng.choice([server.next_id, server.next_id - 1, "x", None])})
        else:
            await self.malformed(uri)

    async def malformed(self, uri: str) -> None:
        rng, server = self.rng, self.server
        shape = rng.choice(
            [
                "no params",
                "null params",
                "wrong types",
                "jsonrpc 1.0",
                "null id",
                "unknown method",
                "unknown notification",
                "invalid json",
                "empty object",
                "array",
                "hover {}",
                "string id",
                "second initialize",
                "didChange unopened",
                "didOpen bad",
            ]
        )
        id = server.new_id()
        method = rng.choice(
            [
                "textDocument/inlineCompletion",
                "textDocument/codeAction",
                "workspace/executeCommand",
                "codeAction/resolve",
                "textDocument/hover",
                "textDocument/completion",
            ]
        )
        self.sent[f"malformed: {shape}"] += 1
        if shape == "no params":
            await self.send_request(method, None, raw={"jsonrpc": "2.0", "id": id, "method": method}, id=id)
        elif shape == "null params":
            await self.send_request(method, None, id=id)
        elif shape == "wrong types":
            params = rng.choice(
                [
                    {"textDocument": 5, "position": "x"},
                    {"textDocument": {"uri": None}},
                    [1, 2],
                    "s",
                    7,
                    {"textDocument": {"uri": uri}, "range": {"start": 1, "end": 2}, "context": {}},
                ]
            )
            await self.send_request(method, params, id=id)
        elif shape == "jsonrpc 1.0":
            await self.send_request(method, {}, raw={"jsonrpc": "1.0", "id": id, "method": method, "params": {}}, id=id)
        elif shape == "string id":
            sid = f"s{id}"
            await self.send_request(
                method,
                {"textDocument": {"uri": uri}, "position": self.position(uri), "context": {"triggerKind": 1}},
                id=sid,
            )
        elif shape == "null id":
            # An error response to it must carry "id": null; it cannot be told apart from others.
            await server.write(frame(encode({"jsonrpc": "2.0", "id": None, "method": method, "params": None})))
        elif shape == "unknown method":
            await self.send_request("dgemma/doesNotExist", {"a": 1}, id=id)
        elif shape == "unknown notification":
            await server.notify(rng.choice(["dgemma/nothing", "$/nothing", "textDocument/didSave"]), {"x": [1]})
        elif shape == "invalid json":
            await server.write(
                frame(rng.choice([b"{", b'{"jsonrpc": "2.0", "id": 1,', b"\xff\xfe", b"nul\x00l", b"[]"]))
            )
        elif shape == "empty object":
            await server.write(frame(b"{}"))
        elif shape == "array":
            await server.write(frame(encode([{"jsonrpc": "2.0", "method": "initialized", "params": {}}])))
        elif shape == "hover {}":
            await self.send_request("textDocument/hover", {}, id=id)
        elif shape == "second initialize":
            await self.send_request("initialize", {"processId": None, "rootUri": None, "capabilities": {}}, id=id)
        elif shape == "didChange unopened":
            await server.notify(
                "textDocument/didChange",
                {"textDocument": {"uri": "file:///never/opened.py", "version": 2}, "contentChanges": [{"text": "x"}]},
            )
        else:
            await server.notify(
                "textDocument/didOpen", {"textDocument": {"uri": 5, "languageId": None, "version": "1", "text": 3}}
            )


# -- phases -------------------------------------------------------------------------------


async def fuzz(
    server: Server, rng: random.Random, messages: int, huge_mb: float, drain: float, seconds: float | None = None
) -> dict:
    """`messages` generated messages, fewer if `seconds` run out first (the report says how many)."""
    fuzzer = Fuzzer(server, rng, huge_mb)
    started = time.monotonic()
    rss = []
    generated = 0
    for i in range(messages):
        if not server.alive or (seconds is not None and time.monotonic() - started > seconds):
            break
        await fuzzer.step()
        generated += 1
        if i % 100 == 0:
            rss.append((i, server.rss_mb()))
        if i % 10_000 == 0 and i:
            print(f"fuzz: {i} messages, {time.monotonic() - started:.0f} s", flush=True)
    sent_requests = server.counts["requests"]
    deadline = time.monotonic() + drain
    while server.pending and time.monotonic() < deadline and server.alive:
        await asyncio.sleep(0.2)
    unanswered = collections.Counter(method for method, _, _ in server.pending.values())
    for key in [k for k in server.pending]:  # forget them: the later phases count their own
        server.pending.pop(key)[2].cancel()
    for uri in list(fuzzer.open):
        await server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    server.settings = dict(SETTINGS)
    await server.notify("workspace/didChangeConfiguration", {"settings": {"dgemma": server.settings}})
    await asyncio.sleep(3)  # let the server drop what the closed documents held
    rss.append(("closed", server.rss_mb()))
    return {
        "messages": generated,
        "messages_asked": messages,
        "sent": dict(sorted(fuzzer.sent.items())),
        "requests_with_id": sent_requests,
        "unanswered": sum(unanswered.values()),
        "unanswered_by_method": dict(unanswered),
        "seconds": round(time.monotonic() - started, 1),
        "rss_mb": rss,
    }


def typing_script() -> str:
    """What the soak types: real code from this repository, character by character."""
    return (REPO / "dgemma_ls" / "textedits.py").read_text()


class Typist:
    """A document the client edits keystroke by keystroke, with its own version and text."""

    def __init__(self, server: Server, uri: str, head: str):
        self.server, self.uri, self.text, self.version = server, uri, head, 1
        self.script, self.next = typing_script(), 0

    async def open(self) -> None:
        self.server.opened(self.uri, self.version, self.text)
        await self.server.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": self.uri, "languageId": "python", "version": 1, "text": self.text}},
        )

    def cursor(self) -> dict:
        lines = self.text.split("\n")
        return {"line": len(lines) - 1, "character": len(lines[-1].encode("utf-16-le")) // 2}

    async def keystroke(self, rng: random.Random) -> None:
        at = self.cursor()
        if rng.random() < 0.05 and self.text and not self.text.endswith("\n"):
            removed, self.text = self.text[-1], self.text[:-1]
            start = {"line": at["line"], "character": at["character"] - len(removed.encode("utf-16-le")) // 2}
            change = {"range": {"start": start, "end": at}, "text": ""}
        else:
            char = self.script[self.next % len(self.script)]
            self.next += 1
            self.text += char
            change = {"range": {"start": at, "end": at}, "text": char}
        self.version += 1
        self.server.opened(self.uri, self.version, self.text)
        await self.server.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": self.uri, "version": self.version}, "contentChanges": [change]},
        )

    async def complete(
        self, rng: random.Random, cancel_rate: float, timeout: float, type_ahead: float = 0.0
    ) -> tuple[str, float]:
        """One inline completion at the cursor: (outcome, ms). `cancel_rate` of them get a
        $/cancelRequest, `type_ahead` of them a keystroke before the answer came."""
        version = self.version
        sent = time.monotonic()
        future = await self.server.request(
            "textDocument/inlineCompletion",
            {"textDocument": {"uri": self.uri}, "position": self.cursor(), "context": {"triggerKind": 2}},
        )
        request_id = self.server.next_id
        cancelled = rng.random() < cancel_rate
        if cancelled:
            await asyncio.sleep(rng.uniform(0, 0.04))
            await self.server.notify("$/cancelRequest", {"id": request_id})
        elif rng.random() < type_ahead:
            await self.keystroke(rng)
        try:
            response = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            self.server.pending.pop(json.dumps(request_id), None)
            return "unanswered", timeout * 1000
        ms = (time.monotonic() - sent) * 1000
        if response is None:
            return "server gone", ms
        if "error" in response:
            return (
                "cancelled" if response["error"].get("code") == -32800 else f"error {response['error'].get('code')}"
            ), ms
        result = response.get("result")
        items = result.get("items", []) if isinstance(result, dict) else (result or [])
        if items and self.version != version:
            return "items for a superseded version", ms
        return ("cancelled, answered anyway" if cancelled else "items") if items else "empty", ms


async def soak(
    server: Server, rng: random.Random, completions: int, cancel_rate: float, timeout: float,
    seconds: float | None = None,
) -> dict:
    """`completions` inline completions, fewer if `seconds` run out first (the report says how many)."""
    typist = Typist(server, "file:///fuzz/soak.py", "import os\n\n\n")
    await typist.open()
    outcomes = collections.Counter()
    latencies = []
    rss = [(0, server.rss_mb())]
    started = time.monotonic()
    asked, completions = completions, 0
    for i in range(1, asked + 1):
        if not server.alive:
            outcomes["server gone"] += 1
            break
        if seconds is not None and time.monotonic() - started > seconds:
            break
        completions = i
        if i % 1000 == 0:
            print(f"soak: {i} completions, {time.monotonic() - started:.0f} s", flush=True)
        await typist.keystroke(rng)
        outcome, ms = await typist.complete(rng, cancel_rate, timeout, type_ahead=0.1)
        outcomes[outcome] += 1
        if outcome in ("items", "empty"):
            latencies.append(ms)
        if i % 50 == 0:
            rss.append((i, server.rss_mb()))
    await server.notify("textDocument/didClose", {"textDocument": {"uri": typist.uri}})
    first = [mb for i, mb in rss if mb and i <= max(100, completions // 10)]
    last = [mb for i, mb in rss if mb and i >= completions - max(100, completions // 10)]
    return {
        "completions": completions,
        "completions_asked": asked,
        "cancel_rate": cancel_rate,
        "outcomes": dict(outcomes),
        "latency_ms": {"p50": pct(latencies, 0.5), "p95": pct(latencies, 0.95), "n": len(latencies)},
        "rss_mb": rss,
        "rss_growth_first_to_last": round(statistics.fmean(last) / statistics.fmean(first) - 1, 3)
        if first and last
        else None,
        "seconds": round(time.monotonic() - started, 1),
    }


async def latency_under_load(server: Server, rng: random.Random, count: int, timeout: float) -> dict:
    """Completions on one document alone, then while repairs of a big table run on another."""
    typist = Typist(server, "file:///fuzz/typing.py", "import os\n\n\n")
    await typist.open()
    table_uri = "file:///fuzz/big_table.md"
    table = big_table(2000, 16, 500)
    server.opened(table_uri, 1, table)
    await server.notify(
        "textDocument/didOpen",
        {"textDocument": {"uri": table_uri, "languageId": "markdown", "version": 1, "text": table}},
    )

    async def typing(n: int) -> list[float]:
        latencies = []
        for _ in range(n):
            await typist.keystroke(rng)
            outcome, ms = await typist.complete(rng, 0.0, timeout)
            if outcome in ("items", "empty"):
                latencies.append(ms)
            await asyncio.sleep(0.05)
        return latencies

    alone = await typing(count)
    repairs = {"done": 0, "ms": [], "errors": collections.Counter()}
    stop = asyncio.Event()

    async def repair_loop() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            response = await (
                await server.request(
                    "workspace/executeCommand",
                    {"command": "dgemma.fillTableCells", "arguments": [{"uri": table_uri, "version": 1}]},
                )
            )
            if response is None:
                return
            if "error" in response:
                repairs["errors"][response["error"].get("message", "")[:120]] += 1
            else:
                server.check_command_result(table_uri, 1, response.get("result"))
            repairs["done"] += 1
            repairs["ms"].append((time.monotonic() - sent) * 1000)

    loop = asyncio.create_task(repair_loop())
    await asyncio.sleep(0.3)
    during = await typing(count)
    stop.set()
    await asyncio.wait_for(loop, timeout)

    # a repair cancelled with $/cancelRequest: how soon is the next completion answered?
    repair = {"command": "dgemma.fillTableCells", "arguments": [{"uri": table_uri, "version": 1}]}
    future = await server.request("workspace/executeCommand", repair)
    repair_id = server.next_id
    await asyncio.sleep(0.3)
    cancelled_at = time.monotonic()
    await server.notify("$/cancelRequest", {"id": repair_id})
    cancel_reply = await asyncio.wait_for(future, timeout)
    # Long actions run one at a time: a second repair starts ("model started" in the server's
    # $/logTrace) only once the cancelled one has really stopped working.
    probe = await server.request("workspace/executeCommand", repair)
    probe_id = server.next_id
    started = None
    while started is None and time.monotonic() - cancelled_at < timeout:
        await asyncio.sleep(0.02)
        started = next(
            (at for at, text in server.logs if at > cancelled_at and "model started" in text and "Markdown" in text),
            None,
        )
    await server.notify("$/cancelRequest", {"id": probe_id})
    await asyncio.wait_for(probe, timeout)
    after_cancel = await typing(5)
    await asyncio.sleep(2)
    alone_again = await typing(count)
    await server.notify("textDocument/didClose", {"textDocument": {"uri": typist.uri}})
    await server.notify("textDocument/didClose", {"textDocument": {"uri": table_uri}})
    return {
        "alone_ms": {"p50": pct(alone, 0.5), "p95": pct(alone, 0.95), "n": len(alone)},
        "during_repairs_ms": {"p50": pct(during, 0.5), "p95": pct(during, 0.95), "n": len(during)},
        "repairs": {"done": repairs["done"], "p50_ms": pct(repairs["ms"], 0.5), "errors": dict(repairs["errors"])},
        "cancelled_repair_reply": (cancel_reply or {}).get("error", {}).get("code", "answered"),
        # from $/cancelRequest to the next repair starting: the cancelled work itself ending
        "cancel_to_work_stopped_ms": round((started - cancelled_at) * 1000) if started else None,
        "after_cancel_ms": {"p50": pct(after_cancel, 0.5), "max": pct(after_cancel, 1.0), "n": len(after_cancel)},
        "alone_again_ms": {"p50": pct(alone_again, 0.5), "p95": pct(alone_again, 0.95), "n": len(alone_again)},
    }


FRAMING = {
    "lowercase content-length": lambda body: b"content-length: %d\r\n\r\n" % len(body) + body,
    "headers ending in a bare LF": lambda body: b"Content-Length: %d\n\n" % len(body) + body,
    "Content-Length too small": lambda body: b"Content-Length: %d\r\n\r\n" % (len(body) - 5) + body,
    "Content-Length too large": lambda body: b"Content-Length: %d\r\n\r\n" % (len(body) + 40) + body,
    "Content-Length not a number": lambda body: b"Content-Length: ten\r\n\r\n" + body,
}


async def framing(model: str | None, log_dir: Path, timeout: float) -> dict:
    """Each framing error on a fresh server, then one valid request: answered, deaf or exited?"""
    results = {}
    for name, broken in FRAMING.items():
        server = Server(dict(SETTINGS), log_dir / f"framing-{name.replace(' ', '_')}.log")
        await server.start(model)
        await server.initialize()
        body = encode(
            {
                "jsonrpc": "2.0",
                "id": "broken",
                "method": "textDocument/hover",
                "params": {"textDocument": {"uri": "file:///x.py"}, "position": {"line": 0, "character": 0}},
            }
        )
        await server.write(broken(body))
        future = await server.request("dgemma/ping", {})
        try:
            await asyncio.wait_for(future, timeout)
            results[name] = "answered"
        except asyncio.TimeoutError:
            results[name] = "exited" if not server.alive else "deaf"
        await server.stop(timeout=5)
    return results


async def main(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    log_dir = Path(args.logs)
    log_dir.mkdir(parents=True, exist_ok=True)
    server = Server(dict(FUZZ_SETTINGS), log_dir / "server.log")
    started = time.monotonic()
    await server.start(args.model)
    await server.initialize()
    await asyncio.wait_for(server.ready.wait(), args.timeout)
    report = {
        **stamp(),  # commit, dirty flag, command line, date, versions
        "seed": args.seed,
        "settings": {"fuzz": FUZZ_SETTINGS, "soak": SETTINGS},
        "model_load": server.load_failed or "ready",
        "rss_mb_ready": server.rss_mb(),
    }
    report["fuzz"] = await fuzz(server, rng, args.messages, args.huge_mb, args.drain, args.fuzz_seconds)
    print("fuzz:", json.dumps(report["fuzz"]["unanswered_by_method"]), f"alive={server.alive}", flush=True)
    if server.alive:
        report["soak"] = await soak(server, rng, args.completions, args.cancel_rate, args.timeout,
                                    args.soak_seconds)
        print("soak:", json.dumps(report["soak"]["outcomes"]), report["soak"]["latency_ms"], flush=True)
    if server.alive and args.load_completions:
        report["latency_under_load"] = await latency_under_load(server, rng, args.load_completions, args.timeout)
        print("under load:", json.dumps(report["latency_under_load"]), flush=True)
    report["rss_mb_end"] = server.rss_mb()
    report["crashed"] = not server.alive
    report["exit"] = await server.stop()
    report["totals"] = {
        "messages_sent": server.counts["requests"] + server.counts["notifications"],
        "unanswered": report["fuzz"]["unanswered"] + report.get("soak", {}).get("outcomes", {}).get("unanswered", 0),
        "crashes": int(report["crashed"]),
        "show_message_errors": sum(server.shown_errors.values()),
        "tracebacks_to_client": len(server.tracebacks),
        "stale_edits": len(server.stale),
        "malformed_replies": len(server.malformed_replies),
        "responses_without_request": server.counts["responses without a pending request"],
    }
    report["error_codes"] = {str(k): v for k, v in server.error_codes.most_common()}
    report["error_messages_top"] = dict(server.error_messages.most_common(15))
    report["show_message_errors_top"] = dict(server.shown_errors.most_common(10))
    report["server_log_tracebacks"] = server.log_path.read_bytes().count(b"Traceback (most recent call last)")
    report["tracebacks_sample"] = server.tracebacks[:5]
    report["stale_sample"] = server.stale[:5]
    report["malformed_replies_sample"] = server.malformed_replies[:5]
    report["responses_without_request_sample"] = server.unmatched[:5]
    if args.framing:
        report["framing"] = await framing(args.model, log_dir, args.framing_timeout)
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        default="benchmarks/results/lsp_fuzz.json",
        help="the results as JSON (default benchmarks/results/lsp_fuzz.json)",
    )
    parser.add_argument(
        "--logs",
        default=str(Path(tempfile.gettempdir()) / "dgemma-lsp-fuzz"),
        help="where the servers' stderr logs go (default: dgemma-lsp-fuzz in the temporary directory)",
    )
    parser.add_argument("--model", help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--messages", type=int, default=2000, help="fuzz messages (default 2000)")
    parser.add_argument("--completions", type=int, default=1000, help="soak inline completions (default 1000)")
    parser.add_argument("--fuzz-seconds", type=float, help="stop generating fuzz messages after this long")
    parser.add_argument("--soak-seconds", type=float, help="stop the soak after this long")
    parser.add_argument(
        "--cancel-rate", type=float, default=0.2, help="share of soak completions cancelled (default 0.2)"
    )
    parser.add_argument(
        "--load-completions",
        type=int,
        default=30,
        help="completions timed alone and while table repairs run (default 30; 0 skips)",
    )
    parser.add_argument("--huge-mb", type=float, default=3.0, help="size of the huge documents (default 3 MB)")
    parser.add_argument("--drain", type=float, default=120, help="seconds to wait for fuzz replies (default 120)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds one request may take (default 120)")
    parser.add_argument("--no-framing", dest="framing", action="store_false", help="skip the framing-error servers")
    parser.add_argument("--framing-timeout", type=float, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run: 300 messages, 100 completions, 10 under load, 0.5 MB documents, no framing",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.completions, args.load_completions, args.huge_mb, args.framing = 300, 100, 10, 0.5, False
    return args


if __name__ == "__main__":
    arguments = parse_args()
    result = asyncio.run(main(arguments))
    text = json.dumps(result, indent=1, ensure_ascii=False)
    Path(arguments.out).parent.mkdir(parents=True, exist_ok=True)
    Path(arguments.out).write_text(text + "\n")
    print(json.dumps(result["totals"]), flush=True)
