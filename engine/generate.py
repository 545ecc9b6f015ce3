"""Block-autoregressive diffusion generation: prefill, denoise a canvas, commit it, repeat.

`denoise` refines one canvas (optionally with clamped, known positions: the infilling path);
`generate` is the outer loop, which in reference mode (TorchNoise) reproduces transformers'
DiffusionGemma `generate` token for token under the same seed. Knows token ids, not text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch

import kernels

from .config import GenerationConfig
from .errors import Cancelled
from .model import DecoderContext, DiffusionGemma, KVCache
from .sampler import StableAndConfident, TorchNoise, ignore_current_token, sample_step, temperature


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
    logprob: torch.Tensor  # (B, C) log p(argmax token) at the last step


@dataclass
class Generation:
    sequences: torch.Tensor  # (B, prompt + k * C), pad after eos
    new_tokens: torch.Tensor  # (B, k * C)
    forwards: torch.Tensor  # (B,)
    tokens_per_forward: torch.Tensor  # (B,)
    ms: float
    steps: list[int] = field(default_factory=list)  # denoising steps per canvas


@torch.no_grad()
def denoise(model: DiffusionGemma, context: DecoderContext, start: int, canvas: torch.Tensor,
            gen: GenerationConfig, noise, *, clamped: torch.Tensor | None = None, canvas_index: int = 0,
            on_step: Callable[[Draft], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Denoised:
    """Refine `canvas` (B, C) at positions [start, start + C) until stable and confident or out of steps.

    Clamped positions (B, C) keep their tokens: never renoised, never overwritten, always visible.
    A single row with a private-generator TorchNoise runs the compiled step (compile_step) when the
    model has one: the same decisions from the same draws, fused into one graph."""
    B, C = canvas.shape
    N = gen.max_denoising_steps
    stopper = StableAndConfident(gen.stability_threshold, gen.confidence_threshold)
    finished = torch.zeros(B, dtype=torch.bool, device=canvas.device)
    forwards = torch.zeros(B, dtype=torch.int32, device=canvas.device)
    free = None if clamped is None else ~clamped
    noised = torch.ones_like(canvas, dtype=torch.bool) if free is None else free  # hold fresh noise tokens
    fused = model.compiled_step if B == 1 and isinstance(noise, TorchNoise) and noise.generator is not None \
        else None
    if fused is not None:
        clamped = torch.zeros_like(canvas, dtype=torch.bool) if clamped is None else clamped
        free = ~clamped
        bound = torch.tensor(gen.entropy_bound, device=canvas.device)
        soft = torch.zeros(B, C, model.config.hidden_size, dtype=model.dtype, device=canvas.device)
    argmax, sc_logits = canvas, None
    for taken, step in enumerate(range(N, 0, -1), start=1):
        if should_stop is not None and should_stop():
            raise Cancelled("generation cancelled")
        forwards += ~finished
        if fused is not None:
            uniform, renoise_tokens = noise.uniforms(free), noise.renoise(B, C, canvas.device, step)
            t = torch.tensor(temperature(step, N, gen.t_min, gen.t_max), device=canvas.device)
            new_canvas, accepted, new_argmax, ent, soft, logprob = fused(
                canvas, context.keys, context.values, start, soft, clamped, noised, t, uniform, renoise_tokens,
                bound, gen.ignore_noise_tokens)
        else:
            processed = model.decoder_logits(canvas, context, start, sc_logits)
            processed.div_(temperature(step, N, gen.t_min, gen.t_max))  # (B, C, V)
            if gen.ignore_noise_tokens:
                ignore_current_token(processed, canvas, noised)
            sample, new_argmax, ent = noise.sample(processed, step, free)
            renoise_tokens = noise.renoise(B, C, canvas.device, step)
            new_canvas, accepted = kernels.entropy_accept(ent, canvas, sample, clamped, gen.entropy_bound,
                                                          renoise_tokens)
            if clamped is not None:
                new_argmax = torch.where(clamped, canvas, new_argmax)
            if finished.any():  # finished rows keep their state; only the batch keeps running
                processed = torch.where(finished[:, None, None], sc_logits, processed)
            sc_logits = processed  # fp32: soft_embedding takes its softmax in fp32 anyway (no round trip)
        noised = ~accepted if free is None else free & ~accepted
        if finished.any():
            new_argmax = torch.where(finished[:, None], argmax, new_argmax)
            new_canvas = torch.where(finished[:, None], canvas, new_canvas)
        # confidence over the free positions: clamped ones are known, not predicted
        mean_entropy = ent.mean(-1) if free is None else (ent * free).sum(-1) / free.sum(-1).clamp(min=1)
        finished |= stopper(new_argmax, mean_entropy)
        canvas, argmax = new_canvas, new_argmax
        if on_step is not None:
            on_step(Draft(canvas_index, taken, N, argmax, canvas, accepted))
        if finished.all():
            break
    if fused is None:
        logprob = torch.log_softmax(processed.float(), -1).gather(-1, argmax[..., None])[..., 0]
    return Denoised(argmax, forwards, logprob)


def fused_step(model: DiffusionGemma, canvas, ctx_keys, ctx_values, start, soft, clamped, noised, temperature,
               uniform, renoise_tokens, bound, ignore_noise_tokens: bool):
    """decode → logits → sample_step → the next step's self-conditioning input, as one function
    for torch.compile. Returns sample_step's outputs with the soft embedding (B, C, H) in place of
    the probabilities: softmax(processed) @ embedding, as model.soft_embedding computes it."""
    logits = model.logits(model.decode_soft(canvas, ctx_keys, ctx_values, start, soft))
    new_canvas, accepted, argmax, ent, probs, logprob = sample_step(
        logits, canvas, clamped, noised, temperature, uniform, renoise_tokens, bound, ignore_noise_tokens)
    weight = model.embed.weight
    next_soft = (probs.to(weight.dtype) @ weight) * model.embed_scale()
    return new_canvas, accepted, argmax, ent, next_soft, logprob


def compile_step(model: DiffusionGemma, gen: GenerationConfig, context: int = 300) -> float:
    """torch.compile `fused_step` with symbolic canvas width, prompt length and position, for one row
    (inline completion), and warm it up now; `denoise` then uses it. Returns seconds spent: ~40 s on
    one core the first time, less once inductor's on-disk cache holds the graph. Other shapes (several
    candidates, a one-token prompt) run eager (`eager_on_recompile`): no request waits on a compile."""
    t0 = time.perf_counter()
    model.compiled_step = None
    compiled = torch.compile(partial(fused_step, model), dynamic=True)
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
        compiled(canvas, keys, [torch.randn_like(k) for k in keys], max(context, W + 7), soft, clamped, ~clamped,
                 scalar(0.5), uniform, canvas.flip(-1), scalar(gen.entropy_bound), gen.ignore_noise_tokens)

    def step(*args):
        with torch.compiler.set_stance("eager_on_recompile"):
            return compiled(*args)

    step.graph = compiled  # the compiled function itself (tests check that shapes need no recompile)
    model.compiled_step = step  # only once it ran: a failed warm-up leaves the model eager
    return time.perf_counter() - t0


@torch.no_grad()
def generate(model: DiffusionGemma, prompt: torch.Tensor, gen: GenerationConfig, *, noise=None,
             cache: KVCache | None = None, max_new_tokens: int | None = None,
             on_step: Callable[[Draft], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> Generation:
    """Generate after `prompt` (B, T). With `cache`, `prompt` holds only the tokens not yet in it.

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
                         canvas_index=canvas_index, on_step=on_step, should_stop=should_stop)
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
