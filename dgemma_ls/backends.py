"""Remote model backends: the `actions.Backend` interface (`tokenizer`, `infill`) over HTTP.

`dgemma`: a `dgemma serve` URL, canvas infilling on the server (/v1/completions with `suffix`).
`openai`: any OpenAI-compatible server (vLLM, SGLang, llama-server, Ollama, LM Studio): FIM through
/v1/completions with `suffix` where the server takes it, else a chat prompt for instruction
models whose reply is cut to the middle here (fences, a repeated line) and by postprocess.

Every failure (refused connection, timeout, HTTP 4xx/5xx, a malformed reply) is a BackendError
naming the URL and the reason; nothing is retried here, so a server that comes back is simply
used by the next request. `should_stop` is polled while a request is in flight and cancelling
closes the HTTP request. Knows HTTP and JSON, not LSP or documents.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dgemma_ls.settings import BACKENDS, Settings
from engine.errors import Cancelled, EngineError
from engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

POLL_S = 0.02  # how often a waiting infill checks should_stop
CHAT_SYSTEM = ("You complete code. The user sends a file with one gap marked {hole}. Reply with only the text "
               "that replaces {hole}: no explanation, no code fences, nothing from before or after the gap.")
HOLE = "<FILL_HERE>"


class BackendError(EngineError):
    """A remote backend could not answer (the message names the URL and why)."""


@dataclass
class RemoteInfill:
    """What the actions read of an infill (engine.Infill's fields that a remote server can report)."""

    text: str
    tokens: int
    steps: int
    tokens_per_forward: float
    ms: float
    score: float = 0.0


@dataclass(frozen=True)
class BackendConfig:
    kind: str  # "dgemma" or "openai"
    url: str  # the server's base URL (empty: not configured, an error when the backend is made), e.g. http://127.0.0.1:8012 (a trailing /v1 is accepted)
    model: str | None = None  # the model name to send; None: the first one the server lists
    api_key_env: str | None = None  # the NAME of an environment variable holding the key
    timeout_ms: int = 10_000  # DEFAULT_TIMEOUT_MS


def counting_tokenizer() -> Tokenizer:
    """Context windows are token budgets counted before the request leaves: the small model's
    BPE tokenizer counts for a remote model (its own tokenizer is on the server; the server cuts
    a prompt that is still too long to its model's positions)."""
    # engine.api imports torch: only once a remote backend is made
    from engine.api import SMALL_MODEL

    return Tokenizer(SMALL_MODEL / "tokenizer.json")


class HttpBackend:
    """An aiohttp session on a private event-loop thread; `infill` blocks its caller (the model
    worker) while polling `should_stop`."""

    def __init__(self, config: BackendConfig):
        if not config.url:
            raise BackendError(f"dgemma.backend is {config.kind!r} but dgemma.backendUrl (--backend-url) is not set")
        if not config.url.startswith(("http://", "https://")):
            raise BackendError(f"backend URL {config.url!r} must start with http:// or https://")
        self.config = config
        self.base = config.url.rstrip("/").removesuffix("/v1")
        self.api_key = None
        if config.api_key_env:
            self.api_key = os.environ.get(config.api_key_env)
            if not self.api_key:
                raise BackendError(f"the environment variable {config.api_key_env} (backendApiKeyEnv) is unset "
                                   "or empty")
        self.tokenizer = counting_tokenizer()
        self.model = config.model
        self.client_id = f"dgemma-ls-{uuid.uuid4().hex[:12]}"  # dgemma serve keeps this editor's prompt cache
        self._loop = asyncio.new_event_loop()
        self._session = None  # an aiohttp.ClientSession, made on the loop thread by the first request
        self._thread = threading.Thread(target=self._loop.run_forever, name="dgemma-backend-http", daemon=True)
        self._thread.start()

    # ---- HTTP -----------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"X-Dgemma-Client": self.client_id}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    async def _call(self, method: str, path: str, body: dict | None) -> Any:
        import aiohttp  # here, not at import: the actions import this module and run without HTTP

        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = self.base + path
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_ms / 1000)
        try:
            async with self._session.request(method, url, json=body, headers=self._headers(), timeout=timeout) as r:
                text = await r.text()
                status = r.status
        except asyncio.TimeoutError:
            raise BackendError(f"{url}: no reply within {self.config.timeout_ms} ms (backendTimeoutMs)") from None
        except aiohttp.ClientConnectionError as error:
            raise BackendError(f"{url}: cannot connect ({error})") from None
        except aiohttp.ClientError as error:
            raise BackendError(f"{url}: {error}") from None
        if status >= 400:
            raise BackendError(f"{url}: HTTP {status}: {_error_message(text)}")
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise BackendError(f"{url}: malformed reply (not JSON): {text[:120]!r}") from None

    def request(self, method: str, path: str, body: dict | None = None,
                should_stop: Callable[[], bool] | None = None) -> Any:
        """The reply's JSON; BackendError on any failure, engine.Cancelled once should_stop() says so
        (the HTTP request is then closed: cancelling its task closes the connection)."""
        future = asyncio.run_coroutine_threadsafe(self._call(method, path, body), self._loop)
        while True:
            try:
                return future.result(timeout=POLL_S)
            except concurrent.futures.TimeoutError:
                if should_stop is not None and should_stop():
                    future.cancel()
                    raise Cancelled("cancelled while waiting for the backend") from None

    def model_name(self, should_stop: Callable[[], bool] | None = None) -> str:
        """The configured model, else the first the server lists (asked once)."""
        if self.model is None:
            listed = self.request("GET", "/v1/models", should_stop=should_stop)
            try:
                self.model = str(listed["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise BackendError(f"{self.base}/v1/models: malformed reply (no data[0].id)") from None
        return self.model

    def describe(self) -> str:
        return f"{self.config.kind} backend at {self.base}" + (f", model {self.model}" if self.model else "")

    def close(self) -> None:
        async def shutdown():
            if self._session is not None:
                await self._session.close()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)

    # ---- FIM ------------------------------------------------------------------------------------

    def completions_fim(self, prefix: str, suffix: str, max_middle_tokens: int, num_candidates: int, seed: int,
                        should_stop, extra: dict | None = None) -> list[RemoteInfill]:
        t0 = time.perf_counter()
        body = {"model": self.model_name(should_stop), "prompt": prefix, "suffix": suffix,
                "max_tokens": max_middle_tokens, "n": num_candidates, "seed": seed, "temperature": 0.2,
                "stream": False, **(extra or {})}
        reply = self.request("POST", "/v1/completions", body, should_stop)
        texts = [choice_text(c, "text") for c in _choices(reply, f"{self.base}/v1/completions")]
        return _infills(texts, reply, (time.perf_counter() - t0) * 1000)


class DgemmaBackend(HttpBackend):
    """A `dgemma serve`: canvas infilling on the server; denoising steps are passed along."""

    def infill(self, prefix: str, suffix: str, *, max_middle_tokens: int, num_candidates: int = 1,
               steps: int | None = None, entropy_bound: float | None = None, seed: int = 0,
               should_stop: Callable[[], bool] | None = None, one_line: bool = False,
               stop_when: Callable[[str], bool] | None = None) -> list[RemoteInfill]:
        extra = {"user": self.client_id}
        if steps is not None:
            extra["dgemma_steps"] = steps
        return self.completions_fim(prefix, suffix, max_middle_tokens, num_candidates, seed, should_stop, extra)


class OpenAIBackend(HttpBackend):
    """Prompt-level FIM on an OpenAI-compatible server. The first refusal of `suffix` (vLLM and
    SGLang answer 400 for models without FIM tokens) switches this backend to the chat prompt."""

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        self.use_chat = False

    def infill(self, prefix: str, suffix: str, *, max_middle_tokens: int, num_candidates: int = 1,
               steps: int | None = None, entropy_bound: float | None = None, seed: int = 0,
               should_stop: Callable[[], bool] | None = None, one_line: bool = False,
               stop_when: Callable[[str], bool] | None = None) -> list[RemoteInfill]:
        if not self.use_chat:
            try:
                return self.completions_fim(prefix, suffix, max_middle_tokens, num_candidates, seed, should_stop)
            except BackendError as error:
                if not refuses_suffix(str(error)):
                    raise
                log.info("%s does not take `suffix` (%s); using a chat prompt from now on", self.base, error)
                self.use_chat = True
        return self.chat_fim(prefix, suffix, max_middle_tokens, num_candidates, seed, should_stop)

    def chat_fim(self, prefix: str, suffix: str, max_middle_tokens: int, num_candidates: int, seed: int,
                 should_stop) -> list[RemoteInfill]:
        t0 = time.perf_counter()
        body = {"model": self.model_name(should_stop), "max_tokens": max_middle_tokens, "n": num_candidates,
                "seed": seed, "temperature": 0.2, "stream": False,
                "messages": [{"role": "system", "content": CHAT_SYSTEM.format(hole=HOLE)},
                             {"role": "user", "content": prefix + HOLE + suffix}]}
        reply = self.request("POST", "/v1/chat/completions", body, should_stop)
        texts = [middle_from_chat(choice_text(c, "message"), prefix)
                 for c in _choices(reply, f"{self.base}/v1/chat/completions")]
        return _infills(texts, reply, (time.perf_counter() - t0) * 1000)


DEFAULT_TIMEOUT_MS = 10_000


def backend_config(settings: Settings, flags: Settings) -> BackendConfig | None:
    """The remote backend the settings ask for (each unset setting falls back to its dgemma-ls flag),
    or None for the local engine."""
    kind = settings.backend or flags.backend or "local"
    if kind == "local":
        return None
    return BackendConfig(kind, settings.backend_url or flags.backend_url or "", settings.backend_model or flags.backend_model,
                         settings.backend_api_key_env or flags.backend_api_key_env,
                         settings.backend_timeout_ms or flags.backend_timeout_ms or DEFAULT_TIMEOUT_MS)


def make_backend(config: BackendConfig) -> HttpBackend:
    if config.kind == "dgemma":
        return DgemmaBackend(config)
    if config.kind == "openai":
        return OpenAIBackend(config)
    raise BackendError(f"unknown backend {config.kind!r}; use one of {', '.join(BACKENDS)}")


# ---- replies ------------------------------------------------------------------------------------


def _error_message(text: str) -> str:
    try:
        error = json.loads(text).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        return str(message)[:300] if message else text[:300]
    except (json.JSONDecodeError, AttributeError):
        return text[:300] or "(empty body)"


def _choices(reply: Any, url: str) -> list[dict]:
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
        raise BackendError(f"{url}: malformed reply (no choices)")
    return choices


def choice_text(choice: dict, kind: str) -> str:
    text = choice.get("text") if kind == "text" else (choice.get("message") or {}).get("content")
    if text is None and kind == "message":
        text = ""  # a chat reply may be empty (e.g. all of it went to a reasoning field)
    if not isinstance(text, str):
        raise BackendError(f"malformed reply: choice {choice.get('index', '?')} has no {kind} text")
    return text


def _infills(texts: Sequence[str], reply: dict, ms: float) -> list[RemoteInfill]:
    usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
    tokens = usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else 0
    per = tokens // max(len(texts), 1)
    # a remote server reports no denoising steps: one request counts as one forward here
    return [RemoteInfill(t, per, 1, float(per), ms) for t in texts]


def refuses_suffix(message: str) -> bool:
    """Whether an error says the server cannot do `suffix` (FIM) for this model."""
    return bool(re.search(r"HTTP (400|404|422|501)\b.*(suffix|fim|infill)", message, re.IGNORECASE | re.DOTALL))


_FENCE = re.compile(r"^\s*```[\w+-]*\n(.*?)\n?```\s*$", re.DOTALL)


def middle_from_chat(reply: str, prefix: str) -> str:
    """An instruction model's reply as a middle: the inside of a code fence, without the hole marker
    and without a repeat of the line the gap starts on (which chat models tend to rewrite whole).
    What runs on past the gap is trimmed later by postprocess (trim_overlap, cut_to_scope)."""
    fenced = _FENCE.match(reply)
    middle = fenced.group(1) if fenced else reply
    middle = middle.replace(HOLE, "")
    line_start = prefix[prefix.rfind("\n") + 1:]
    if line_start.strip() and middle.startswith(line_start):
        middle = middle[len(line_start):]
    return middle
