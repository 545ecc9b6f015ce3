"""Runs a language server, copying what it reads on stdin to a file, so an editor test can check
what the server received:  python lsp_tee.py LOG COMMAND...  Also parses such a copy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def lsp_messages(path: Path) -> list[dict]:
    """The JSON-RPC messages in a file of Content-Length framed LSP traffic."""
    raw = path.read_bytes() if path.exists() else b""
    messages = []
    while raw:
        header, _, rest = raw.partition(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in header.split(b"\r\n"))
        length = int(
            {k.strip().lower(): v for k, v in fields.items()}[b"content-length"]
        )
        messages.append(json.loads(rest[:length]))
        raw = rest[length:]
    return messages


def main() -> int:
    log, *command = sys.argv[1:]
    server = subprocess.Popen(command, stdin=subprocess.PIPE)
    with open(log, "wb") as copy:
        while chunk := sys.stdin.buffer.read1(65536):
            copy.write(chunk)
            copy.flush()
            server.stdin.write(chunk)
            server.stdin.flush()
    server.stdin.close()
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
