"""The completion service without LSP: supersession, staleness, the debounce, the type-through
cache, interactive work going first while a long action runs, and cancellation between model
calls, against the real tiny checkpoint (a spy records the real engine's calls; nothing is faked)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest
import pytest_asyncio

from dgemma_ls.service import FILL_TABLE_CELLS, Change, CompletionService, Reporter, Stale
from lsp_support import FAST

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROSE = "Shopping list for the weekend:\napples, pears and \nDone.\n"
CURSOR = (1, len("apples, pears and "))
SLOW = {**FAST, "maxMiddleTokens": 64, "steps": 64}  # long enough for an edit to land mid-denoising


class Recorder(Reporter):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def log(self, level: int, message: str) -> None:
        self.messages.append(message)

    def show(self, level: int, message: str) -> None:
        self.messages.append(message)

    def trace(self, message: str) -> None:
        self.messages.append(message)

    def count(self, needle: str) -> int:
        return sum(needle in m for m in self.messages)


class Spy:
    """Wraps the loaded engine's own infill: records which prompt each call was for and when."""

    def __init__(self, engine) -> None:
        self.real, self.calls = engine.infill, []
        self.started = threading.Event()
        engine.infill = self

    def __call__(self, prefix: str, suffix: str, **options):
        self.calls.append((prefix, time.monotonic()))
        self.started.set()
        return self.real(prefix, suffix, **options)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(tiny_model_dir):
    reporter = Recorder()
    service = CompletionService(reporter, cli_model=tiny_model_dir)
    service.apply_settings(FAST)
    await service.load_model(service.next_load(), service.settings, lambda *progress: None)
    assert service.worker.ready, reporter.messages
    yield service
    service.close()


@pytest.fixture
def settings(service):
    """Each test sets what it needs; FAST again afterwards, whether the test passed or not."""
    yield service.apply_settings
    service.apply_settings(FAST)


_count = 0


def open_doc(service: CompletionService, text: str = PROSE, language_id: str = "plaintext", suffix: str = ".txt"):
    global _count
    _count += 1
    uri = f"file:///service/doc{_count}{suffix}"
    service.open(uri, language_id, 1, text)
    return uri


async def until(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_an_automatic_request_places_its_text_at_the_cursor(service):
    uri = open_doc(service)
    found = await service.complete(uri, CURSOR, automatic=True)
    assert found is not None and found.start == found.end == CURSOR and len(found.texts) == 1


async def test_a_newer_automatic_request_supersedes_the_pending_one(service, settings):
    settings(SLOW)
    uri = open_doc(service)
    reporter: Recorder = service.reporter
    started = reporter.count("model started")
    first = asyncio.ensure_future(service.complete(uri, CURSOR, automatic=True))
    await until(lambda: reporter.count("model started") > started, "the first request's model call")
    second = asyncio.ensure_future(service.complete(uri, CURSOR, automatic=True))
    assert await first is None
    assert reporter.count("model stopped") > 0
    assert await second is not None


async def test_an_edit_makes_the_running_request_return_nothing(service, settings):
    settings(SLOW)
    uri = open_doc(service)
    reporter: Recorder = service.reporter
    started = reporter.count("model started")
    pending = asyncio.ensure_future(service.complete(uri, CURSOR, automatic=False))
    await until(lambda: reporter.count("model started") > started, "the model call")
    service.change(uri, 2, [Change("x", CURSOR, CURSOR)])
    assert await pending is None


async def test_an_edit_during_the_debounce_means_no_model_call(service, settings):
    settings({**FAST, "debounceMs": 300})
    uri = open_doc(service)
    reporter: Recorder = service.reporter
    started = reporter.count("model started")
    pending = asyncio.ensure_future(service.complete(uri, CURSOR, automatic=True))
    await asyncio.sleep(0)  # the request is now waiting out its debounce
    service.change(uri, 2, [Change("x", CURSOR, CURSOR)])
    assert await pending is None
    assert reporter.count("model started") == started


async def test_typing_into_a_shown_candidate_is_answered_without_the_model(service):
    uri = open_doc(service)
    shown = await service.complete(uri, CURSOR, automatic=True)
    assert shown is not None
    text = shown.texts[0]
    if len(text) < 2 or "\n" in text[:1]:
        pytest.skip(f"the model's completion {text!r} is too short to type into")
    spy = Spy(service.worker.engine)
    try:
        service.change(uri, 2, [Change(text[0], CURSOR, CURSOR)])
        follow = await service.complete(uri, (CURSOR[0], CURSOR[1] + 1), automatic=True)
    finally:
        service.worker.engine.infill = spy.real
    assert follow is not None and follow.texts == [text[1:]]
    assert spy.calls == []


async def test_a_closed_document_gets_no_completion(service):
    uri = open_doc(service)
    service.close_document(uri)
    assert await service.complete(uri, CURSOR, automatic=True) is None


def sparse_table(rows: int) -> str:
    """A table whose every row misses its last cell: each one is a model call of the fill."""
    body = "".join(f"| item {i} | {i} |   |\n" for i in range(rows))
    return "| name | count | note |\n| --- | --- | --- |\n" + body


async def test_ghost_text_goes_between_the_model_calls_of_a_long_repair_and_cancel_stops_it(service, settings):
    settings(SLOW)
    table = open_doc(service, sparse_table(12), "markdown", ".md")
    code = open_doc(service)
    spy = Spy(service.worker.engine)
    try:
        repair = asyncio.ensure_future(service.execute(FILL_TABLE_CELLS, [{"uri": table}]))
        await until(spy.started.is_set, "the repair's first model call")
        ghost = await service.complete(code, CURSOR, automatic=True)
        assert not repair.done(), "the repair finished first: the table is too small to test ordering"
        assert ghost is not None
        calls = [prefix for prefix, _ in spy.calls]
        ghost_call = next(i for i, prefix in enumerate(calls) if "Shopping" in prefix)
        assert ghost_call <= 2  # after the repair call that was running (and at most one that had started)
        repair.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await repair
        await until(lambda: service.reporter.count("$/cancelRequest") > 0, "the repair to stop")
        await asyncio.sleep(0.3)
        assert [p for p, at in spy.calls if at > cancelled_at] == []  # no model call after the cancel
        assert sum("|" in p for p in calls) < 12  # the repair never got through its cells
    finally:
        service.worker.engine.infill = spy.real
    assert await service.complete(code, CURSOR, automatic=True) is not None  # and the model still serves


async def test_a_repair_made_stale_by_an_edit_is_refused(service, settings):
    settings(SLOW)
    table = open_doc(service, sparse_table(4), "markdown", ".md")
    spy = Spy(service.worker.engine)
    try:
        repair = asyncio.ensure_future(service.execute(FILL_TABLE_CELLS, [{"uri": table}]))
        await until(spy.started.is_set, "the repair's first model call")
        service.change(table, 2, [Change("x", (0, 0), (0, 0))])
        with pytest.raises(Stale):
            await repair
    finally:
        service.worker.engine.infill = spy.real


async def test_fills_are_offered_disabled_while_the_model_loads(tiny_model_dir):
    service = CompletionService(Recorder(), cli_model=tiny_model_dir)
    try:
        uri = open_doc(service, "def area(w, h):\n    pass  # TODO\n", "python", ".py")
        offers = service.offers(uri, (1, 4), (1, 4), fills=True, repairs=True)
        assert offers and all(o.disabled == "the model has not been loaded yet" for o in offers)
    finally:
        service.close()


async def test_an_overridden_language_is_logged_once_per_document(service):
    reporter: Recorder = service.reporter
    before = reporter.count("contradicts the file extension")
    uri = open_doc(service, '{"a": 1,}', "python", ".json")
    service.open(uri, "python", 2, '{"a": 2,}')
    assert reporter.count("contradicts the file extension") == before + 1
    offers = service.offers(uri, (0, 0), (0, 0), fills=False, repairs=True)
    assert [o.title for o in offers] == ["Repair JSON"]



async def test_a_cancelled_request_leaves_no_unretrieved_future_exception(service, settings):
    """A cancelled request's model job still ends (with Cancelled) after its awaiting task is
    gone: its wrapped future must not be collected with the exception unread, which asyncio logs
    as "Future exception was never retrieved" (the soaks' log noise)."""
    settings(SLOW)
    code = open_doc(service)
    spy = Spy(service.worker.engine)
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context.get("message", "")))
    try:
        request = asyncio.ensure_future(service.complete(code, CURSOR, automatic=False))
        await until(spy.started.is_set, "the request's model call")
        stopped = service.reporter.count("model stopped")
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await until(lambda: service.reporter.count("model stopped") > stopped, "the model job to stop")
        del request
        for _ in range(3):
            await asyncio.sleep(0.05)
            gc.collect()
    finally:
        loop.set_exception_handler(previous)
        service.worker.engine.infill = spy.real
    assert [m for m in seen if "never retrieved" in m] == []
