"""How a denoising step draws: the temperature schedule, the noise sources, their sampling ops,
and the stable-and-confident stop.

A noise source gives a canvas's starting noise and, for each step, its `draws`: the sampling
op `denoising_step` (engine/generate.py) applies to the step's tempered logits, and the tokens
it renoises with. Three sources, one step:
- `TorchNoise()` (reference mode): torch's global RNG in transformers' exact order (randint
  canvas, then per step multinomial + randint), so a seeded run reproduces its `generate`
  token for token;
- `TorchNoise(generator)` (the CPU path): a private generator draws one uniform per position
  and the renoise tokens before the step, which samples by inverse CDF: a pure function of its
  inputs (`Drawn`), so the engine can compile the whole step;
- `CounterNoise` (the GPU path): Gumbel-max noise and renoise tokens from a counter-based hash,
  no RNG state; its sampling op is `kernels.denoise_sample`, one fused kernel on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

import kernels
from kernels.reference import counter_hash


class Sampled(NamedTuple):
    """What a sampling op returns for processed logits (B, C, V): each (B, C)."""

    sample: torch.Tensor  # drawn tokens
    argmax: torch.Tensor  # most likely tokens
    entropy: torch.Tensor  # fp32, 0 at positions not drawn


class Draws(Protocol):
    """One step's noise: its sampling op, then (in that order, for the global RNG) its renoise tokens."""

    def sample(self, processed: torch.Tensor, rows: torch.Tensor | None) -> Sampled:
        """processed (B, C, V) tempered logits, drawn at the positions in `rows` (None: all)."""

    def renoise(self) -> torch.Tensor:
        """(B, C) tokens for the positions not accepted."""


def temperature(step: int, num_steps: int, t_min: float, t_max: float) -> float:
    """Linear schedule; `step` counts the steps remaining (num_steps .. 1), so it starts at t_max."""
    return t_min + (t_max - t_min) * (step / num_steps)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position, (..., V) -> (...) fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return entropy_of(logp.exp(), logp)


def entropy_of(probs: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """-sum p log p over the last dim; a -inf logit (ignore_noise_tokens) contributes 0, not
    0 * -inf = nan (a nan entropy ranks nowhere and is never accepted)."""
    return -torch.where(probs > 0, probs * logp, 0.0).sum(-1)


def ignore_current_token(logits: torch.Tensor, canvas: torch.Tensor, where: torch.Tensor):
    """In place: logits (B, C, V) of `canvas`'s own token -> -inf at positions `where` (B, C)."""
    index = canvas[..., None]
    current = logits.gather(-1, index)
    logits.scatter_(-1, index, current.masked_fill(where[..., None], float("-inf")))


def inverse_cdf(processed: torch.Tensor, uniform: torch.Tensor, rows: torch.Tensor | None = None) -> Sampled:
    """Sample processed logits (B, C, V) fp32 at the given uniforms (B, C): the token where the
    CDF crosses u, counted (= searchsorted's left insertion point) so that it fuses into one pass.
    Traceable. `rows` (B, C) bool: the positions drawn (entropy 0 elsewhere)."""
    V = processed.shape[-1]
    logp = torch.log_softmax(processed, dim=-1)  # (B, C, V)
    probs = logp.exp()
    cdf = probs.cumsum(-1)  # (B, C, V)
    sample = (cdf < uniform[..., None] * cdf[..., -1:]).sum(-1).clamp(max=V - 1)
    entropy = entropy_of(probs, logp)
    return Sampled(sample, processed.argmax(-1), entropy if rows is None else torch.where(rows, entropy, 0.0))


def multinomial(processed: torch.Tensor) -> Sampled:
    """Sample processed logits (B, C, V) with torch.multinomial on torch's global RNG: the
    reference's own draw, for token-for-token parity."""
    B, C, V = processed.shape
    logp = torch.log_softmax(processed, dim=-1, dtype=torch.float32)  # (B, C, V)
    probs = logp.exp()
    sample = torch.multinomial(probs.view(-1, V), num_samples=1).view(B, C)
    return Sampled(sample, processed.argmax(-1), entropy_of(probs, logp))


def on_rows(sample, processed: torch.Tensor, rows: torch.Tensor | None) -> Sampled:
    """`sample` (processed (1, N, V) -> Sampled) run on the positions in `rows` only (clamped
    ones are never accepted, so never need a draw); zeros elsewhere. None: every position."""
    if rows is None:
        return sample(processed)
    drawn = sample(processed[rows][None])  # (1, N) each
    B, C, _ = processed.shape
    out = Sampled(*(torch.zeros((B, C), dtype=t.dtype, device=processed.device) for t in drawn))
    for full, part in zip(out, drawn):
        full[rows] = part[0]
    return out


@dataclass
class Drawn:
    """One step's noise drawn ahead of it: a uniform per position (B, C) fp32 and the renoise
    tokens (B, C). Sampling from it is a pure function of the step's inputs (what torch.compile
    traces)."""

    uniform: torch.Tensor
    renoise_tokens: torch.Tensor

    def sample(self, processed: torch.Tensor, rows: torch.Tensor | None) -> Sampled:
        if rows is None or torch.compiler.is_compiling():
            return inverse_cdf(processed, self.uniform, rows)
        # eager: the free rows only (every row costs ~20 % more at inline-completion widths); a
        # boolean gather's shape depends on the data, so the compiled graph samples every row and
        # masks: the same tokens
        return on_rows(lambda free: inverse_cdf(free, self.uniform[rows][None]), processed, rows)

    def renoise(self) -> torch.Tensor:
        return self.renoise_tokens


class TorchNoise:
    """Reference-compatible noise from torch's RNG: the global one (seed it with torch.manual_seed),
    or a private `generator`, which keeps concurrent users' draws apart."""

    def __init__(self, vocab_size: int, generator: torch.Generator | None = None):
        self.vocab_size, self.generator = vocab_size, generator

    def canvas(self, batch: int, length: int, device) -> torch.Tensor:
        return torch.randint(0, self.vocab_size, (batch, length), device=device, generator=self.generator)

    def draws(self, step: int, canvas: torch.Tensor, rows: torch.Tensor | None) -> Draws:
        """Step `step`'s draws for `canvas` (B, C), sampling the positions in `rows` (None: all)."""
        if self.generator is None:
            return _GlobalDraws(self, canvas)
        return Drawn(self.uniforms(canvas, rows), self.canvas(*canvas.shape, canvas.device))

    def uniforms(self, canvas: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """One uniform per position in `rows` from the private generator, in row-major order; 0
        elsewhere: (B, C) fp32. (One per row of the vocabulary: multinomial's exponential race
        costs ~10x more on a CPU.)"""
        if rows is None:
            return torch.rand(canvas.shape, generator=self.generator, device=canvas.device)
        out = torch.zeros(rows.shape, dtype=torch.float32, device=rows.device)
        out[rows] = torch.rand((1, int(rows.sum()), 1), generator=self.generator, device=rows.device).view(-1)
        return out


class _GlobalDraws:
    """Draws on torch's global RNG, taken when the step asks, in the reference's order: the
    sample (multinomial), then the renoise tokens (randint)."""

    def __init__(self, noise: TorchNoise, canvas: torch.Tensor):
        self.noise, self.shape, self.device = noise, canvas.shape, canvas.device

    def sample(self, processed: torch.Tensor, rows: torch.Tensor | None) -> Sampled:
        return on_rows(multinomial, processed, rows)

    def renoise(self) -> torch.Tensor:
        return self.noise.canvas(*self.shape, self.device)


class CounterNoise:
    """Stateless noise keyed by (seed, canvas index, step, position): fused sampling, reproducible anywhere."""

    def __init__(self, vocab_size: int, seed: int):
        self.vocab_size, self.seed, self.canvas_index = vocab_size, seed, 0

    def _tokens(self, batch: int, length: int, device, stream: int) -> torch.Tensor:
        h = counter_hash(self.seed ^ (stream * 0x9E3779B1), self.canvas_index * 1_000_003, batch, length, device)
        return h % self.vocab_size

    def canvas(self, batch: int, length: int, device) -> torch.Tensor:
        self.canvas_index += 1
        return self._tokens(batch, length, device, stream=0)

    def draws(self, step: int, canvas: torch.Tensor, rows: torch.Tensor | None) -> Draws:
        B, C = canvas.shape
        return _CounterDraws(self.seed, self.canvas_index * 4099 + step, self._tokens(B, C, canvas.device, step + 1))


@dataclass
class _CounterDraws:
    seed: int
    key: int  # (canvas index, step): the Gumbel noise of row r is keyed by key * rows + r
    renoise_tokens: torch.Tensor

    def _sample(self, processed: torch.Tensor) -> Sampled:
        B, C, _ = processed.shape
        return Sampled(*kernels.denoise_sample(processed, 1.0, seed=self.seed, offset=self.key * B * C))

    def sample(self, processed: torch.Tensor, rows: torch.Tensor | None) -> Sampled:
        return on_rows(self._sample, processed, rows)

    def renoise(self) -> torch.Tensor:
        return self.renoise_tokens


class StableAndConfident:
    """Stop a row when its argmax canvas equals the last `stability` ones and its mean entropy is low."""

    def __init__(self, stability: int, confidence: float):
        self.stability, self.confidence = stability, confidence
        self.history = None  # (stability, B, C)

    def __call__(self, argmax: torch.Tensor, mean_entropy: torch.Tensor) -> torch.Tensor:
        if self.stability == 0:
            stable = torch.ones(argmax.shape[0], dtype=torch.bool, device=argmax.device)
        else:
            if self.history is None:
                self.history = torch.full((self.stability, *argmax.shape), -1, dtype=argmax.dtype,
                                          device=argmax.device)
            stable = (self.history == argmax[None]).all(-1).all(0)
            self.history = torch.roll(self.history, shifts=-1, dims=0)
            self.history[-1] = argmax
        return stable & (mean_entropy < self.confidence)
