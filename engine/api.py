"""The engine as callers see it: load a checkpoint, generate text, fill a middle.

Owns the prompt KV cache that consecutive calls share (keystroke-by-keystroke editing
re-encodes only the tokens after the common prefix). Not thread-safe: one caller thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_model
from .config import GenerationConfig
from .errors import Cancelled, EngineError
from .generate import CompiledStep, Draft, denoise, generate_blocks
from .infill import candidate_lengths, extract_middle, plan_canvas, plan_fim, stack_plans
from .model import KVCache
from .sampler import CounterNoise, TorchNoise
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)

# the small model trained from scratch here (7.4 M parameters; the default until 2026-12-05, now
# `--model engine/default_model`); Engine.load(None) builds the embedded Gemma 3 model (engine.embedded)
SMALL_MODEL = Path(__file__).parent / "default_model"
# prefix-tail / suffix-head tokens clamped beside a hole: 4, 8, 16 and 32 gave the embedded model
# the same held-out edit similarity (docs/engine.md) and the step's cost grows with the canvas width
CANVAS_CONTEXT_TOKENS = 8
TRUNCATE_CHUNK = 128  # tokens: a too-long prompt loses whole chunks at its start (Engine.fit_prompt)


@dataclass
class Infill:
    text: str  # the middle, fillers and end-of-text removed
    tokens: int
    steps: int  # denoising steps its canvas took (its row's decoder passes)
    tokens_per_forward: float
    ms: float
    score: float  # mean log-probability of the middle's tokens
    hole: int  # hole length the middle was denoised in


@dataclass
class Continuation:
    text: str
    tokens: int
    steps: list[int]  # denoising steps per canvas
    decoder_passes: int  # summed over the canvases
    tokens_per_forward: float
    ms: float


def trim_line(text: str) -> str:
    """`text` up to the end of its first non-blank line, that line's newline excluded (a one-line
    middle ends where the suffix's newline is; what a token wrote past it is dropped)."""
    body = text.lstrip()
    return text[: len(text) - len(body) + body.index("\n")] if "\n" in body else text


def commit_width(model, gen: GenerationConfig, known: list[int]) -> int:
    """The committing canvas's width (the hole and what is clamped after it); too wide is an error."""
    width = gen.commit_hole + len(known)
    if width > model.config.canvas_length:
        raise EngineError(f"commit_hole + commit_head ({width}) exceed the canvas length {model.config.canvas_length}")
    return width


def commit_stops(tok: Tokenizer) -> set[int]:
    """The picks that end a committed middle: end of text, pad, a filler."""
    return set(tok.eos_ids) | {t for t in (tok.pad_id, tok.filler_id) if t is not None}


def commit_views(model, gen: GenerationConfig, clamped: torch.Tensor, generators: list[torch.Generator]):
    """One pass's canvases, rows b drawn from generators[b]: the hole (`commit_hole` noise positions)
    with `clamped` (B, K) after it, and with `commit_blind` a one-position noise canvas beside it.
    Returns the canvases and each one's noise token at its first position (B,) (never picked)."""
    V, dev = model.config.vocab_size, model.device
    holes, blinds = [], []
    for g in generators:  # per row: the hole's noise, then the blind canvas's
        holes.append(torch.randint(0, V, (1, gen.commit_hole), generator=g, device=dev))
        if gen.commit_blind:
            blinds.append(torch.randint(0, V, (1, 1), generator=g, device=dev))
    views = [torch.cat([torch.cat(holes), clamped], 1)] + ([torch.cat(blinds)] if blinds else [])
    return views, [view[:, 0] for view in views]


def pick_logits(model, gen: GenerationConfig, hiddens: list[torch.Tensor], noise: list[torch.Tensor]) -> torch.Tensor:
    """(B, V) scores at the views' first positions: the hole's logits, or with `commit_blind` the sum
    of both views' log-probabilities; each view's own noise token excluded (ignore_noise_tokens)."""
    rows = torch.arange(hiddens[0].shape[0], device=hiddens[0].device)
    scores = []
    for hidden, token in zip(hiddens, noise):
        logits = model.logits(hidden[:, 0])
        if gen.ignore_noise_tokens:
            logits[rows, token] = float("-inf")
        scores.append(logits)
    if len(scores) == 1:
        return scores[0]
    return sum(torch.log_softmax(s.float(), -1) for s in scores)


@torch.no_grad()
def commit_tokens(model, tok: Tokenizer, cache: KVCache, known: list[int], gen: GenerationConfig, *, limit: int,
                  seed: int, should_stop=None, done: Callable[[list[int]], bool] = lambda out: False,
                  committed: Callable[[int], None] = lambda token: None,
                  pending: list[int] = (), start: list[int] = (), generator: torch.Generator | None = None,
                  on_logits: Callable[[torch.Tensor], None] | None = None) -> tuple[list[int], int, float]:
    """Committing decoding (GenerationConfig.commit_hole) after what `cache` holds: each pass decodes
    a canvas of `commit_hole` uniform-noise positions right after the cache, then `known` clamped;
    takes the argmax at its first position (never that position's own noise token, with
    ignore_noise_tokens); the next pass encodes it into the cache in the same pass over the weights
    (DiffusionGemma.encode_then_decode; `committed(token)` hears it), so the cache ends holding all
    but the last token. Stops at end of text, pad or a filler there, once `done(tokens so far)` is
    true, or after `limit` tokens. `pending`: prompt tokens not in the cache yet, encoded by the
    first pass the same way. `start`: tokens already picked (a branch's first token), not in the
    cache yet either, fed with the first pass too. `generator` (default: seeded with `seed`) draws
    the noise; `on_logits` sees each pass's logits at the first position. Returns the tokens, the
    decoder passes and the summed log-probability of the picks (those in `start` not counted)."""
    commit_width(model, gen, known)
    if generator is None:
        generator = torch.Generator(device=model.device).manual_seed(seed)
    clamped = torch.tensor([known], dtype=torch.long, device=model.device)
    stops = commit_stops(tok)
    out: list[int] = list(start)
    passes, logprob = 0, 0.0
    if out and done(out):
        return out, passes, logprob
    while len(out) < limit:
        if should_stop is not None and should_stop():
            raise Cancelled("generation cancelled")
        views, noise = commit_views(model, gen, clamped, [generator])
        feed = list(pending) + list(start) if passes == 0 else out[-1:]
        if feed:  # the last token's encode and this pass in one read of the weights
            hiddens = model.encode_then_decode(torch.tensor([feed], device=model.device), views, cache)
            for token in feed:
                committed(token)
        else:
            context = model.decoder_context(cache, 1)
            hiddens = [model.decode_soft(view, context.keys, context.values, cache.length, None) for view in views]
        logits = pick_logits(model, gen, hiddens, noise)[0]
        if on_logits is not None:
            on_logits(logits)
        token = int(logits.argmax())
        logprob += float(torch.log_softmax(logits.float(), -1)[token])
        passes += 1
        if token in stops:
            break
        out.append(token)
        if done(out):
            break
    return out, passes, logprob


@torch.no_grad()
def commit_branches(model, tok: Tokenizer, cache: KVCache, known: list[int], gen: GenerationConfig,
                    firsts: list[int], *, limit: int, generator: torch.Generator, should_stop=None,
                    done: Callable[[int, list[int]], bool] = lambda branch, out: False
                    ) -> list[tuple[list[int], int, float]]:
    """commit_tokens for several branches at once, each started with its own first token after the
    prompt `cache` holds (left unchanged: the branches run in a copy, one row each, in lockstep, so
    a pass reads the weights once for all of them). Each row draws its noise from its own copy of
    `generator`'s state, so row b decides as commit_tokens(start=[firsts[b]], generator=a copy)
    would. A row stops as commit_tokens stops (`done(branch, tokens so far)`); the others go on.
    Returns (tokens, passes, summed log-probability of the picks after the first) per branch."""
    B = len(firsts)
    commit_width(model, gen, known)
    rows = cache.copy(B, capacity=cache.length + limit + 1)
    state = generator.get_state()
    generators = [torch.Generator(device=model.device) for _ in range(B)]
    for g in generators:
        g.set_state(state)
    clamped = torch.tensor([known] * B, dtype=torch.long, device=model.device).reshape(B, len(known))
    stops = commit_stops(tok)
    outs = [[t] for t in firsts]
    alive = [not done(b, outs[b]) for b in range(B)]
    passes, logprobs = [0] * B, [0.0] * B
    while any(alive) and min(len(outs[b]) for b in range(B) if alive[b]) < limit:
        if should_stop is not None and should_stop():
            raise Cancelled("generation cancelled")
        views, noise = commit_views(model, gen, clamped, generators)
        feed = torch.tensor([out[-1:] for out in outs], device=model.device)
        logits = pick_logits(model, gen, model.encode_then_decode(feed, views, rows), noise)
        logp = torch.log_softmax(logits.float(), -1)
        picks = logits.argmax(-1).tolist()
        for b, token in enumerate(picks):
            if not alive[b]:
                continue
            passes[b] += 1
            logprobs[b] += float(logp[b, token])
            if token in stops:
                alive[b] = False
                continue
            outs[b].append(token)
            if done(b, outs[b]) or len(outs[b]) >= limit:
                alive[b] = False
    return [(outs[b], passes[b], logprobs[b]) for b in range(B)]


def commit_known(tok: Tokenizer, suffix: list[int], head: int) -> list[int]:
    """What committing infilling clamps after its hole: the suffix's first `head` tokens, and end
    of text where the whole suffix fits (as the canvas plan marks a document's end)."""
    eos = tok.eos_ids[0] if tok.eos_ids else None
    return suffix[:head] + ([eos] if head and eos is not None and len(suffix) <= head else [])


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise EngineError(f"unknown device {device!r}; use cpu, cuda or auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} requested but no CUDA GPU is available")
    return device


class Engine:
    def __init__(self, model, config, generation: GenerationConfig, tokenizer: Tokenizer, root: Path):
        self.model, self.config, self.generation, self.tokenizer, self.root = (
            model, config, generation, tokenizer, root)
        self.compiled_step: CompiledStep | None = None  # compile() builds it; denoise runs it where it serves
        self.compile_status = ""  # what compile() did, for describe()
        self._cache: KVCache | None = None
        self._cached_ids: list[int] = []
        self.encoded_tokens = 0  # tokens actually encoded (prompts, committed middles), for reuse accounting
        self.quantize = "none"  # the weight quantization it was loaded with (Engine.load)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", dtype: str = "auto",
             compile: bool = False, quantize: str = "none",
             progress: Callable[[str], None] | None = None) -> "Engine":
        """Load a checkpoint directory or HF cache snapshot; None loads the embedded default model
        (built under the user's cache on first use: engine.embedded, `progress` hears its steps).

        `quantize`: none, int8, int4 or fp8: weight-only, as the weights stream in (engine.quantize).

        `compile`: also compile the denoising step now (Engine.compile); a failure leaves it eager.

        Loading leaves torch's CPU threads alone: they are the process's to set (engine.set_threads,
        called by the `dgemma` and `dgemma-ls` entry points)."""
        if path is None:
            from .embedded import materialize

            path = materialize(progress=progress)
        device = resolve_device(device)
        model, config, gen, root = load_model(path, dtype=dtype, device=device, quantize=quantize)
        tokenizer = Tokenizer(root / "tokenizer.json", bos_id=config.bos_token_id,
                              eos_ids=gen.eos_token_id or config.eos_ids, pad_id=config.pad_token_id)
        if tokenizer.vocab_size > config.vocab_size:
            raise EngineError(f"{root / 'tokenizer.json'}: {tokenizer.vocab_size} tokens but the model has "
                              f"{config.vocab_size} embeddings")
        engine = cls(model, config, gen, tokenizer, root)
        engine.quantize = quantize
        if compile:
            engine.compile()
        return engine

    def compile(self) -> bool:
        """torch.compile the denoising step for single-row requests (inline completion) and warm it
        up (docs/benchmarks.md: the gain); ~40 s the first time on a machine, ~10 s once
        inductor's on-disk cache holds the graph. Needs a C++ compiler on the CPU; any failure is
        logged and the engine stays eager. Returns whether the compiled step is in place.

        CPU only: on a GPU the counter-based fused sampler (kernels.denoise_sample) runs instead."""
        if self.model.device.type != "cpu":
            self.compile_status = (f"not compiled: the compiled step is the CPU path, this model is on "
                                   f"{self.model.device}")
            return False
        if self.generation.commit_hole:
            # committing infilling (the embedded Gemma 3 model) runs one-position passes eager; the
            # compiled step serves whole-canvas denoising only: compiling it would cost a core for nothing
            self.compile_status = "not compiled: this model fills by committing (eager one-token passes)"
            return False
        if self.quantize != "none":
            # measured with torchao 0.18 on the embedded model: int8 fails to compile (RecursionError),
            # int4 takes 157 s on a core; quantized weights are for memory (docs/quantization.md)
            self.compile_status = f"not compiled: {self.quantize} weights run eager"
            return False
        t0 = time.perf_counter()
        try:
            step = CompiledStep(self.model, self.generation)
        except Exception as error:  # noqa: BLE001 (no compiler, an unsupported op...: eager still works)
            self.compile_status = f"compile failed, eager: {error!r}"[:300]
            log.warning("compiling the denoising step failed; staying eager: %r", error)
            return False
        self.compiled_step = step  # only once it ran: a failed warm-up leaves the engine eager
        self.compile_status = f"denoising step compiled in {time.perf_counter() - t0:.0f} s"
        log.info("%s", self.compile_status)
        return True

    def describe(self) -> str:
        params = self.model.num_parameters()
        return (f"{self.root.name}: DiffusionGemma {params / 1e6:.1f}M params, {self.config.num_hidden_layers} "
                f"layers, {self.config.num_experts} experts top-{self.config.top_k_experts}, canvas "
                f"{self.config.canvas_length}, {str(self.model.dtype).removeprefix('torch.')} on {self.model.device}"
                + (f", weights {self.quantize}" if self.quantize != "none" else "")
                + (f"; {self.compile_status}" if self.compile_status else ""))

    # ---- prompt KV reuse -------------------------------------------------------------------

    def prefill(self, ids: list[int]) -> KVCache:
        """The cache holding exactly `ids`, re-encoding only what follows the longest shared prefix."""
        if not ids:
            raise EngineError("empty prompt: the encoder needs at least one token")
        cache = self._cache
        if cache is None or cache.batch != 1:
            cache = self._cache = KVCache(self.config, 1, self.model.dtype, self.model.device)
            self._cached_ids = []
        shared = 0
        for a, b in zip(self._cached_ids, ids):
            if a != b:
                break
            shared += 1
        cache.truncate(shared)
        new = ids[shared:]
        if new:
            self.model.encode(torch.tensor([new], device=self.model.device), cache)
            self.encoded_tokens += len(new)
        self._cached_ids = list(ids)
        return cache

    def fit_prompt(self, ids: list[int], limit: int) -> list[int]:
        """`ids` cut to at most `limit` tokens: bos, then the most recent prefix. The cut drops
        whole chunks of TRUNCATE_CHUNK tokens after bos, so while the user types at the end of a
        long prefix the kept window keeps its first token and prefill() reuses its KV cache; the
        window moves only once per chunk typed. (Keeping exactly the last `limit` tokens slid the
        window by a token per keystroke: a full re-encode of the prompt on every request.)"""
        if len(ids) <= limit:
            return ids
        keep = 1 if self.tokenizer.bos_id is not None and ids[:1] == [self.tokenizer.bos_id] else 0
        room = limit - keep
        chunk = max(1, min(TRUNCATE_CHUNK, room // 4))
        drop = -(-(len(ids) - limit) // chunk) * chunk
        return ids[:keep] + ids[keep + drop:]

    def _generation(self, steps, entropy_bound) -> GenerationConfig:
        gen = GenerationConfig(**{**self.generation.__dict__})
        if steps is not None:
            gen.max_denoising_steps = int(steps)
        if entropy_bound is not None:
            gen.entropy_bound = float(entropy_bound)
        try:
            gen.validate()
        except ValueError as e:
            raise EngineError(str(e)) from None
        return gen

    def _noise(self, seed: int | None, exact: bool):
        """exact: torch's global RNG, as transformers draws it. Otherwise the fused counter-based
        sampler on a GPU, and on the CPU (where hashing the noise costs more than drawing it) a
        private seeded generator."""
        if exact:
            if seed is not None:
                torch.manual_seed(seed)
            return TorchNoise(self.config.vocab_size)
        if self.model.device.type == "cuda":
            return CounterNoise(self.config.vocab_size, seed or 0)
        return TorchNoise(self.config.vocab_size, torch.Generator().manual_seed(seed or 0))

    # ---- public API ------------------------------------------------------------------------

    def continue_text(self, prompt: str, *, max_new_tokens: int | None = None, steps: int | None = None,
                      entropy_bound: float | None = None, seed: int | None = 0, exact: bool = False,
                      on_step: Callable[[Draft], None] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> Continuation:
        """The text after `prompt`, canvas by canvas. `exact=True` draws noise like transformers'
        generate (torch RNG)."""
        gen = self._generation(steps, entropy_bound)
        ids = ([self.tokenizer.bos_id] if self.tokenizer.bos_id is not None else []) + self.tokenizer.encode(prompt)
        if gen.commit_hole:
            return self._continue_committing(ids, gen, max_new_tokens or gen.max_new_tokens, seed or 0, on_step,
                                             should_stop)
        cache = self.prefill(ids)
        self._cached_ids = []  # generate commits canvases into the cache: do not reuse it blindly
        self._cache = None
        out = generate_blocks(self.model, torch.empty((1, 0), dtype=torch.long, device=self.model.device), gen,
                              noise=self._noise(seed, exact), cache=cache, max_new_tokens=max_new_tokens,
                              on_step=on_step, should_stop=should_stop, compiled=self.compiled_step)
        new = out.new_tokens[0].tolist()
        stop = set(gen.eos_token_id)
        text_ids = []
        for t in new:
            if t in stop:
                break
            text_ids.append(t)
        return Continuation(self.tokenizer.decode(text_ids), len(text_ids), out.steps, int(out.decoder_passes[0]),
                            float(out.tokens_per_forward[0]), out.ms)

    def _continue_committing(self, ids: list[int], gen: GenerationConfig, limit: int, seed: int, on_step,
                             should_stop) -> Continuation:
        """continue_text for a committing model (GenerationConfig.commit_hole): one token a decoder
        pass, nothing clamped after the hole. `on_step` sees each token as a one-position canvas
        (Draft canvas_index = its index), so callers that stream canvases stream tokens."""
        t0 = time.perf_counter()

        def done(out: list[int]) -> bool:
            if on_step is not None:
                token = torch.tensor([[out[-1]]])
                on_step(Draft(len(out) - 1, 1, 1, token, token, torch.ones_like(token, dtype=torch.bool)))
            return False

        ids = self.fit_prompt(ids, self.config.max_position_embeddings - limit - gen.commit_hole)
        out, passes, _ = self._commit(ids, [], gen, limit=limit, seed=seed, should_stop=should_stop, done=done)
        return Continuation(self.tokenizer.decode(out), len(out), [1] * passes, passes, len(out) / max(passes, 1),
                            (time.perf_counter() - t0) * 1000)

    @torch.no_grad()
    def draft(self, cache: KVCache, tail: list[int], limit: int) -> list[int]:
        """The causal encoder's greedy continuation after the cached prompt + `tail`: to the first
        newline, end of text or `limit` tokens. The cache is left holding exactly the prompt."""
        tok, model = self.tokenizer, self.model
        length = cache.length
        ids = tail or [self._cached_ids[-1]]
        if not tail:  # re-encode the prompt's last token for its next-token logits
            cache.truncate(length - 1)
        hidden = model.encode(torch.tensor([ids], device=model.device), cache)
        stops = set(tok.eos_ids) | ({tok.pad_id} if tok.pad_id is not None else set())
        out: list[int] = []
        while len(out) < limit:
            token = int(model.logits(hidden[:, -1]).argmax(-1))
            if token in stops or token == tok.filler_id:
                break
            out.append(token)
            if "\n" in tok.decode([token]):
                break
            hidden = model.encode(torch.tensor([[token]], device=model.device), cache)
        cache.truncate(length)
        return out

    def _seed_with_draft(self, cache: KVCache, rows, canvas: torch.Tensor, clamped: torch.Tensor):
        """Each row's hole starts with the encoder's draft of the middle, then fillers (ours: see
        GenerationConfig.encoder_draft); no position holds noise, so the decoder may keep any."""
        plan = rows[0]
        hole = plan.hole.stop - plan.hole.start
        draft = self.draft(cache, plan.canvas[: plan.hole.start], hole)
        seeded = canvas.clone()
        for i, p in enumerate(rows):
            n = p.hole.stop - p.hole.start
            ids = (draft + [self.tokenizer.filler_id] * n)[:n]
            seeded[i, p.hole] = torch.tensor(ids, device=canvas.device)
        return seeded, torch.zeros_like(clamped)

    def _commit(self, ids: list[int], known: list[int], gen: GenerationConfig, *, limit: int, seed: int,
                should_stop, done: Callable[[list[int]], bool], **options) -> tuple[list[int], int, float]:
        """commit_tokens after the prompt `ids` (already cut to fit), in the engine's own cache (the
        prompt's last token encoded with the first pass): it keeps what was committed, so the next
        prefill re-encodes only what changed. `options`: commit_tokens's."""
        pending = ids[-1:] if len(ids) > 1 else []  # encoded with the first decoder pass
        cache = self.prefill(ids[: len(ids) - len(pending)])
        return commit_tokens(self.model, self.tokenizer, cache, known, gen, limit=limit, seed=seed,
                             should_stop=should_stop, done=done, committed=self._committed, pending=pending,
                             **options)

    def _committed(self, token: int) -> None:
        """A token committing decoding encoded into the engine's cache."""
        self._cached_ids.append(token)
        self.encoded_tokens += 1

    def _infill_committing(self, pre: list[int], suf: list[int], gen: GenerationConfig, *, max_middle_tokens: int,
                           num_candidates: int, seed: int, one_line: bool, stop_when, should_stop, on_step,
                           t0: float) -> list[Infill]:
        """The middle by committing (commit_tokens), the suffix's first `commit_head` tokens clamped
        after the hole (+ end of text where the whole suffix fits). It ends at the end of the first
        non-blank line (`one_line`: the middle is cut before that line's newline) or once
        `stop_when(middle so far)` is true (the caller's scope has ended). Score: the mean
        log-probability of the picks (the stop's too).

        Candidates branch on the first token: the i-th candidate starts with the first pass's i-th
        likeliest token, then goes on greedily (one candidate: the greedy middle alone). In that
        order, the greedy middle first, not by score: the mean log-probability favours a branch
        that stops early (HumanEval single-line, three candidates through the server's syntax
        pick: 23/100 best score first). Deduplicated. `on_step` follows the first."""
        tok, model = self.tokenizer, self.model
        known = commit_known(tok, suf, gen.commit_head)
        prompt = ([tok.bos_id] if tok.bos_id is not None else []) + pre
        room = self.config.max_position_embeddings - max_middle_tokens - commit_width(model, gen, known)
        prompt = self.fit_prompt(prompt, room)
        stops = commit_stops(tok)

        def finish(out: list[int], passes: int, logprob: float) -> Infill:
            text = tok.decode(out)
            return Infill(trim_line(text) if one_line else text, len(out), passes, len(out) / max(passes, 1),
                          (time.perf_counter() - t0) * 1000, logprob / max(passes, 1), gen.commit_hole)

        def ended(branch: int):
            def done(out: list[int]) -> bool:
                text = tok.decode(out)
                if on_step is not None and branch == 0:
                    on_step(len(out), trim_line(text) if one_line else text)
                return (one_line and "\n" in text.lstrip()) or (stop_when is not None and stop_when(text))
            return done

        if num_candidates <= 1:
            return [finish(*self._commit(prompt, known, gen, limit=max_middle_tokens, seed=seed,
                                         should_stop=should_stop, done=ended(0)))]
        # the first pass once, on the whole prompt; then each branch from the prompt's cache, its
        # noise drawn on from where the first pass left it (branch 0 is the greedy middle exactly)
        generator = torch.Generator(device=model.device).manual_seed(seed)
        seen: list[torch.Tensor] = []
        self._commit(prompt, known, gen, limit=1, seed=seed, should_stop=should_stop, done=lambda out: False,
                     generator=generator, on_logits=seen.append)
        logp = torch.log_softmax(seen[0].float(), -1)
        firsts = logp.topk(num_candidates).indices.tolist()
        live = [t for t in firsts if t not in stops]
        runs = iter(commit_branches(model, tok, self.prefill(prompt), known, gen, live, limit=max_middle_tokens,
                                    generator=generator, should_stop=should_stop,
                                    done=lambda b, out: ended(firsts.index(live[b]))(out)) if live else [])
        found: dict[str, Infill] = {}
        for token in firsts:
            if token in stops:
                candidate = finish([], 1, float(logp[token]))
            else:
                out, passes, logprob = next(runs)
                candidate = finish(out, passes + 1, logprob + float(logp[token]))
            found.setdefault(candidate.text, candidate)
        return list(found.values())

    def infill(self, prefix: str, suffix: str, *, max_middle_tokens: int = 48, num_candidates: int = 1,
               steps: int | None = None, entropy_bound: float | None = None, seed: int = 0,
               mode: str = "canvas", context_tokens: int = CANVAS_CONTEXT_TOKENS, exact: bool = False,
               should_stop: Callable[[], bool] | None = None, one_line: bool = False,
               stop_when: Callable[[str], bool] | None = None,
               on_step: Callable[[int, str], None] | None = None) -> list[Infill]:
        """Fill the middle between `prefix` and `suffix`; candidates come best first, deduplicated.

        A checkpoint whose generation config sets `commit_hole` fills by committing (one candidate,
        the greedy one; `one_line` stops it at the end of its first line, `stop_when(text)` where
        the caller says: see _infill_committing);
        otherwise the hole is one canvas denoised whole."""
        t0 = time.perf_counter()
        if max_middle_tokens < 1:
            raise EngineError(f"max_middle_tokens must be >= 1, got {max_middle_tokens}")
        if mode not in ("canvas", "fim"):
            raise EngineError(f"unknown infill mode {mode!r}; use canvas or fim")
        tok = self.tokenizer
        gen = self._generation(steps, entropy_bound)
        pre, suf = tok.encode(prefix), tok.encode(suffix)
        if gen.commit_hole and mode == "canvas":
            return self._infill_committing(pre, suf, gen, max_middle_tokens=max_middle_tokens,
                                           num_candidates=num_candidates, seed=seed, one_line=one_line,
                                           stop_when=stop_when, should_stop=should_stop, on_step=on_step,
                                           t0=t0)
        eos = tok.eos_ids[0] if tok.eos_ids else None
        width = self.config.canvas_length
        hole_cap = max(1, min(max_middle_tokens, width - 2 * min(context_tokens, width // 8)))
        if mode == "fim":
            if not tok.has_fim:
                raise EngineError("this checkpoint's tokenizer has no FIM tokens; use mode='canvas'")
            lengths = [min(max_middle_tokens, self.config.canvas_length)]
            plans = [plan_fim(pre, suf, n, bos=tok.bos_id, fim_prefix=tok.fim_prefix_id,
                              fim_suffix=tok.fim_suffix_id, fim_middle=tok.fim_middle_id) for n in lengths]
        else:
            lengths = [hole_cap] if tok.filler_id is not None else candidate_lengths(hole_cap)
            longest = plan_canvas(pre, suf, max(lengths), bos=tok.bos_id, eos=eos, width=width,
                                  context=context_tokens)
            tail = longest.hole.start  # every row shares the prompt, so the same prefix tail
            plans = [plan_canvas(pre, suf, n, bos=tok.bos_id, eos=eos, width=width, context=context_tokens,
                                 tail=tail) for n in lengths]
        rows = [p for p in plans for _ in range(num_candidates)]
        prompt = plans[0].prompt
        prompt = self.fit_prompt(prompt, self.config.max_position_embeddings - max(len(p.canvas) for p in plans))
        cache = self.prefill(prompt)
        canvas_known, clamped = stack_plans(rows, tok.pad_id or 0, self.model.device)
        noise = self._noise(seed, exact)
        canvas = torch.where(clamped, canvas_known, noise.canvas(*canvas_known.shape, self.model.device))
        noised = None
        if gen.encoder_draft and mode == "canvas" and tok.filler_id is not None:
            canvas, noised = self._seed_with_draft(cache, rows, canvas, clamped)

        def report(draft: Draft):
            if on_step is not None:
                row = draft.argmax[0, rows[0].hole]
                on_step(draft.step, tok.decode(extract_middle(row, filler=tok.filler_id, stop_ids=set())))

        result = denoise(self.model, self.model.decoder_context(cache, len(rows)), cache.length, canvas, gen,
                         noise, clamped=clamped, on_step=report if on_step else None, should_stop=should_stop,
                         compiled=self.compiled_step, noised=noised)
        ms = (time.perf_counter() - t0) * 1000
        stop_ids = set(tok.eos_ids) | ({tok.pad_id} if tok.pad_id is not None else set())
        found: dict[str, Infill] = {}
        for i, plan in enumerate(rows):
            hole_tokens = result.argmax[i, plan.hole]
            middle = extract_middle(hole_tokens, filler=tok.filler_id, stop_ids=stop_ids)
            score = float(result.logprob[i, plan.hole].mean())
            text = tok.decode(middle)
            forwards = int(result.forwards[i])
            candidate = Infill(text, len(middle), forwards, len(middle) / max(forwards, 1), ms, score,
                               plan.hole.stop - plan.hole.start)
            if text not in found or found[text].score < score:
                found[text] = candidate
        return sorted(found.values(), key=lambda c: -c.score)
