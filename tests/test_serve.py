"""`dgemma serve` end to end: the real server as a subprocess on a tiny checkpoint, spoken to by
the official `openai` client, by requests shaped exactly as llama.vim and llama.vscode send
them, and by raw aiohttp for concurrency, disconnects and bad input."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import openai
import pytest

pytestmark = pytest.mark.slow  # a real dgemma serve per module


@pytest.fixture(scope="module")
def served(start_serve, tiny_model_dir):
    return start_serve("--model", tiny_model_dir, "--max-batch", "8")[1]


def model_id(url: str) -> str:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused").models.list().data[0].id


async def post(session: aiohttp.ClientSession, url: str, body, **kwargs) -> tuple[int, dict]:
    async with session.post(url, json=body, **kwargs) as response:
        return response.status, await response.json()


async def health(url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/health") as response:
        assert response.status == 200
        return await response.json()


# ---- OpenAI-compatible ------------------------------------------------------------------------


def test_openai_client_completion_fim_chat_and_streams(served):
    client = openai.OpenAI(base_url=f"{served}/v1", api_key="unused")
    model = model_id(served)
    assert model == "checkpoint"  # the checkpoint directory's name

    plain = client.completions.create(model=model, prompt="def add(a, b):\n", max_tokens=8)
    assert plain.object == "text_completion" and isinstance(plain.choices[0].text, str)
    assert plain.choices[0].finish_reason in ("stop", "length")
    assert 0 < plain.usage.completion_tokens <= 8

    fim = client.completions.create(model=model, prompt="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n",
                                    max_tokens=6, n=2)
    assert [c.index for c in fim.choices] == [0, 1]
    assert all(isinstance(c.text, str) for c in fim.choices)
    assert fim.usage.completion_tokens <= 12

    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "say hi"}], max_tokens=8)
    assert chat.choices[0].message.role == "assistant" and isinstance(chat.choices[0].message.content, str)

    chunks = list(client.completions.create(model=model, prompt="x = ", max_tokens=70, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.object == "text_completion" for c in chunks)

    chat_chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                      max_tokens=40, stream=True))
    assert chat_chunks[0].choices[0].delta.role == "assistant"
    assert chat_chunks[-1].choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].delta.content or "" for c in chat_chunks)
    assert isinstance(streamed, str)


def test_stream_max_tokens_and_text_agree_with_the_unstreamed_reply(served):
    client = openai.OpenAI(base_url=f"{served}/v1", api_key="unused")
    whole = client.completions.create(model=model_id(served), prompt="for i in ", max_tokens=50, seed=3)
    parts = client.completions.create(model=model_id(served), prompt="for i in ", max_tokens=50, seed=3, stream=True)
    assert "".join(c.choices[0].text for c in parts) == whole.choices[0].text
    assert whole.usage.completion_tokens <= 50


async def test_canvas_stream_sends_every_denoising_step_then_the_middle(served):
    body = {"prompt": "def add(a, b):\n    return ", "suffix": "\n", "max_tokens": 8, "stream": True,
            "dgemma_stream_canvas": True}
    async with aiohttp.ClientSession() as s, s.post(f"{served}/v1/completions", json=body) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = [line.decode().strip() async for line in response.content if line.strip()]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    canvases = [e for e in events if e["object"] == "dgemma.canvas"]
    assert [e["step"] for e in canvases] == list(range(1, len(canvases) + 1))
    assert canvases and all(e["max_steps"] == 8 for e in canvases)  # the tiny checkpoint's 8 steps
    final = events[-1]
    assert final["object"] == "text_completion" and final["choices"][0]["finish_reason"] in ("stop", "length")


# ---- llama.cpp /infill, as the plugins send it ----------------------------------------------------

# llama.vim's request (autoload/llama.vim, llama#fim): the current line's prefix goes in `prompt`
LLAMA_VIM = {
    "input_prefix": "import os\n\ndef add(a, b):\n",
    "input_suffix": "\n\nprint(add(1, 2))\n",
    "input_extra": [{"text": "def sub(a, b):\n    return a - b\n", "time": [1733, 42], "filename": "util.py"}],
    "prompt": "    return ",
    "n_predict": 16,
    "n_indent": 4,
    "top_k": 40,
    "top_p": 0.99,
    "stream": False,
    "samplers": ["top_k", "top_p", "infill"],
    "cache_prompt": True,
    "t_max_prompt_ms": 500,
    "t_max_predict_ms": 1500,
    "response_fields": ["content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
                        "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
                        "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated",
                        "tokens_cached"],
}


async def test_llama_vim_infill_gets_a_middle_with_flattened_fields(served):
    async with aiohttp.ClientSession() as s:
        status, reply = await post(s, f"{served}/infill", LLAMA_VIM)
        assert status == 200
        assert set(reply) == set(LLAMA_VIM["response_fields"])  # exactly the fields asked for, keyed by path
        assert isinstance(reply["content"], str)
        assert reply["timings/predicted_n"] <= 16
        first_encoded = reply["timings/prompt_n"]
        assert first_encoded > 0
        # the next keystroke from the same client re-encodes only what changed (its own prompt cache)
        again = dict(LLAMA_VIM, prompt="    return a")
        status, reply = await post(s, f"{served}/infill", again)
        assert status == 200 and reply["tokens_cached"] > 0
        assert reply["timings/prompt_n"] < first_encoded


async def test_llama_vim_ring_buffer_warmup_predicts_nothing(served):
    warm = {"input_prefix": "", "input_suffix": "", "input_extra": LLAMA_VIM["input_extra"], "prompt": "",
            "n_predict": 0, "temperature": 0.0, "stream": False, "samplers": [], "cache_prompt": True,
            "t_max_prompt_ms": 1, "t_max_predict_ms": 1, "response_fields": [""]}
    async with aiohttp.ClientSession() as s:
        status, reply = await post(s, f"{served}/infill", warm)
    assert status == 200 and reply == {}


async def test_t_max_predict_ms_bounds_the_denoising(served):
    """Out of time, a hole gets the draft of its last step (or nothing before the first), never an error."""
    async with aiohttp.ClientSession() as s:
        status, reply = await post(s, f"{served}/infill", dict(LLAMA_VIM, t_max_predict_ms=1, response_fields=None))
    assert status == 200 and isinstance(reply["content"], str) and reply["stop_type"] == "limit"


async def test_llama_vscode_infill_gets_nested_timings(served):
    # llama.vscode (src/llama-server.ts, createRequestPayload): no response_fields, so the whole reply
    body = {"input_prefix": "def add(a, b):\n", "input_suffix": "\n", "input_extra": [], "prompt": "    return ",
            "n_predict": 12, "top_k": 40, "top_p": 0.99, "stream": False, "samplers": ["top_k", "top_p", "infill"],
            "cache_prompt": True, "n_indent": 4, "t_max_prompt_ms": 500, "t_max_predict_ms": 2500}
    async with aiohttp.ClientSession() as s:
        status, reply = await post(s, f"{served}/infill", body)
    assert status == 200
    assert isinstance(reply["content"], str) and reply["stop"] is True
    assert {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"} <= set(reply["timings"])


async def test_infill_stream_ends_with_a_stop_event(served):
    body = dict(LLAMA_VIM, stream=True, dgemma_stream_canvas=True)
    body.pop("response_fields")
    async with aiohttp.ClientSession() as s, s.post(f"{served}/infill", json=body) as response:
        events = [json.loads(line.decode().removeprefix("data: ")) async for line in response.content if line.strip()]
    assert events[-1]["stop"] is True and isinstance(events[-1]["content"], str)
    assert [e["step"] for e in events[:-1]] == list(range(1, len(events)))


# ---- concurrency, disconnects, bad input -------------------------------------------------------


async def test_concurrent_requests_are_batched_and_all_answered(served):
    before = await health(served)
    async with aiohttp.ClientSession() as s:
        bodies = [dict(LLAMA_VIM, input_prefix=f"# file {i}\n" + LLAMA_VIM["input_prefix"], id_slot=i)
                  for i in range(8)]
        replies = await asyncio.gather(*(post(s, f"{served}/infill", b, headers={"X-Dgemma-Client": f"editor-{i}"})
                                         for i, b in enumerate(bodies)))
    assert all(status == 200 and isinstance(r["content"], str) for status, r in replies)
    after = await health(served)
    holes = after["batched_holes"] - before["batched_holes"]
    batches = after["batches"] - before["batches"]
    assert holes == 8
    assert batches < holes  # some holes shared a decoder pass


# 1024 denoising steps on the tiny model take seconds (it is never confident enough to stop early)
SLOW_FIM = {"prompt": "def add(a, b):\n    return ", "suffix": "\n", "max_tokens": 8, "dgemma_steps": 1024,
            "stream": True, "dgemma_stream_canvas": True}


async def test_a_client_that_disconnects_frees_its_work(served):
    before = await health(served)
    async with aiohttp.ClientSession() as s, s.post(f"{served}/v1/completions", json=SLOW_FIM) as response:
        await response.content.readline()  # the hole is being denoised; now go away
    deadline = time.monotonic() + 30
    while (await health(served))["cancelled"] == before["cancelled"]:
        assert time.monotonic() < deadline, "the server kept generating for a client that left"
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as s:
        status, _ = await post(s, f"{served}/infill", LLAMA_VIM)
    assert status == 200


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/completions", {"prompt": 7}, 400, "'prompt' must be a string"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, 400, "'max_tokens' must be an integer"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "'max_tokens' must be in"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "does not exist"),
    ("/v1/chat/completions", {"messages": []}, 400, "'messages' must be a non-empty array"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, 400, "string 'role'"),
    ("/infill", {"input_prefix": ["a"]}, 400, "'input_prefix' must be a string"),
    ("/infill", {"input_prefix": "a", "n_predict": True}, 400, "'n_predict' must be an integer"),
    ("/infill", {"input_extra": [{"text": 3}]}, 400, "input_extra[0]"),
    ("/infill", [1, 2], 400, "must be a JSON object"),
])
async def test_bad_requests_get_a_4xx_with_a_message_and_the_server_stays_up(served, path, body, status, words):
    async with aiohttp.ClientSession() as s:
        got, reply = await post(s, f"{served}{path}", body)
    assert got == status and words in reply["error"]["message"]
    assert (await health(served))["status"] == "ok"


async def test_oversized_and_malformed_bodies(served):
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{served}/infill", data=b"{" + b" " * (2 << 20) + b"}") as response:
            assert response.status == 413 and "larger than" in (await response.json())["error"]["message"]
        async with s.post(f"{served}/v1/completions", data=b"{not json") as response:
            assert response.status == 400 and "not valid JSON" in (await response.json())["error"]["message"]
    assert (await health(served))["status"] == "ok"


def test_api_key_is_required_when_configured(start_serve, tiny_model_dir):
    _, url = start_serve("--model", tiny_model_dir, "--api-key-env", "DGEMMA_TEST_KEY",
                         env={"DGEMMA_TEST_KEY": "s3cret"})
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong").models.list()
    good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret")
    assert good.completions.create(model="checkpoint", prompt="a", suffix="b", max_tokens=4).choices[0].text is not None
    assert asyncio.run(health(url))["status"] == "ok"  # /health stays open, like llama-server's


async def test_a_full_queue_answers_503_with_retry_after(start_serve, tiny_model_dir):
    _, url = start_serve("--model", tiny_model_dir, "--max-queue", "1")
    body = dict(SLOW_FIM, stream=False, dgemma_stream_canvas=False)
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(s.post(f"{url}/v1/completions", json=body) for _ in range(4)))
        statuses = sorted(r.status for r in results)
        busy = [r for r in results if r.status == 503]
        assert statuses[0] == 200 and busy
        assert all(r.headers["Retry-After"] == "1" for r in busy)
        assert "busy" in (await busy[0].json())["error"]["message"]
        for r in results:
            r.release()
