"""The wire formats: llama.cpp's `/infill` and OpenAI's completions and chat completions.

Parses request bodies into plain dataclasses (a wrong type or value is a BadRequest naming the
field) and shapes the replies. Field names and defaults follow llama.cpp's tools/server/README.md
and the OpenAI API reference; fields that steer a sampler we do not have (top_k, temperature...)
are accepted and ignored. Knows JSON, not the engine or HTTP.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_PREDICT = 1024  # tokens a request may ask for (the engine caps a middle at its canvas anyway)
MAX_CANDIDATES = 8
CANVAS_OPTION = "dgemma_stream_canvas"  # opt-in: stream the canvas after every denoising step
STEPS_OPTION = "dgemma_steps"  # denoising steps per canvas for this request (default: the checkpoint's)


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind


def error_body(message: str, status: int, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    """OpenAI's error object; llama.cpp's carries the same `message`, `type` and a numeric `code`."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def _get(body: dict, name: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise BadRequest(f"'{name}' must be {_kind_names(kinds)}, got a boolean", name)
    if not isinstance(value, kinds):
        raise BadRequest(f"'{name}' must be {_kind_names(kinds)}, got {type(value).__name__}", name)
    return value


def _kind_names(kinds) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
             dict: "an object"}
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _count(body: dict, name: str, default: int, low: int, high: int) -> int:
    value = _get(body, name, int, default)
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be in [{low}, {high}], got {value}", name)
    return value


def _stop(body: dict) -> list[str]:
    stop = _get(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or an array of strings", "stop")
    return [s for s in stop if s]


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def cut_at_indent(text: str, n_indent: int) -> str:
    """llama.cpp's n_indent: the middle ends before the first later line indented less than n_indent."""
    if n_indent <= 0:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() and len(line) - len(line.lstrip(" \t")) < n_indent:
            return "\n".join(lines[:i]) + "\n"
    return text


# ---- llama.cpp /infill ------------------------------------------------------------------------


@dataclass
class InfillRequest:
    prefix: str  # input_extra chunks, input_prefix, then `prompt` (the start of the middle)
    suffix: str
    n_predict: int
    n_indent: int
    t_max_predict_ms: int
    cache_prompt: bool
    stream: bool
    stream_canvas: bool
    response_fields: list[str] | None
    id_slot: int


def parse_infill(body: dict, default_predict: int) -> InfillRequest:
    extra = _get(body, "input_extra", list, [])
    chunks = []
    for i, chunk in enumerate(extra):
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text", ""), str):
            raise BadRequest(f"'input_extra[{i}]' must be an object with a string 'text'", "input_extra")
        chunks.append(chunk.get("text", ""))
    fields = _get(body, "response_fields", list, None)
    if fields is not None and not all(isinstance(f, str) for f in fields):
        raise BadRequest("'response_fields' must be an array of strings", "response_fields")
    n_predict = _count(body, "n_predict", default_predict, -1, MAX_PREDICT)
    return InfillRequest(
        prefix="".join(chunks) + _get(body, "input_prefix", str, "") + _get(body, "prompt", str, ""),
        suffix=_get(body, "input_suffix", str, ""),
        n_predict=default_predict if n_predict == -1 else n_predict,
        n_indent=_count(body, "n_indent", 0, 0, 1024),
        t_max_predict_ms=_count(body, "t_max_predict_ms", 0, 0, 3_600_000),
        cache_prompt=_get(body, "cache_prompt", bool, True),
        stream=_get(body, "stream", bool, False),
        stream_canvas=_get(body, CANVAS_OPTION, bool, False),
        response_fields=fields,
        id_slot=_get(body, "id_slot", int, -1),
    )


def pick_fields(reply: dict, fields: list[str] | None) -> dict:
    """llama.cpp's response_fields: only the named fields, a nested one named by its path ("timings/prompt_n")
    and keyed by that path; fields the reply lacks are left out."""
    if fields is None:
        return reply
    out = {}
    for path in fields:
        value: Any = reply
        for part in path.split("/"):
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            out[path] = value
    return out


def infill_reply(content: str, model: str, *, stopped_by_eos: bool, tokens: int, prompt_tokens: int,
                 encoded_tokens: int, prefill_ms: float, ms: float, truncated: bool, id_slot: int,
                 batch: int) -> dict:
    predict_ms = max(ms - prefill_ms, 1e-6)
    return {
        "index": 0,
        "content": content,
        "id_slot": id_slot,
        "stop": True,
        "model": model,
        "tokens_predicted": tokens,
        "tokens_evaluated": prompt_tokens,
        "tokens_cached": prompt_tokens - encoded_tokens,
        "truncated": truncated,
        "stop_type": "eos" if stopped_by_eos else "limit",
        "stopping_word": "",
        "timings": {
            "prompt_n": encoded_tokens,
            "prompt_ms": prefill_ms,
            "prompt_per_token_ms": prefill_ms / max(encoded_tokens, 1),
            "prompt_per_second": encoded_tokens / max(prefill_ms / 1000, 1e-6),
            "predicted_n": tokens,
            "predicted_ms": predict_ms,
            "predicted_per_token_ms": predict_ms / max(tokens, 1),
            "predicted_per_second": tokens / (predict_ms / 1000),
        },
        "dgemma": {"batch": batch},  # holes denoised together with this one
    }


# ---- OpenAI ---------------------------------------------------------------------------------


@dataclass
class CompletionRequest:
    prompt: str
    suffix: str | None  # not None: fill in the middle
    max_tokens: int
    n: int
    stop: list[str]
    stream: bool
    stream_canvas: bool
    user: str | None
    seed: int
    steps: int | None


def _model(body: dict, served: str) -> None:
    model = _get(body, "model", str, "")
    if model and model != served:
        raise BadRequest(f"the model '{model}' does not exist; this server serves '{served}'", "model", 404,
                         "model_not_found")


def parse_completion(body: dict, served: str) -> CompletionRequest:
    _model(body, served)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string (or an array of one string)", "prompt")
    return CompletionRequest(
        prompt=prompt,
        suffix=_get(body, "suffix", str, None),
        max_tokens=_count(body, "max_tokens", 16, 1, MAX_PREDICT),
        n=_count(body, "n", 1, 1, MAX_CANDIDATES),
        stop=_stop(body),
        stream=_get(body, "stream", bool, False),
        stream_canvas=_get(body, CANVAS_OPTION, bool, False),
        user=_get(body, "user", str, None),
        seed=_get(body, "seed", int, 0),
        steps=None if body.get(STEPS_OPTION) is None else _count(body, STEPS_OPTION, 8, 1, 1024),
    )


@dataclass
class ChatRequest:
    messages: list[dict]
    max_tokens: int
    stop: list[str]
    stream: bool
    stream_canvas: bool
    user: str | None
    seed: int


def parse_chat(body: dict, served: str) -> ChatRequest:
    _model(body, served)
    messages = _get(body, "messages", list, None)
    if not messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"'messages[{i}]' must be an object with a string 'role'", "messages")
        content = m.get("content") or ""
        if isinstance(content, list):  # content parts: only text parts carry anything for this model
            if not all(isinstance(p, dict) for p in content):
                raise BadRequest(f"'messages[{i}].content' parts must be objects", "messages")
            content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
        if not isinstance(content, str):
            raise BadRequest(f"'messages[{i}].content' must be a string or an array of parts", "messages")
        clean.append({"role": m["role"], "content": content})
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return ChatRequest(
        messages=clean,
        max_tokens=_count({"max_tokens": max_tokens}, "max_tokens", 256, 1, MAX_PREDICT),
        stop=_stop(body),
        stream=_get(body, "stream", bool, False),
        stream_canvas=_get(body, CANVAS_OPTION, bool, False),
        user=_get(body, "user", str, None),
        seed=_get(body, "seed", int, 0),
    )


def chat_template(root: Path) -> str | None:
    """The checkpoint's own chat template (chat_template.jinja or tokenizer_config.json), if any."""
    path = root / "chat_template.jinja"
    if path.exists():
        return path.read_text()
    config = root / "tokenizer_config.json"
    if config.exists():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def chat_prompt(messages: list[dict], template: str | None) -> str:
    """The conversation as the model's prompt: its chat template (rendered sandboxed, bos left to the
    engine), or for a checkpoint without one (the embedded code model) a plain transcript."""
    if template is not None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token="")
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def completion_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:24]}"


def completion_reply(rid: str, model: str, texts: list[tuple[str, str]], prompt_tokens: int, tokens: int) -> dict:
    """texts: (text, finish_reason) per choice."""
    return {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": f} for i, (t, f) in enumerate(texts)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens},
    }


def completion_chunk(rid: str, model: str, text: str, finish: str | None, index: int = 0) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]}


def chat_reply(rid: str, model: str, text: str, finish: str, prompt_tokens: int, tokens: int) -> dict:
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens},
    }


def chat_chunk(rid: str, model: str, delta: dict, finish: str | None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def canvas_event(step: int, max_steps: int, draft: str, index: int = 0) -> dict:
    """One denoising step's canvas (the opt-in `dgemma_stream_canvas` stream): the whole middle as the
    model currently reads it, refined at every step rather than appended to."""
    return {"object": "dgemma.canvas", "index": index, "step": step, "max_steps": max_steps, "canvas": draft}
