"""One denoising step's sampling decisions: temperature schedule, sampling, entropy-bound
acceptance, renoising and the stable-and-confident stop.

Two noise sources drive the same loop: `TorchNoise` draws from torch's global RNG in the
reference's exact order (randint canvas, then per step multinomial + randint), so a seeded
run reproduces transformers' `generate` token for token; `CounterNoise` draws Gumbel noise
and renoise tokens from a counter-based hash (no RNG state, one fused kernel on GPU).
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
    return -(logp.exp() * logp).sum(-1)


class TorchNoise:
    """Reference-compatible noise from torch's global RNG (seed it with torch.manual_seed)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def canvas(self, batch: int, length: int, device) -> torch.Tensor:
        return torch.randint(0, self.vocab_size, (batch, length), device=device)

    def sample(self, processed: torch.Tensor, step: int):
        """processed (B, C, V) temperature-scaled logits -> (sample, argmax, entropy) each (B, C)."""
        B, C, V = processed.shape
        probs = torch.softmax(processed, dim=-1, dtype=torch.float32)
        sample = torch.multinomial(probs.view(-1, V), num_samples=1).view(B, C)
        return sample, processed.argmax(-1), entropy(processed)

    def renoise(self, batch: int, length: int, device, step: int) -> torch.Tensor:
        return self.canvas(batch, length, device)


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

    def sample(self, processed: torch.Tensor, step: int):
        B, C, _ = processed.shape
        offset = (self.canvas_index * 4099 + step) * B * C
        return kernels.denoise_sample(processed, 1.0, seed=self.seed, offset=offset)

    def renoise(self, batch: int, length: int, device, step: int) -> torch.Tensor:
        return self._tokens(batch, length, device, stream=step + 1)


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
