"""One denoising step's sampling decisions: temperature schedule, sampling, entropy-bound
acceptance, renoising and the stable-and-confident stop.

Two noise sources drive the same loop: `TorchNoise` draws from torch's RNG in the reference's
exact order (randint canvas, then per step multinomial + randint), so a seeded run reproduces
transformers' `generate` token for token (and, with a private generator, is the fast CPU path);
`CounterNoise` draws Gumbel noise and renoise tokens from a counter-based hash (no RNG state,
one fused kernel on GPU).
"""

from __future__ import annotations

import torch

import kernels
from kernels.reference import counter_hash


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


class TorchNoise:
    """Reference-compatible noise from torch's RNG: the global one (seed it with torch.manual_seed),
    or a private `generator`, which keeps concurrent users' draws apart."""

    def __init__(self, vocab_size: int, generator: torch.Generator | None = None):
        self.vocab_size, self.generator = vocab_size, generator

    def canvas(self, batch: int, length: int, device) -> torch.Tensor:
        return torch.randint(0, self.vocab_size, (batch, length), device=device, generator=self.generator)

    def sample(self, processed: torch.Tensor, step: int, rows: torch.Tensor | None = None):
        """processed (B, C, V) temperature-scaled logits -> (sample, argmax, entropy) each (B, C).

        With `rows` (B, C) bool only those positions are sampled (the rest: argmax, entropy 0)."""
        if rows is not None:
            return _on_rows(self.sample, processed, step, rows)
        B, C, V = processed.shape
        logp = torch.log_softmax(processed, dim=-1, dtype=torch.float32)  # (B, C, V)
        probs = logp.exp()
        if self.generator is None:  # the reference's own draw, for token-for-token parity
            sample = torch.multinomial(probs.view(-1, V), num_samples=1).view(B, C)
        else:  # inverse CDF: one uniform per row (multinomial's exponential race costs ~10x more on a CPU)
            cdf = probs.cumsum(-1)  # (B, C, V)
            u = torch.rand((B, C, 1), generator=self.generator, device=probs.device) * cdf[..., -1:]
            sample = torch.searchsorted(cdf, u).clamp_(max=V - 1)[..., 0]
        return sample, processed.argmax(-1), entropy_of(probs, logp)

    def renoise(self, batch: int, length: int, device, step: int) -> torch.Tensor:
        return self.canvas(batch, length, device)

    def uniforms(self, rows: torch.Tensor) -> torch.Tensor:
        """The uniforms `sample(…, rows)` would draw with a private generator, (B, C) fp32, drawn in the
        same order (one per position in `rows`, 0 elsewhere): for sample_step, which takes them as input."""
        out = torch.zeros(rows.shape, dtype=torch.float32, device=rows.device)
        out[rows] = torch.rand((1, int(rows.sum()), 1), generator=self.generator, device=rows.device).view(-1)
        return out


def sample_step(logits: torch.Tensor, canvas: torch.Tensor, clamped: torch.Tensor, noised: torch.Tensor,
                temperature: torch.Tensor, uniform: torch.Tensor, renoise_tokens: torch.Tensor,
                bound: torch.Tensor, ignore_noise_tokens: bool):
    """A denoising step's decisions from its logits (B, C, V) as one traceable function, so that
    torch.compile fuses them with the decoder pass: what `denoise`'s eager loop computes with a
    private-generator TorchNoise, given the uniforms it would draw (TorchNoise.uniforms).

    Returns (next canvas, accepted, argmax with clamped positions kept, entropy (0 where clamped),
    probabilities (B, C, V) fp32 for the next step's self-conditioning, log p of the argmax)."""
    V = logits.shape[-1]
    processed = logits / temperature
    if ignore_noise_tokens:
        ignore_current_token(processed, canvas, noised)  # in place on the fresh quotient
    logp = torch.log_softmax(processed, dim=-1)
    probs = logp.exp()
    cdf = probs.cumsum(-1)
    # the inverse CDF as a count (= searchsorted's left insertion point), which fuses into one pass
    sample = (cdf < uniform[..., None] * cdf[..., -1:]).sum(-1).clamp(max=V - 1)
    free = ~clamped
    argmax = torch.where(clamped, canvas, processed.argmax(-1))
    ent = torch.where(free, entropy_of(probs, logp), 0.0)
    new_canvas, accepted = kernels.entropy_accept(ent, canvas, sample, clamped, bound, renoise_tokens)
    return new_canvas, accepted, argmax, ent, probs, logp.gather(-1, argmax[..., None])[..., 0]


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

    def sample(self, processed: torch.Tensor, step: int, rows: torch.Tensor | None = None):
        if rows is not None:
            return _on_rows(self.sample, processed, step, rows)
        B, C, _ = processed.shape
        offset = (self.canvas_index * 4099 + step) * B * C
        return kernels.denoise_sample(processed, 1.0, seed=self.seed, offset=offset)

    def renoise(self, batch: int, length: int, device, step: int) -> torch.Tensor:
        return self._tokens(batch, length, device, stream=step + 1)


def _on_rows(sample, processed: torch.Tensor, step: int, rows: torch.Tensor):
    """Sample only the positions in `rows` (clamped ones are never accepted, so never need a draw)."""
    picked, argmax, ent = sample(processed[rows][None], step)  # (1, N) each
    B, C, _ = processed.shape
    out_sample = torch.zeros((B, C), dtype=torch.long, device=processed.device)
    out_argmax = torch.zeros_like(out_sample)
    out_entropy = torch.zeros((B, C), dtype=torch.float32, device=processed.device)
    out_sample[rows], out_argmax[rows], out_entropy[rows] = picked[0], argmax[0], ent[0]
    return out_sample, out_argmax, out_entropy


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
