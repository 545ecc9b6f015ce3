"""Closing a document lets go of everything it held (issue 16 item 9): its text and its syntax
trees, the one before an edit and the one after, once the model has worked on it. A job kept
alive by the model thread until the next request held a closed 1.7 M-character file's trees
(several hundred MB of native memory, docs/reliability.md). The real service and the tiny
checkpoint; weak references say what is still alive."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
import weakref

import pytest
import pytest_asyncio

from dgemma_ls.service import FILL, Change, CompletionService, Reporter
from lsp_support import FAST

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXT = "".join(f"def f{i}(a, b):\n    return [a, b, {i}]\n" for i in range(200))


class Quiet(Reporter):
    def log(self, level: int, message: str) -> None:
        pass

    def show(self, level: int, message: str) -> None:
        pass

    def trace(self, message: str) -> None:
        pass


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(tiny_model_dir):
    service = CompletionService(Quiet(), cli_model=tiny_model_dir)
    service.apply_settings(FAST)
    await service.load_model(service.next_load(), service.settings, lambda *progress: None)
    assert service.worker.ready
    yield service
    service.close()


async def released(refs: dict[str, weakref.ref], timeout: float = 5) -> list[str]:
    """The names of the referents still alive after `timeout` (the model thread may finish its
    bookkeeping a moment after the caller got its answer)."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        alive = [name for name, ref in refs.items() if ref() is not None]
        if not alive or time.monotonic() > deadline:
            return alive
        await asyncio.sleep(0.05)


async def test_a_closed_document_leaves_no_text_or_tree_behind(service):
    uri = "file:///memory/edited.py"
    service.open(uri, "python", 1, TEXT)
    doc = service.documents[uri]
    refs = {"document": weakref.ref(doc), "first tree": weakref.ref(doc.tree)}
    service.change(uri, 2, [Change("y = 1\n", (1, 0), (1, 0))])
    refs["edited tree"] = weakref.ref(doc.tree)
    service.offers(uri, (3, 0), (3, 0), fills=True, repairs=True)
    await service.execute(FILL, [{"uri": uri, "position": {"line": 50, "character": 4}}])  # the action lane
    await service.complete(uri, (100, 4), automatic=False)  # the model thread's last job
    del doc
    service.close_document(uri)
    assert await released(refs) == []



async def test_notifications_leave_no_future_behind():
    """pygls 2 kept a finished Future for every notification its generator handlers ran (our
    didOpen / didChange / didClose): one per keystroke, for as long as the server lived."""
    from dgemma_ls.server import build_server

    protocol = build_server(cli_model=None).protocol

    def notify(method: str, params: dict) -> None:
        protocol.handle_message(protocol.structure_message({"jsonrpc": "2.0", "method": method, "params": params}))

    uri = "file:///memory/typed.py"
    notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": ""}})
    for version in range(2, 102):
        at = {"line": 0, "character": version - 2}
        notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                          "contentChanges": [{"range": {"start": at, "end": at}, "text": "x"}]})
    notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    assert protocol._request_futures == {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc; /proc")
async def test_the_server_runs_on_the_system_allocator():
    """Trees are freed into glibc's heap, which malloc_trim hands back, not into Python's arenas,
    which one live object pins (use_system_malloc says what it measured); PYTHONMALLOC set by the
    user is kept."""
    for preset, expected in ((None, b"PYTHONMALLOC=malloc"), ("pymalloc", b"PYTHONMALLOC=pymalloc")):
        env = {key: value for key, value in os.environ.items() if key != "PYTHONMALLOC"}
        if preset:
            env["PYTHONMALLOC"] = preset
        server = subprocess.Popen([sys.executable, "-m", "dgemma_ls"], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 20
            while True:  # the re-execution keeps the pid: its environment changes in place
                variables = open(f"/proc/{server.pid}/environ", "rb").read().split(b"\0")  # noqa: SIM115
                if expected in variables or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert expected in variables
            assert sum(v.startswith(b"PYTHONMALLOC=") for v in variables) == 1
        finally:
            server.kill()
            server.wait(timeout=30)


async def test_a_burst_of_large_closes_releases_the_heap_once(service, monkeypatch):
    """gc + malloc_trim run once for closes that come together, off the closing thread (one per
    close, on the event loop, kept the server busy for minutes when the fuzz closed ~2,900)."""
    import dgemma_ls.service as service_module

    threads = []
    monkeypatch.setattr(service_module, "_release_freed_heap", lambda: threads.append(threading.current_thread()))
    big = "x = 1\n" * 50_000  # 300k characters: over the large-document line
    for i in range(20):
        service.open(f"file:///memory/burst{i}.py", "python", 1, big)
    for i in range(20):
        service.close_document(f"file:///memory/burst{i}.py")
    assert threads == []  # not on the closing thread
    await asyncio.sleep(service_module._RELEASE_DELAY_S + 1.0)
    assert len(threads) == 1 and threads[0] is not threading.current_thread()
    service.open("file:///memory/later.py", "python", 1, big)
    service.close_document("file:///memory/later.py")
    await asyncio.sleep(service_module._RELEASE_DELAY_S + 1.0)
    assert len(threads) == 2  # a later close gets its own release
