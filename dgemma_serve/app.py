"""The HTTP service (aiohttp): routes, the bearer key, size limits, SSE streams, disconnects.

Every request becomes a scheduler Job; a client that goes away cancels its job (aiohttp
cancels the handler: `handler_cancellation=True`). Replies are shaped by `protocol`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engine import Cancelled, Engine, EngineError
from engine.batch import Hole

from . import protocol as p
from .scheduler import Job, QueueFull, Scheduler

log = logging.getLogger(__name__)

CLIENT_HEADER = "X-Dgemma-Client"  # whose prompt KV cache a request reuses (else user / id_slot / address)
RETRY_AFTER_S = 1


@dataclass
class Options:
    api_key: str | None = None
    max_request_bytes: int = 1 << 20
    default_predict: int = 48  # /infill's n_predict when the request leaves it out (or sends -1)


class Service:
    def __init__(self, engine: Engine, scheduler: Scheduler, options: Options):
        self.engine, self.scheduler, self.options = engine, scheduler, options
        self.model_id = engine.root.name
        self.template = p.chat_template(engine.root)
        self.started = int(time.time())

    # ---- plumbing ------------------------------------------------------------------------------

    async def body(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            raise p.BadRequest(f"the request body is larger than {self.options.max_request_bytes} bytes",
                               None, 413) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise p.BadRequest(f"the request body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise p.BadRequest("the request body must be a JSON object")
        return body

    def client(self, request: web.Request, named: str | None) -> str:
        return request.headers.get(CLIENT_HEADER) or named or f"address-{request.remote}"

    def submit(self, *jobs: Job) -> None:
        try:
            self.scheduler.submit(*jobs)
        except QueueFull as full:
            raise p.BadRequest(f"the server is busy: {full}; retry shortly", None, 503, "server_busy") from None

    async def wait(self, *jobs: Job) -> list[Any]:
        """Queue the jobs and wait for them."""
        self.submit(*jobs)
        return await self.results(*jobs)

    async def results(self, *jobs: Job) -> list[Any]:
        """The queued jobs' results; a cancelled wait (the client left) cancels them."""
        try:
            return list(await asyncio.gather(*(asyncio.wrap_future(j.future) for j in jobs)))
        except BaseException:
            for job in jobs:
                job.cancel()
            raise

    def step_sink(self, events: asyncio.Queue, index: int = 0) -> Callable[[int, int, str], None]:
        """A callback for the engine thread that hands each step's draft to this request's loop."""
        loop = asyncio.get_running_loop()
        return lambda step, max_steps, draft: loop.call_soon_threadsafe(
            events.put_nowait, p.canvas_event(step, max_steps, draft, index))

    async def stream(self, request: web.Request, jobs: list[Job], events: asyncio.Queue,
                     finish: Callable[[list[Any]], list[dict]], done_marker: bool) -> web.StreamResponse:
        """SSE: every event the engine thread queues while the jobs run, then `finish(results)`'s events."""
        self.submit(*jobs)  # a full queue is a 503 before the stream starts
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        waiting = asyncio.ensure_future(self.results(*jobs))
        getter = None
        try:
            await response.prepare(request)
            while True:
                getter = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({waiting, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await send_event(response, getter.result())
                    continue
                getter.cancel()
                break
            while not events.empty():
                await send_event(response, events.get_nowait())
            try:
                results = waiting.result()
            except (Cancelled, EngineError) as error:  # the stream has begun: the error is its last event
                await send_event(response, p.error_body(str(error), 500, "server_error"))
                return response
            for event in finish(results):
                await send_event(response, event)
            if done_marker:
                await response.write(b"data: [DONE]\n\n")
        finally:
            for task in (waiting, getter):
                if task is not None and not task.done():
                    task.cancel()
        return response

    # ---- routes --------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        s = self.scheduler
        return web.json_response({"status": "ok", "model": self.model_id, "waiting": s.waiting,
                                  "batches": s.batches, "batched_holes": s.batched_holes, "cancelled": s.cancelled,
                                  "cached_clients": len(s.caches)})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": self.started, "owned_by": "dgemma",
             "meta": {"description": self.engine.describe()}}]})

    async def infill(self, request: web.Request) -> web.StreamResponse:
        """llama.cpp's /infill, as llama.vim and llama.vscode send it."""
        req = p.parse_infill(await self.body(request), self.options.default_predict)
        client = self.client(request, f"slot-{req.id_slot}" if req.id_slot >= 0 else None) if req.cache_prompt else None
        if req.n_predict == 0:  # the plugins' warm-up: encode the extra context, predict nothing
            await self.wait(Job(run=lambda engine, stop: self.warm(engine, req.prefix, client)))
            return web.json_response(p.pick_fields(self.infill_reply(req, None, ""), req.response_fields))
        deadline = time.monotonic() + req.t_max_predict_ms / 1000 if req.t_max_predict_ms else None
        events: asyncio.Queue = asyncio.Queue()
        job = Job(hole=Hole(req.prefix, req.suffix, req.n_predict, client), deadline=deadline,
                  on_step=self.step_sink(events) if req.stream and req.stream_canvas else None)

        def finish(results) -> list[dict]:
            content = p.cut_at_indent(results[0].text, req.n_indent)
            return [p.pick_fields(self.infill_reply(req, results[0], content), req.response_fields)]

        if req.stream:
            return await self.stream(request, [job], events, finish, done_marker=False)
        return web.json_response(finish(await self.wait(job))[0])

    def warm(self, engine: Engine, prefix: str, client: str | None) -> None:
        tok = engine.tokenizer
        ids = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(prefix)
        if client is not None and ids:
            limit = engine.config.max_position_embeddings // 2
            self.scheduler.caches.prefill(engine.model, client, engine.fit_prompt(ids, limit))

    def infill_reply(self, req: p.InfillRequest, outcome, content: str) -> dict:
        if outcome is None:
            return p.infill_reply("", self.model_id, stopped_by_eos=False, tokens=0, prompt_tokens=0, encoded_tokens=0,
                                  prefill_ms=0.0, ms=0.0, truncated=False, id_slot=req.id_slot, batch=0)
        stopped_by_eos = not outcome.timed_out and outcome.tokens < req.n_predict
        return p.infill_reply(content, self.model_id, stopped_by_eos=stopped_by_eos,
                              tokens=max(outcome.tokens, 0), prompt_tokens=max(outcome.prompt_tokens, 0),
                              encoded_tokens=max(outcome.encoded_tokens, 0), prefill_ms=outcome.prefill_ms,
                              ms=outcome.ms, truncated=outcome.truncated, id_slot=req.id_slot,
                              batch=outcome.batch_size)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """OpenAI /v1/completions: with `suffix` the middle (canvas infilling), else a continuation."""
        req = p.parse_completion(await self.body(request), self.model_id)
        rid = p.completion_id("cmpl")
        events: asyncio.Queue = asyncio.Queue()
        canvas = req.stream and req.stream_canvas
        if req.suffix is not None:
            client = self.client(request, req.user)
            jobs = [Job(hole=Hole(req.prompt, req.suffix, req.max_tokens, client), steps=req.steps,
                        on_step=self.step_sink(events, i) if canvas else None) for i in range(req.n)]

            def finish(results) -> list[dict]:
                texts = []
                for r in results:
                    text, stopped = p.cut_at_stop(r.text, req.stop)
                    texts.append((text, "stop" if stopped or r.tokens < req.max_tokens else "length"))
                if req.stream:
                    return [p.completion_chunk(rid, self.model_id, t, f, i) for i, (t, f) in enumerate(texts)]
                return [p.completion_reply(rid, self.model_id, texts, results[0].prompt_tokens,
                                           sum(max(r.tokens, 0) for r in results))]
        else:
            if req.n != 1:
                raise p.BadRequest("'n' > 1 is supported for fill-in-the-middle (with 'suffix') only", "n")
            jobs = [self.generation_job(req.prompt, req.max_tokens, req.seed, events, canvas, req.stream,
                                        lambda delta: p.completion_chunk(rid, self.model_id, delta, None))]

            def finish(results) -> list[dict]:
                text, stopped = p.cut_at_stop(results[0]["text"], req.stop)
                reason = "stop" if stopped or results[0]["tokens"] < req.max_tokens else "length"
                if req.stream:
                    return [p.completion_chunk(rid, self.model_id, text[len(results[0]["sent"]()):], reason)]
                return [p.completion_reply(rid, self.model_id, [(text, reason)], results[0]["prompt_tokens"],
                                           results[0]["tokens"])]

        if req.stream:
            return await self.stream(request, jobs, events, finish, done_marker=True)
        return web.json_response(finish(await self.wait(*jobs))[0])

    async def chat(self, request: web.Request) -> web.StreamResponse:
        req = p.parse_chat(await self.body(request), self.model_id)
        rid = p.completion_id("chatcmpl")
        prompt = p.chat_prompt(req.messages, self.template)
        events: asyncio.Queue = asyncio.Queue()
        if req.stream:
            events.put_nowait(p.chat_chunk(rid, self.model_id, {"role": "assistant", "content": ""}, None))
        job = self.generation_job(prompt, req.max_tokens, req.seed, events, req.stream and req.stream_canvas,
                                  req.stream, lambda delta: p.chat_chunk(rid, self.model_id, {"content": delta}, None))

        def finish(results) -> list[dict]:
            out = results[0]
            text, stopped = p.cut_at_stop(out["text"], req.stop)
            reason = "stop" if stopped or out["tokens"] < req.max_tokens else "length"
            if req.stream:
                return [p.chat_chunk(rid, self.model_id, {"content": text[len(out["sent"]()):]}, reason)]
            return [p.chat_reply(rid, self.model_id, text, reason, out["prompt_tokens"], out["tokens"])]

        if req.stream:
            return await self.stream(request, [job], events, finish, done_marker=True)
        return web.json_response(finish(await self.wait(job))[0])

    def generation_job(self, prompt: str, max_tokens: int, seed: int, events: asyncio.Queue, canvas: bool,
                       stream: bool, delta_event: Callable[[str], dict]) -> Job:
        """A continuation on the engine thread. Streaming sends text as each canvas is committed (a
        block of canvas_length tokens) and, with `canvas`, every denoising step's draft of the block."""
        loop = asyncio.get_running_loop()
        tok = self.engine.tokenizer
        stop_ids = set(tok.eos_ids)
        state = {"blocks": [], "last": None, "index": 0, "sent": ""}

        def put(event: dict) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def text_of(blocks: list[list[int]]) -> tuple[str, int]:
            """The text of these canvases up to eos, cut at max_tokens (a canvas may overshoot it)."""
            ids = []
            for t in (t for block in blocks for t in block):
                if t in stop_ids or len(ids) == max_tokens:
                    break
                ids.append(t)
            return tok.decode(ids), len(ids)

        def on_step(draft) -> None:
            if draft.canvas_index != state["index"]:  # the previous canvas is committed
                state["blocks"].append(state["last"])
                state["index"] = draft.canvas_index
                text, _ = text_of(state["blocks"])
                if stream and text.startswith(state["sent"]) and not text.endswith("\ufffd") and text != state["sent"]:
                    put(delta_event(text[len(state["sent"]):]))
                    state["sent"] = text
            state["last"] = draft.argmax[0].tolist()
            if canvas:
                put(p.canvas_event(draft.step, draft.max_steps, tok.decode(state["last"])))

        def run(engine: Engine, should_stop: Callable[[], bool]) -> dict:
            engine.continue_text(prompt, max_new_tokens=max_tokens, steps=self.scheduler.steps, seed=seed,
                                 should_stop=should_stop, on_step=on_step)
            text, tokens = text_of(state["blocks"] + [state["last"]])
            if not text.startswith(state["sent"]):  # never contradict what was streamed
                text = state["sent"]
            return {"text": text, "tokens": tokens, "prompt_tokens": len(tok.encode(prompt)) + (tok.bos_id is not None),
                    "sent": lambda: state["sent"]}

        return Job(run=run)


async def send_event(response: web.StreamResponse, event: dict) -> None:
    await response.write(f"data: {json.dumps(event)}\n\n".encode())


def build_app(engine: Engine, scheduler: Scheduler, options: Options) -> web.Application:
    service = Service(engine, scheduler, options)

    @web.middleware
    async def guard(request: web.Request, handler):
        if options.api_key is not None and request.path != "/health":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {options.api_key}".encode()):
                return web.json_response(p.error_body("missing or wrong API key (Authorization: Bearer ...)", 401,
                                                      "authentication_error"), status=401)
        try:
            return await handler(request)
        except p.BadRequest as error:
            headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status == 503 else None
            return web.json_response(p.error_body(error.message, error.status, error.kind, error.param),
                                     status=error.status, headers=headers)
        except (Cancelled, EngineError) as error:
            return web.json_response(p.error_body(str(error), 500, "server_error"), status=500)

    app = web.Application(middlewares=[guard], client_max_size=options.max_request_bytes)
    app["service"] = service
    app.router.add_get("/health", service.health)
    app.router.add_get("/v1/health", service.health)
    app.router.add_get("/v1/models", service.models)
    app.router.add_get("/models", service.models)
    app.router.add_post("/infill", service.infill)
    app.router.add_post("/v1/completions", service.completions)
    app.router.add_post("/completions", service.completions)
    app.router.add_post("/v1/chat/completions", service.chat)
    app.router.add_post("/chat/completions", service.chat)
    return app
