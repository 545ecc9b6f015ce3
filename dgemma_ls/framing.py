"""LSP base-protocol framing that survives a bad header: the reader handed to pygls's loop.

pygls 2 reads `Content-Length: N\\r\\n` exactly and ignores every other line, so one lowercase
header, a bare LF or a wrong length leaves the server alive but deaf. An editor restarts a dead
server, not a deaf one, and resynchronising loses only the broken message, so this reader
resynchronises: it accepts header names in any case and bare LF line ends, skips (and logs)
bytes that are not a header, and when the body of a message is not where its Content-Length says
(too short, too long) it takes the JSON value that is there and logs the mismatch. It hands
pygls `Content-Length: N\\r\\n\\r\\n` + body, so pygls's own loop (`pygls.io_.run_async`) and
its error handling stay in charge of everything after framing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import select
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024 * 1024  # a larger Content-Length is a broken header, not a message
STALL_S = 1.0  # a body that stops arriving this long is checked for a complete JSON value
_HEADER = re.compile(rb"content-length[ \t]*:", re.IGNORECASE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_NAME_VALUE = re.compile(rb"([A-Za-z0-9-]+)[ \t]*:[ \t]*(.*?)[ \t]*\r?$")


def _parses(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


class Framer:
    """Sans-IO: `feed` bytes, then `next_body` returns each message's body (or None: more bytes needed)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self._length: int | None = None  # of the body being read, once its header is complete

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def _skip(self, count: int, why: str) -> None:
        if count:
            preview = bytes(self.buffer[:60])
            log.warning("framing: skipped %d bytes %s: %r%s", count, why, preview, "..." if count > 60 else "")
            del self.buffer[:count]

    def _read_header(self) -> bool:
        """Consume one header block; True once a valid Content-Length is known."""
        match = _HEADER.search(self.buffer)
        if match is None:
            if len(self.buffer) > 256:  # keep a tail: a header may be split across reads
                self._skip(len(self.buffer) - 64, "that are not an LSP header")
            return False
        start = match.start()
        if start:
            junk = bytes(self.buffer[:start])
            if not re.fullmatch(rb"(?i)content-type[ \t]*:[^\r\n]*\r?\n", junk):  # a header before ours
                self._skip(start, "before the next Content-Length header")
            else:
                del self.buffer[:start]
        end = _HEADER_END.search(self.buffer)
        if end is None:
            return False
        lines = bytes(self.buffer[: end.start()]).split(b"\n")
        canonical = end.group() == b"\r\n\r\n" and all(line.endswith(b"\r") for line in lines[:-1])
        del self.buffer[: end.end()]
        length = None
        for line in lines:
            found = _NAME_VALUE.fullmatch(line)
            if found and found.group(1).lower() == b"content-length":
                value = found.group(2)
                if value.isdigit() and int(value) <= MAX_BODY:
                    length = int(value)
        if length is None:
            log.warning("framing: header without a valid Content-Length dropped: %r", b"\n".join(lines)[:200])
            return False
        if not canonical or not any(line.startswith(b"Content-Length: ") for line in lines):
            log.info("framing: non-standard header accepted: %r", b"\n".join(lines)[:200])
        self._length = length
        return True

    def next_body(self, stalled: bool = False, eof: bool = False) -> bytes | None:
        """The next body, or None until more bytes arrive. `stalled`: nothing arrived for a while
        (a Content-Length too long is then recognised by its complete JSON body); `eof`: no more."""
        while True:
            if self._length is None and not self._read_header():
                if eof and self.buffer:
                    self._skip(len(self.buffer), "at the end of the stream")
                return None
            length = self._length
            assert length is not None
            if len(self.buffer) >= length:
                body = bytes(self.buffer[:length])
                rest = self.buffer[length:]
                inner = _HEADER.search(body, 1)
                if inner is not None and not _parses(body):  # too long: the next message began inside
                    candidate = body[: inner.start()].rstrip()
                    if _parses(candidate):
                        log.warning("framing: Content-Length %d too long: the body has %d bytes", length,
                                    len(candidate))
                        del self.buffer[: inner.start()]
                        self._length = None
                        return candidate
                if rest.strip() and not _HEADER.match(bytes(rest[:64]).lstrip()) and not _parses(body):
                    # Content-Length too short: the body runs on to the next header
                    following = _HEADER.search(rest)
                    if following is not None or eof or stalled:
                        cut = length + (following.start() if following is not None else len(rest))
                        candidate = bytes(self.buffer[:cut]).rstrip()
                        if _parses(candidate):
                            log.warning("framing: Content-Length %d too short: the body has %d bytes", length,
                                        len(candidate))
                            del self.buffer[:cut]
                            self._length = None
                            return candidate
                    else:
                        return None  # the bytes still to come decide where this body ends
                self._length = None
                del self.buffer[:length]
                return body  # pygls answers a body that is not JSON (a parse error, logged)
            # Content-Length too long: the next message is arriving inside this body
            following = _HEADER.search(self.buffer)
            if following is not None or stalled or eof:
                cut = following.start() if following is not None else len(self.buffer)
                candidate = bytes(self.buffer[:cut]).rstrip()
                if candidate and _parses(candidate):
                    log.warning("framing: Content-Length %d too long: the body has %d bytes", length, len(candidate))
                    del self.buffer[:cut]
                    self._length = None
                    return candidate
                if eof:
                    self._skip(len(self.buffer), f"of a body shorter than its Content-Length {length}")
                    self._length = None
                    return None
            return None


class _Canonical:
    """Hands pygls's loop `Content-Length: N\\r\\n`, `\\r\\n`, then the body."""

    def __init__(self) -> None:
        self.framer = Framer()
        self._lines: list[bytes] = []
        self._body = b""

    def _queue(self, body: bytes) -> None:
        self._lines = [b"Content-Length: %d\r\n" % len(body), b"\r\n"]
        self._body = body

    def _pop_line(self) -> bytes:
        return self._lines.pop(0)

    def _take_body(self, n: int) -> bytes:
        body, self._body = self._body[:n], self._body[n:]
        return body


class StdioReader(_Canonical):
    """Blocking reader over a file descriptor for `LanguageServer.start_io(stdin=...)` (pygls runs
    `readline` / `read` in its thread pool)."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd

    def readline(self) -> bytes:
        if not self._lines:
            body = self._next()
            if body is None:
                return b""
            self._queue(body)
        return self._pop_line()

    def read(self, n: int) -> bytes:
        return self._take_body(n)

    def _next(self) -> bytes | None:
        stalled = False
        while (body := self.framer.next_body(stalled)) is None:
            ready, _, _ = select.select([self.fd], [], [], STALL_S)
            stalled = not ready
            if ready:
                data = os.read(self.fd, 1 << 16)
                if not data:
                    return self.framer.next_body(eof=True)
                self.framer.feed(data)
        return body


class StreamReader(_Canonical):
    """The same over an asyncio StreamReader (TCP)."""

    def __init__(self, stream: asyncio.StreamReader):
        super().__init__()
        self.stream = stream

    async def readline(self) -> bytes:
        if not self._lines:
            body = await self._next()
            if body is None:
                return b""
            self._queue(body)
        return self._pop_line()

    async def readexactly(self, n: int) -> bytes:
        return self._take_body(n)

    async def _next(self) -> bytes | None:
        stalled = False
        while (body := self.framer.next_body(stalled)) is None:
            try:
                data = await asyncio.wait_for(self.stream.read(1 << 16), STALL_S)
                stalled = False
            except asyncio.TimeoutError:
                stalled = True
                continue
            if not data:
                return self.framer.next_body(eof=True)
            self.framer.feed(data)
        return body


def parse_error_reply(error: Exception, send: Callable[[dict[str, Any]], None]) -> bool:
    """JSON-RPC: a body that is not JSON is answered with -32700 and id null. True if sent."""
    if isinstance(error, json.JSONDecodeError) or isinstance(error.__cause__, json.JSONDecodeError):
        send({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": f"Parse error: {error}"}})
        return True
    return False
