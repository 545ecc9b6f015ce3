"""dgemma_ls.backends against real HTTP servers: `dgemma serve` on a tiny checkpoint, and
OpenAI-protocol stand-ins started here (a server that refuses `suffix` and relays chat to
`dgemma serve`, one that answers 500, one that sends malformed JSON, one that never answers)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from aiohttp import web

from dgemma_ls.backends import (
    BackendConfig,
    BackendError,
    DgemmaBackend,
    OpenAIBackend,
    make_backend,
    middle_from_chat,
)
from engine import Cancelled

PREFIX, SUFFIX = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def served(start_serve, tiny_model_dir):
    return start_serve("--model", tiny_model_dir)[1]


class StandIn:
    """An aiohttp app on its own loop thread and a free loopback port; `seen` records each request."""

    def __init__(self, routes: list[web.RouteDef]):
        self.seen: list[tuple[str, dict]] = []
        self.cancelled = threading.Event()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start():
            app = web.Application()
            app.add_routes(routes)
            self.runner = web.AppRunner(app, handler_cancellation=True)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
            ready.set()

        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(start(), self.loop)
        ready.wait(10)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def backend(kind: str, url: str, **options) -> DgemmaBackend | OpenAIBackend:
    return make_backend(BackendConfig(kind, url, **{"timeout_ms": 20_000, **options}))


@pytest.mark.slow
def test_dgemma_backend_fills_on_the_server(served):
    remote = backend("dgemma", served)
    infills = remote.infill(PREFIX, SUFFIX, max_middle_tokens=6, num_candidates=2, steps=4)
    assert len(infills) == 2 and all(isinstance(i.text, str) for i in infills)
    assert remote.model == "checkpoint"  # asked /v1/models once
    assert "dgemma backend at" in remote.describe()
    remote.close()


@pytest.mark.slow
def test_openai_backend_uses_suffix_where_the_server_takes_it(served):
    remote = backend("openai", served + "/v1")  # the /v1 an OpenAI base URL usually carries is accepted
    infills = remote.infill(PREFIX, SUFFIX, max_middle_tokens=6)
    assert len(infills) == 1 and not remote.use_chat
    remote.close()


@pytest.mark.slow
def test_openai_backend_falls_back_to_a_chat_prompt_when_suffix_is_refused(served):
    import aiohttp

    async def completions(request):
        stand_in.seen.append(("completions", await request.json()))
        return web.json_response({"error": {"message": "suffix is not currently supported", "code": 400}}, status=400)

    async def chat(request):  # relayed to dgemma serve: the reply comes from our engine
        body = await request.json()
        stand_in.seen.append(("chat", body))
        async with aiohttp.ClientSession() as s, s.post(f"{served}/v1/chat/completions", json=body) as r:
            return web.json_response(await r.json(), status=r.status)

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "checkpoint", "object": "model"}]})

    stand_in = StandIn([web.post("/v1/completions", completions), web.post("/v1/chat/completions", chat),
                        web.get("/v1/models", models)])
    try:
        remote = backend("openai", stand_in.url)
        first = remote.infill(PREFIX, SUFFIX, max_middle_tokens=6)
        second = remote.infill(PREFIX, SUFFIX, max_middle_tokens=6)
        assert len(first) == len(second) == 1 and remote.use_chat
        assert [kind for kind, _ in stand_in.seen] == ["completions", "chat", "chat"]  # refused once, then chat
        messages = stand_in.seen[1][1]["messages"]
        assert messages[-1]["content"] == PREFIX + "<FILL_HERE>" + SUFFIX
        remote.close()
    finally:
        stand_in.close()


@pytest.mark.parametrize("reply, words", [
    (lambda: web.json_response({"error": {"message": "out of memory"}}, status=500), "HTTP 500: out of memory"),
    (lambda: web.Response(text="{not json", content_type="application/json"), "malformed reply (not JSON)"),
    (lambda: web.json_response({"choices": "nope"}), "malformed reply (no choices)"),
    (lambda: web.json_response({"choices": [{"index": 0, "text": 5}]}), "has no text text"),
])
def test_http_errors_and_malformed_replies_are_backend_errors(reply, words):
    async def completions(request):
        return reply()

    stand_in = StandIn([web.post("/v1/completions", completions)])
    try:
        with pytest.raises(BackendError, match=words.replace("(", r"\(").replace(")", r"\)")):
            backend("openai", stand_in.url, model="m").infill(PREFIX, SUFFIX, max_middle_tokens=4)
    finally:
        stand_in.close()


def test_connection_refused_is_a_backend_error():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendError, match="cannot connect"):
        backend("dgemma", f"http://127.0.0.1:{port}", model="m").infill(PREFIX, SUFFIX, max_middle_tokens=4)


def test_a_slow_server_times_out_and_cancelling_closes_the_request():
    async def completions(request):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stand_in.cancelled.set()  # the client closed the connection
            raise
        return web.json_response({})

    stand_in = StandIn([web.post("/v1/completions", completions)])
    try:
        slow = backend("openai", stand_in.url, model="m", timeout_ms=300)
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="no reply within 300 ms"):
            slow.infill(PREFIX, SUFFIX, max_middle_tokens=4)
        assert time.monotonic() - t0 < 5

        patient = backend("openai", stand_in.url, model="m", timeout_ms=60_000)
        stand_in.cancelled.clear()
        stop_at = time.monotonic() + 0.3
        with pytest.raises(Cancelled):
            patient.infill(PREFIX, SUFFIX, max_middle_tokens=4, should_stop=lambda: time.monotonic() > stop_at)
        assert stand_in.cancelled.wait(5), "the server never saw the request go away"
    finally:
        stand_in.close()


def test_a_missing_api_key_variable_is_an_error_and_the_key_is_sent(monkeypatch):
    with pytest.raises(BackendError, match="DGEMMA_NO_SUCH_KEY"):
        backend("openai", "http://127.0.0.1:1", api_key_env="DGEMMA_NO_SUCH_KEY")

    async def completions(request):
        stand_in.seen.append((request.headers.get("Authorization"), await request.json()))
        return web.json_response({"choices": [{"index": 0, "text": "a + b"}], "usage": {"completion_tokens": 3}})

    stand_in = StandIn([web.post("/v1/completions", completions)])
    try:
        monkeypatch.setenv("DGEMMA_TEST_BACKEND_KEY", "k3y")
        remote = backend("openai", stand_in.url, model="m", api_key_env="DGEMMA_TEST_BACKEND_KEY")
        assert [i.text for i in remote.infill(PREFIX, SUFFIX, max_middle_tokens=4)] == ["a + b"]
        assert stand_in.seen[0][0] == "Bearer k3y"
        assert stand_in.seen[0][1]["suffix"] == SUFFIX and stand_in.seen[0][1]["model"] == "m"
    finally:
        stand_in.close()


@pytest.mark.parametrize("reply, middle", [
    ("a + b", "a + b"),
    ("```python\na + b\n```", "a + b"),
    ("    return a + b", "a + b"),  # the gap's line written out again
    ("<FILL_HERE>a + b", "a + b"),
])
def test_middle_from_chat(reply, middle):
    assert middle_from_chat(reply, PREFIX) == middle
