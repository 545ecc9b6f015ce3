"""Resident memory of the real dgemma-ls before, while and after large documents are open
(issue 16 item 9): five ~1.7 M-character Python files opened, edited 3 times, asked an inline
completion and code actions (MODE=all|complete|action|none picks which), closed; ROUNDS rounds
(default 3).

    python -m benchmarks.lsp_memory [CHECKPOINT_DIR]     # default: a tiny random checkpoint
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_reliability import RawServer

MODE = os.environ.get("MODE", "all")
ROUNDS = int(os.environ.get("ROUNDS", "3"))


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):  # noqa: SIM115
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="dgemma-memory-"))
    if len(sys.argv) > 1:
        model = sys.argv[1]
    else:
        from engine.training.tiny import write_tiny_checkpoint

        model = str(write_tiny_checkpoint(work / "tiny", seed=0))
    server = RawServer(model, work / "server.log")
    pid = server.process.pid
    time.sleep(1)
    ready = rss_mb(pid)
    print(f"ready {ready:.0f} MB")
    big = "".join(f"def f{i}(a, b):\n    return [a, b, {i}]\n" for i in range(40000))
    here = {"start": {"line": 0, "character": 3}, "end": {"line": 0, "character": 3}}
    for round_ in range(ROUNDS):
        for i in range(5):
            uri = f"file:///big{i}.py"
            server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                    "text": big}})
            for version in range(2, 5):
                server.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                              "contentChanges": [{"range": {"start": {"line": 1, "character": 0},
                                                            "end": {"line": 1, "character": 0}}, "text": "y = 1\n"}]})
            if MODE in ("all", "complete"):
                server.request("textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": {
                    "line": 1000, "character": 4}, "context": {"triggerKind": 1}}, timeout=120)
            if MODE in ("all", "action"):
                server.request("textDocument/codeAction", {"textDocument": {"uri": uri}, "range": here,
                                                           "context": {"diagnostics": []}}, timeout=120)
        opened = rss_mb(pid)
        started = time.monotonic()
        for i in range(5):
            server.notify("textDocument/didClose", {"textDocument": {"uri": f"file:///big{i}.py"}})
        reply = server.request("textDocument/codeAction", {"textDocument": {"uri": "file:///none.py"}, "range": here,
                                                           "context": {"diagnostics": []}}, timeout=300)
        assert "result" in reply, reply
        answered = time.monotonic() - started  # the closes run before the request on the event loop
        time.sleep(2)
        closed = rss_mb(pid)
        print(f"round {round_}: open {opened:.0f} MB, closed {closed:.0f} MB ({closed / ready - 1:+.0%} of ready); "
              f"closing took {answered:.1f} s", flush=True)
    server.close()


if __name__ == "__main__":
    main()
