"""Block-autoregressive diffusion generation: prefill, denoise a canvas, commit it, repeat.

`denoising_step` is one step, defined once: decode -> logits -> temperature -> ignore-noise ->
sample -> entropy -> accept/renoise -> the next step's self-conditioning logits. `denoise` repeats it
on one canvas until stable and confident (optionally with clamped, known positions: the
infilling path); `CompiledStep` is its torch.compile'd form, which the Engine owns;
`generate_blocks` is the outer loop, which in reference mode (TorchNoise) reproduces
transformers' DiffusionGemma `generate` token for token under the same seed. Knows token ids,
not text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import torch

import kernels

from .config import GenerationConfig
from .errors import Cancelled
from .model import DecoderContext, DiffusionGemma, KVCache
from .sampler import Drawn, Draws, StableAndConfident, TorchNoise, ignore_current_token, temperature


@dataclass
class Draft:
    """What a per-step callback sees: the current argmax canvas (B, C) and where we are."""

    canvas_index: int
    step: int  # denoising steps taken so far on this canvas (1-based)
    max_steps: int
    argmax: torch.Tensor
    canvas: torch.Tensor  # (B, C) the next step's input: accepted tokens, the rest renoised
    accepted: torch.Tensor  # (B, C) bool: positions accepted this step


@dataclass
class Denoised:
    argmax: torch.Tensor  # (B, C) final canvas
    forwards: torch.Tensor  # (B,) decoder passes each row needed
    logprob: torch.Tensor  # (B, C) log p(argmax token) at the row's last step


@dataclass
class Generation:
    sequences: torch.Tensor  # (B, prompt + k * C), pad after eos
    new_tokens: torch.Tensor  # (B, k * C)
    decoder_passes: torch.Tensor  # (B,) summed over the row's canvases
    tokens_per_forward: torch.Tensor  # (B,)
    ms: float
    steps: list[int] = field(default_factory=list)  # denoising steps per canvas


class Step(NamedTuple):
    """One denoising step's outcome for a canvas (B, C)."""

    canvas: torch.Tensor  # (B, C) the next step's input: accepted tokens, the other free positions renoised
    accepted: torch.Tensor  # (B, C) bool
    argmax: torch.Tensor  # (B, C) the most likely tokens, clamped positions keep theirs
    entropy: torch.Tensor  # (B, C) fp32, 0 where clamped
    processed: torch.Tensor  # (B, C, V) fp32 tempered logits: the next step's self-conditioning signal


def denoising_step(model: DiffusionGemma, canvas: torch.Tensor, context: DecoderContext, start: int,
                   soft: torch.Tensor | None, clamped: torch.Tensor | None, noised: torch.Tensor,
                   temperature: float | torch.Tensor, bound: float | torch.Tensor, ignore_noise_tokens: bool,
                   draws: Draws) -> Step:
    """One step on canvas (B, C) at positions [start, start + C): decode with the self-conditioning
    input `soft` (B, C, H) (the last step's tempered logits embedded, None on the first step),
    temper the logits, forbid the noise tokens `noised` (B, C) hold, sample with `draws` (the noise
    source's op for this step), accept the positions the entropy bound admits and renoise the rest;
    clamped positions (B, C) keep their tokens. Returns the tempered logits too: the next step's
    self-conditioning signal, which `denoise` embeds only when a next step runs. `denoise` runs it
    eager; CompiledStep is the same function compiled."""
    logits = model.decoder_logits(canvas, context, start, soft)  # (B, C, V) fp32
    processed = logits.div_(temperature)
    if ignore_noise_tokens:
        ignore_current_token(processed, canvas, noised)
    free = None if clamped is None else ~clamped
    sampled = draws.sample(processed, free)
    next_canvas, accepted = kernels.entropy_accept(sampled.entropy, canvas, sampled.sample, clamped, bound,
                                                   draws.renoise())
    argmax = sampled.argmax if clamped is None else torch.where(clamped, canvas, sampled.argmax)
    return Step(next_canvas, accepted, argmax, sampled.entropy, processed)


@torch.no_grad()
def denoise(model: DiffusionGemma, context: DecoderContext, start: int, canvas: torch.Tensor,
            gen: GenerationConfig, noise, *, clamped: torch.Tensor | None = None, canvas_index: int = 0,
            on_step: Callable[[Draft], None] | None = None,
            should_stop: Callable[[], bool] | None = None, compiled: CompiledStep | None = None,
            noised: torch.Tensor | None = None) -> Denoised:
    """Refine `canvas` (B, C) at positions [start, start + C) until stable and confident or out of steps.

    Clamped positions (B, C) keep their tokens: never renoised, never overwritten, always visible.
    `noised` (B, C) marks the free positions that hold fresh uniform noise (default: all free ones);
    a seeded canvas (an encoder draft) holds guesses there instead.
    `compiled` runs the steps it serves (one row, a private-generator TorchNoise): the same
    function, so the same decisions from the same draws."""
    B = canvas.shape[0]
    N = gen.max_denoising_steps
    stopper = StableAndConfident(gen.stability_threshold, gen.confidence_threshold)
    finished = torch.zeros(B, dtype=torch.bool, device=canvas.device)
    forwards = torch.zeros(B, dtype=torch.int32, device=canvas.device)
    free = None if clamped is None else ~clamped
    if noised is None:  # which free positions hold fresh noise tokens
        noised = torch.ones_like(canvas, dtype=torch.bool) if free is None else free
    run = partial(denoising_step, model)
    if compiled is not None and compiled.serves(canvas, noise):
        run, context = compiled, compiled.context(context)
    argmax, processed = canvas, None
    for taken, step in enumerate(range(N, 0, -1), start=1):
        if should_stop is not None and should_stop():
            raise Cancelled("generation cancelled")
        forwards += ~finished
        soft = None if processed is None else model.soft_embedding(processed)  # (B, C, H)
        out = run(canvas, context, start, soft, clamped, noised, temperature(step, N, gen.t_min, gen.t_max),
                  gen.entropy_bound, gen.ignore_noise_tokens, noise.draws(step, canvas, free))
        noised = ~out.accepted if free is None else free & ~out.accepted
        new_canvas, new_argmax, new_processed = out.canvas, out.argmax, out.processed
        if finished.any():  # finished rows keep their state; only the batch keeps running
            keep = finished[:, None]
            new_canvas, new_argmax = torch.where(keep, canvas, new_canvas), torch.where(keep, argmax, new_argmax)
            new_processed = torch.where(keep[..., None], processed, new_processed)
        # confidence over the free positions: clamped ones are known, not predicted
        mean_entropy = out.entropy.mean(-1) if free is None else \
            (out.entropy * free).sum(-1) / free.sum(-1).clamp(min=1)
        finished |= stopper(new_argmax, mean_entropy)
        canvas, argmax, processed = new_canvas, new_argmax, new_processed
        if on_step is not None:
            on_step(Draft(canvas_index, taken, N, argmax, canvas, out.accepted))
        if finished.all():
            break
    logprob = torch.log_softmax(processed, -1).gather(-1, argmax[..., None])[..., 0]
    return Denoised(argmax, forwards, logprob)


class CompiledStep:
    """`denoising_step` compiled by torch.compile for one row (inline completion) with symbolic
    canvas width, prompt length and position, warmed up when built: ~40 s on one core the first
    time, less once inductor's on-disk cache holds the graph (`backend`: torch.compile's; the tests
    also trace it with "aot_eager", no code generation). The Engine owns it (Engine.compile)
    and hands it to `denoise`, which runs it for the steps it serves. Other shapes (several
    candidates, a one-token prompt) run eager (`eager_on_recompile`): no request waits on a compile."""

    def __init__(self, model: DiffusionGemma, gen: GenerationConfig, context: int = 300, backend: str = "inductor"):
        self.graph = torch.compile(partial(step_of_tensors, model), dynamic=True, backend=backend)
        config = model.config
        C = config.canvas_length - 1  # sizes distinct from each other and > 1: nothing specialises
        W = config.sliding_window
        g = torch.Generator(device=model.device).manual_seed(0)
        keys = []
        for spec in config.layers:
            n = W - 1 if spec.sliding else max(context, W + 7)
            keys.append(torch.randn(1, spec.num_kv_heads, n, spec.head_dim, generator=g, device=model.device)
                        .to(model.dtype))
        canvas = torch.randint(0, config.vocab_size, (1, C), generator=g, device=model.device)
        clamped = torch.zeros_like(canvas, dtype=torch.bool)
        clamped[:, : C // 3] = True
        soft = torch.zeros(1, C, config.hidden_size, dtype=model.dtype, device=model.device)
        uniform = torch.rand((1, C), generator=g, device=model.device)
        scalar = partial(torch.tensor, device=model.device)
        with torch.no_grad():
            self.graph(canvas, keys, [torch.randn_like(k) for k in keys], max(context, W + 7), soft, clamped,
                       ~clamped, scalar(0.5), scalar(gen.entropy_bound), gen.ignore_noise_tokens, uniform,
                       canvas.flip(-1))
        self.hidden_size, self.dtype = config.hidden_size, model.dtype

    @staticmethod
    def serves(canvas: torch.Tensor, noise) -> bool:
        """One row drawn by a private generator: the shapes and the noise the graph was built for."""
        return canvas.shape[0] == 1 and isinstance(noise, TorchNoise) and noise.generator is not None

    @staticmethod
    def context(context: DecoderContext) -> DecoderContext:
        """Fresh contiguous tensors, once per canvas: a cache slice's strides and storage offset
        (0 for a prompt shorter than the window) would fail the graph's guards."""
        return DecoderContext([k.clone(memory_format=torch.contiguous_format) for k in context.keys],
                              [v.clone(memory_format=torch.contiguous_format) for v in context.values])

    def __call__(self, canvas, context: DecoderContext, start, soft, clamped, noised, temperature, bound,
                 ignore_noise_tokens: bool, draws: Drawn) -> Step:
        """denoising_step's arguments after the model; the graph takes tensors for the rest."""
        B, C = canvas.shape
        if clamped is None:
            clamped = torch.zeros_like(canvas, dtype=torch.bool)
        if soft is None:  # the first step: a zero signal, as the model takes None
            soft = torch.zeros(B, C, self.hidden_size, dtype=self.dtype, device=canvas.device)
        scalar = partial(torch.tensor, device=canvas.device)
        with torch.compiler.set_stance("eager_on_recompile"):
            return Step(*self.graph(canvas, context.keys, context.values, start, soft, clamped, noised,
                                    scalar(temperature), scalar(bound), ignore_noise_tokens, draws.uniform,
                                    draws.renoise_tokens))


def step_of_tensors(model: DiffusionGemma, canvas, keys, values, start, soft, clamped, noised, temperature, bound,
                     ignore_noise_tokens: bool, uniform, renoise_tokens) -> tuple:
    """denoising_step with the context and the draws as the tensors they hold: what torch.compile traces."""
    return tuple(denoising_step(model, canvas, DecoderContext(keys, values), start, soft, clamped, noised,
                                temperature, bound, ignore_noise_tokens, Drawn(uniform, renoise_tokens)))


@torch.no_grad()
def generate_blocks(model: DiffusionGemma, prompt: torch.Tensor, gen: GenerationConfig, *, noise=None,
                    cache: KVCache | None = None, max_new_tokens: int | None = None,
                    on_step: Callable[[Draft], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, compiled: CompiledStep | None = None) -> Generation:
    """Generate after `prompt` (B, T) canvas by canvas. With `cache`, `prompt` holds only the
    tokens not yet in it.

    Canvases are committed by encoding their argmax tokens (as the reference and vLLM do)."""
    t0 = time.perf_counter()
    B = prompt.shape[0]
    C = model.config.canvas_length
    noise = noise or TorchNoise(model.config.vocab_size)
    if cache is None:
        cache = KVCache(model.config, B, model.dtype, prompt.device)
    max_new = max_new_tokens or gen.max_new_tokens
    eos = torch.tensor(gen.eos_token_id, dtype=torch.long, device=prompt.device)
    sequences = prompt
    finished_seq = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    forwards = torch.zeros(B, dtype=torch.int32, device=prompt.device)
    steps = []
    pending = prompt
    for canvas_index in range(-(-max_new // C)):
        if pending.shape[1]:
            model.encode(pending, cache)
        canvas = noise.canvas(B, C, prompt.device)
        result = denoise(model, model.decoder_context(cache, B), cache.length, canvas, gen, noise,
                         canvas_index=canvas_index, on_step=on_step, should_stop=should_stop, compiled=compiled)
        forwards += torch.where(finished_seq, torch.zeros_like(result.forwards), result.forwards)
        steps.append(int(result.forwards.max()))
        block = result.argmax.clone()
        has_eos = torch.isin(block, eos).any(-1) if len(gen.eos_token_id) else torch.zeros_like(finished_seq)
        if gen.pad_token_id is not None:
            block[finished_seq] = gen.pad_token_id
            is_eos = torch.isin(block, eos)
            seen = is_eos.cumsum(-1)
            after_eos = (seen > 0) & ~((seen == 1) & is_eos)
            block[after_eos & has_eos[:, None] & ~finished_seq[:, None]] = gen.pad_token_id
        sequences = torch.cat([sequences, block], dim=-1)
        finished_seq |= has_eos
        if finished_seq.all():
            break
        pending = block
    new_tokens = sequences[:, prompt.shape[1]:]
    valid = (new_tokens != gen.pad_token_id).sum(-1) if gen.pad_token_id is not None else \
        torch.full((B,), new_tokens.shape[1], device=prompt.device)
    return Generation(sequences, new_tokens, forwards, valid / forwards.clamp(min=1),
                      (time.perf_counter() - t0) * 1000, steps)
