"""Fused kernels for DiffusionGemma's hot paths, one op per stem, with torch references.

Each public op runs its Triton kernel when the inputs are CUDA tensors and Triton imports,
else its torch reference (`kernels.reference`, the spec). `DGEMMA_KERNELS=auto|triton|torch`
or `with kernels.force(...)` overrides the choice. Forcing "triton" on CPU tensors needs the
Triton interpreter, which Triton fixes when it is first imported: set TRITON_INTERPRET=1 before
that (the tests' conftest does on machines without CUDA); importing this package never sets it.
"""

import contextlib
import os
from collections.abc import Iterator

import torch

from kernels import reference

try:
    import triton

    # imported here, before the public functions below take these names in this namespace
    from kernels import decoder_attention as _decoder_attention_triton
    from kernels import denoise_sample as _denoise_sample_triton
    from kernels import entropy_accept as _entropy_accept_triton
    from kernels import moe_experts as _moe_experts_triton
    from kernels import soft_embedding as _soft_embedding_triton

    _TRITON_MODULES = {
        "decoder_attention": _decoder_attention_triton,
        "denoise_sample": _denoise_sample_triton,
        "entropy_accept": _entropy_accept_triton,
        "moe_experts": _moe_experts_triton,
        "soft_embedding": _soft_embedding_triton,
    }
    HAS_TRITON = True
    INTERPRETED = bool(triton.knobs.runtime.interpret)
except ImportError:
    _TRITON_MODULES = {}
    HAS_TRITON = INTERPRETED = False

BACKENDS = ("auto", "triton", "torch")
_forced: str | None = None

__all__ = [
    "BACKENDS",
    "HAS_TRITON",
    "INTERPRETED",
    "backend_for",
    "decoder_attention",
    "denoise_sample",
    "denoise_sample_from_hidden",
    "entropy_accept",
    "force",
    "moe_experts",
    "soft_embedding",
]


def _mode() -> str:
    mode = _forced or os.environ.get("DGEMMA_KERNELS", "auto").strip().lower() or "auto"
    if mode not in BACKENDS:
        raise ValueError(f"DGEMMA_KERNELS must be one of {BACKENDS}, got {mode!r}")
    return mode


def backend_for(*tensors: torch.Tensor) -> str:
    """'triton' or 'torch': which path an op on these tensors takes right now."""
    mode = _mode()
    if mode == "triton":
        if not HAS_TRITON:
            raise RuntimeError("kernels forced to 'triton' but triton is not importable")
        if not INTERPRETED and not all(t.is_cuda for t in tensors):
            raise RuntimeError(
                "Triton on CPU tensors needs the interpreter: TRITON_INTERPRET=1 before triton is imported"
            )
        return "triton"
    if mode == "torch" or not HAS_TRITON:
        return "torch"
    return "triton" if all(t.is_cuda for t in tensors) else "torch"


@contextlib.contextmanager
def force(mode: str) -> Iterator[None]:
    """Force every op onto one path ('triton', 'torch') or back to 'auto' inside the block."""
    global _forced
    if mode not in BACKENDS:
        raise ValueError(f"mode must be one of {BACKENDS}, got {mode!r}")
    previous, _forced = _forced, mode
    try:
        yield
    finally:
        _forced = previous


def _impl(stem: str, name: str, *tensors: torch.Tensor):
    """The function `name` from kernels/<stem>.py or from the reference, per backend_for."""
    if backend_for(*tensors) == "triton":
        return getattr(_TRITON_MODULES[stem], name)
    return getattr(reference, name)


def denoise_sample(
    logits: torch.Tensor, temperature: float, seed: int, offset: int = 0, softcap: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sample, argmax, entropy) per row of softmax(softcap(logits) / T), logits (..., V).

    sample/argmax int64 and entropy fp32, all shaped like logits.shape[:-1]. The sample is
    Gumbel-max under counter noise keyed by (seed, offset + flat row, column): the same on
    both paths, and splitting rows into chunks with a matching offset draws the same tokens.
    """
    return _impl("denoise_sample", "denoise_sample", logits)(logits, temperature, seed, offset, softcap)


def denoise_sample_from_hidden(
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    temperature: float,
    seed: int,
    offset: int = 0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """denoise_sample of hidden (..., H) @ embedding (V, H).T without storing the logits."""
    fn = _impl("denoise_sample", "denoise_sample_from_hidden", hidden, embedding)
    return fn(hidden, embedding, temperature, seed, offset, softcap)


def entropy_accept(
    entropy: torch.Tensor,
    current: torch.Tensor,
    denoised: torch.Tensor,
    clamped: torch.Tensor | None,
    bound: float,
    noise_tokens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(next_canvas int64, accept_mask bool), both (B, C); see reference.entropy_accept."""
    fn = _impl("entropy_accept", "entropy_accept", entropy, current)
    return fn(entropy, current, denoised, clamped, bound, noise_tokens)


def soft_embedding(logits: torch.Tensor, embedding: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(logits (..., V), fp32) @ embedding (V, H) * scale -> (..., H) in embedding dtype."""
    return _impl("soft_embedding", "soft_embedding", logits, embedding)(logits, embedding, scale)


def moe_experts(
    x: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
) -> torch.Tensor:
    """Routed experts for x (T, H) with gate_up (E, 2I, H) and down (E, H, I) -> (T, H)."""
    return _impl("moe_experts", "moe_experts", x, gate_up)(x, top_k_index, top_k_weights, gate_up, down)


def decoder_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    canvas_start: int,
    window: int | None,
    scale: float = 1.0,
) -> torch.Tensor:
    """Canvas queries q (B, Hq, C, D) over k, v (B, Hkv, canvas_start + C, D) -> (B, Hq, C, Dv).

    Canvas keys are all visible; cached key j is visible iff window is None or
    j > canvas_start - window.
    """
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} are not a multiple of kv heads {k.shape[1]}")
    if k.shape[2] != canvas_start + q.shape[2]:
        expected = canvas_start + q.shape[2]
        raise ValueError(f"keys hold {k.shape[2]} positions, expected canvas_start + C = {expected}")
    return _impl("decoder_attention", "decoder_attention", q, k)(q, k, v, canvas_start, window, scale)
