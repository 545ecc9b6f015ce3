"""Several callers' holes denoised together: one decoder pass per step for every row of a batch.

Each request keeps its own prompt (and its own KV cache, reused keystroke by keystroke through a
small LRU keyed by client); the batch pads the cached prompts to one length and masks the
padding, and each row's canvas sits at its own positions. The denoising loop is `denoise`
itself, given a decoder that knows the ragged layout. Knows token ids and text, not HTTP.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .api import CANVAS_CONTEXT_TOKENS, Engine, Infill, commit_known, commit_tokens, commit_width
from .errors import EngineError
from .generate import Draft, denoise
from .infill import candidate_lengths, extract_middle, plan_canvas, stack_plans
from .model import DiffusionGemma, KVCache


@dataclass
class Hole:
    """One caller's request: the text around the hole and who is asking (for prompt-KV reuse)."""

    prefix: str
    suffix: str
    max_middle_tokens: int = 48
    client: str | None = None  # whose prompt cache to reuse; None: reuse none, keep none


@dataclass
class BatchStats:
    prompt_tokens: list[int]  # per hole: tokens of its encoder prompt
    encoded_tokens: list[int]  # per hole: of those, how many were encoded now (the rest came from its cache)
    truncated: list[bool]  # per hole: the prompt lost tokens at its start to fit the model
    prefill_ms: float = 0.0  # encoding every hole's prompt (the rest of the batch's time is denoising)


class PromptCaches:
    """At most `capacity` prompt KV caches, one per client, least recently used evicted: each
    client's next keystroke re-encodes only what follows the prefix its previous request shared."""

    def __init__(self, capacity: int = 8):
        if capacity < 1:
            raise EngineError(f"the prompt cache needs room for at least one client, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[KVCache, list[int]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def prefill(self, model: DiffusionGemma, client: str | None, ids: list[int]) -> tuple[KVCache, int]:
        """The client's cache holding exactly `ids`, and how many tokens were encoded to get it.
        Client None: a cache of its own, not kept."""
        if not ids:
            raise EngineError("empty prompt: the encoder needs at least one token")
        if client is None:
            cache = KVCache(model.config, 1, model.dtype, model.device)
            model.encode(torch.tensor([ids], device=model.device), cache)
            return cache, len(ids)
        if client in self._entries:
            self._entries.move_to_end(client)
            cache, cached = self._entries[client]
        else:
            if len(self._entries) >= self.capacity:
                self._entries.popitem(last=False)
            cache, cached = KVCache(model.config, 1, model.dtype, model.device), []
        shared = 0
        for a, b in zip(cached, ids):
            if a != b:
                break
            shared += 1
        cache.truncate(shared)
        if shared < len(ids):
            model.encode(torch.tensor([ids[shared:]], device=model.device), cache)
        self._entries[client] = (cache, list(ids))
        return cache, len(ids) - shared


@dataclass
class RaggedContext:
    """Per-layer prompt keys/values of several rows padded to one length (B, Hkv, L, D), which of
    those positions are real (B, L) per layer, where each row's canvas starts (B,), and which canvas
    positions are real (B, C): rows of other widths are padded."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    real: list[torch.Tensor]
    starts: torch.Tensor
    canvas_real: torch.Tensor


class RaggedDecoder:
    """What `denoising_step` needs of a model (decoder_logits, soft_embedding), for rows whose
    prompts differ in length: each row's canvas at its own positions, padding masked out."""

    def __init__(self, model: DiffusionGemma):
        self.model, self.config = model, model.config
        self.soft_embedding = model.soft_embedding

    def decoder_logits(self, canvas: torch.Tensor, context: RaggedContext, start, soft=None) -> torch.Tensor:
        model = self.model
        C = canvas.shape[1]
        positions = context.starts[:, None] + torch.arange(C, device=canvas.device)[None]  # (B, C)
        x = model.self_condition(model.embed_tokens(canvas), soft)

        def attend(i, spec, q, k, v):
            keys = torch.cat([context.keys[i], k], 2)  # (B, Hkv, L + C, D)
            values = torch.cat([context.values[i], v], 2)
            visible = torch.cat([context.real[i], context.canvas_real], 1)  # (B, L + C)
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[:, None, None, :], scale=1.0,
                                                  enable_gqa=True)

        return model.logits(model.run(x, positions, attend, decoder=True))  # (B, C, V)


def ragged_context(model: DiffusionGemma, caches: list[KVCache], canvas_real: torch.Tensor) -> RaggedContext:
    """Each cache as its row's decoder sees it (sliding layers: the last window-1 positions), padded."""
    W, device = model.config.sliding_window, model.device
    keys, values, real = [], [], []
    for i, spec in enumerate(model.config.layers):
        spans = [(max(0, c.length - W + 1) if spec.sliding else 0, c.length) for c in caches]
        L = max(b - a for a, b in spans)
        k0 = caches[0].keys[i]
        k = k0.new_zeros(len(caches), k0.shape[1], L, k0.shape[3])  # (B, Hkv, L, D)
        v = torch.zeros_like(k)
        mask = torch.zeros(len(caches), L, dtype=torch.bool, device=device)
        for row, (cache, (a, b)) in enumerate(zip(caches, spans)):
            k[row, :, : b - a] = cache.keys[i][0, :, a:b]
            v[row, :, : b - a] = cache.values[i][0, :, a:b]
            mask[row, : b - a] = True
        keys.append(k)
        values.append(v)
        real.append(mask)
    starts = torch.tensor([c.length for c in caches], device=device)
    return RaggedContext(keys, values, real, starts, canvas_real)


def infill_batch(engine: Engine, holes: list[Hole], caches: PromptCaches, *, steps: int | None = None,
                 entropy_bound: float | None = None, seed: int = 0,
                 context_tokens: int = CANVAS_CONTEXT_TOKENS,
                 should_stop: Callable[[], bool] | None = None,
                 on_step: Callable[[int, int, list[str]], None] | None = None) -> tuple[list[Infill], BatchStats]:
    """The best middle for each hole, all denoised in one batch (canvas inpainting, as Engine.infill).

    `on_step(step, max_steps, drafts)` sees every hole's current middle after each step.
    `should_stop` is polled every step; when it says stop, the batch ends with engine.Cancelled."""
    if not holes:
        return [], BatchStats([], [], [])
    t0 = time.perf_counter()
    model, tok = engine.model, engine.tokenizer
    gen = engine._generation(steps, entropy_bound)
    if gen.commit_hole:
        return _commit_each(engine, holes, caches, gen, seed=seed, should_stop=should_stop, on_step=on_step)
    eos = tok.eos_ids[0] if tok.eos_ids else None
    width = engine.config.canvas_length
    rows, owners, row_caches = [], [], []
    stats = BatchStats([], [], [])
    for index, hole in enumerate(holes):
        if hole.max_middle_tokens < 1:
            raise EngineError(f"max_middle_tokens must be >= 1, got {hole.max_middle_tokens}")
        pre, suf = tok.encode(hole.prefix), tok.encode(hole.suffix)
        hole_cap = max(1, min(hole.max_middle_tokens, width - 2 * min(context_tokens, width // 8)))
        lengths = [hole_cap] if tok.filler_id is not None else candidate_lengths(hole_cap)
        longest = plan_canvas(pre, suf, max(lengths), bos=tok.bos_id, eos=eos, width=width, context=context_tokens)
        plans = [plan_canvas(pre, suf, n, bos=tok.bos_id, eos=eos, width=width, context=context_tokens,
                             tail=longest.hole.start) for n in lengths]
        prompt = engine.fit_prompt(plans[0].prompt,
                                   engine.config.max_position_embeddings - max(len(p.canvas) for p in plans))
        cache, encoded = caches.prefill(model, hole.client, prompt)
        # a copy of what this hole's rows need, taken before a later hole of the same client re-prefills
        snapshot = cache.copy()
        stats.prompt_tokens.append(len(prompt))
        stats.encoded_tokens.append(encoded)
        stats.truncated.append(len(prompt) < len(plans[0].prompt))
        for plan in plans:
            rows.append(plan)
            owners.append(index)
            row_caches.append(snapshot)
    stats.prefill_ms = (time.perf_counter() - t0) * 1000
    canvas_known, clamped = stack_plans(rows, tok.pad_id or 0, model.device)  # (B, C)
    canvas_real = torch.zeros_like(clamped)
    for r, plan in enumerate(rows):
        canvas_real[r, : len(plan.canvas)] = True
    context = ragged_context(model, row_caches, canvas_real)
    noise = engine._noise(seed, exact=False)
    canvas = torch.where(clamped, canvas_known, noise.canvas(*canvas_known.shape, model.device))
    stop_ids = set(tok.eos_ids) | ({tok.pad_id} if tok.pad_id is not None else set())

    def report(draft: Draft):
        first_rows = [owners.index(i) for i in range(len(holes))]
        drafts = [tok.decode(extract_middle(draft.argmax[r, rows[r].hole], filler=tok.filler_id, stop_ids=stop_ids))
                  for r in first_rows]
        on_step(draft.step, draft.max_steps, drafts)

    result = denoise(RaggedDecoder(model), context, 0, canvas, gen, noise, clamped=clamped,
                     on_step=report if on_step else None, should_stop=should_stop)
    ms = (time.perf_counter() - t0) * 1000
    best: list[Infill | None] = [None] * len(holes)
    for r, plan in enumerate(rows):
        middle = extract_middle(result.argmax[r, plan.hole], filler=tok.filler_id, stop_ids=stop_ids)
        score = float(result.logprob[r, plan.hole].mean())
        forwards = int(result.forwards[r])
        candidate = Infill(tok.decode(middle), len(middle), forwards, len(middle) / max(forwards, 1), ms, score,
                           plan.hole.stop - plan.hole.start)
        i = owners[r]
        if best[i] is None or best[i].score < score:
            best[i] = candidate
    return best, stats


def _commit_each(engine: Engine, holes: list[Hole], caches: PromptCaches, gen, *, seed: int, should_stop,
                 on_step) -> tuple[list[Infill], BatchStats]:
    """infill_batch for a committing model (GenerationConfig.commit_hole): the holes one after
    another, each committed token by token (engine.api.commit_tokens) after its client's cached
    prompt, which is cut back to the prompt afterwards (the cache stays what its client sent).
    `on_step` sees each token as a step of its hole, the other holes' middles as they stand."""
    model, tok = engine.model, engine.tokenizer
    stats = BatchStats([], [], [])
    results: list[Infill] = []
    drafts = [""] * len(holes)
    for index, hole in enumerate(holes):
        t0 = time.perf_counter()
        if hole.max_middle_tokens < 1:
            raise EngineError(f"max_middle_tokens must be >= 1, got {hole.max_middle_tokens}")
        known = commit_known(tok, tok.encode(hole.suffix), gen.commit_head)
        full = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(hole.prefix)
        room = engine.config.max_position_embeddings - hole.max_middle_tokens - commit_width(model, gen, known)
        prompt = engine.fit_prompt(full, room)
        cache, encoded = caches.prefill(model, hole.client, prompt)
        stats.prompt_tokens.append(len(prompt))
        stats.encoded_tokens.append(encoded)
        stats.truncated.append(len(prompt) < len(full))
        stats.prefill_ms += (time.perf_counter() - t0) * 1000

        def done(out: list[int], index=index) -> bool:
            if on_step is not None:
                drafts[index] = tok.decode(out)
                on_step(len(out), hole.max_middle_tokens, list(drafts))
            return False

        try:
            out, passes, logprob = commit_tokens(model, tok, cache, known, gen, limit=hole.max_middle_tokens,
                                                 seed=seed, should_stop=should_stop, done=done)
        finally:
            cache.truncate(len(prompt))
        results.append(Infill(tok.decode(out), len(out), passes, len(out) / max(passes, 1),
                              (time.perf_counter() - t0) * 1000, logprob / max(passes, 1), gen.commit_hole))
    return results, stats
