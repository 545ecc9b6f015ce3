"""PyTorch references for the five kernels: this file is the spec.

Every Triton kernel in `kernels/<stem>.py` must agree with the function of the same stem
here; the tests compare them and the dispatcher falls back to these off-GPU. Each reference
states its memory traffic, which is the case for fusing it. Knows nothing of Triton.
"""

import math

import torch
import torch.nn.functional as F

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9  # odd, so `col * _GOLDEN32` is a bijection on uint32
_FMIX_C1 = 0x85EBCA6B  # murmur3 fmix32 constants
_FMIX_C2 = 0xC2B2AE35


# ---------------------------------------------------------------------------------------
# Counter-based noise, shared bit for bit with the Triton sampler.
#
# Element (r, v) of a draw keyed by (seed, offset) gets the uint32 hash
#     row_key = fmix32(fold(seed) ^ fmix32((offset + r) mod 2^32))
#     h       = fmix32(row_key ^ (v * 0x9E3779B9 mod 2^32))
# then u = ((h >> 9) + 0.5) / 2^23, exactly representable and strictly inside (0, 1), and
# gumbel = -log(-log(u)). Torch has no uint32 shifts, so the hash runs on int32 holding the
# same bits: products wrap mod 2^32 exactly as uint32 ones do, and right shifts are masked
# to be logical. (tests check this against plain Python integers.)
# ---------------------------------------------------------------------------------------


def _int32(c: int) -> int:
    return c - (1 << 32) if c >= 1 << 31 else c


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * _int32(_FMIX_C1)
    h = h ^ ((h >> 13) & 0x7FFFF)
    h = h * _int32(_FMIX_C2)
    return h ^ ((h >> 16) & 0xFFFF)


def fold_seed(seed: int) -> int:
    """A 64-bit (or negative) Python seed folded to the uint32 the kernels key on."""
    seed &= (1 << 64) - 1
    return (seed ^ (seed >> 32)) & _MASK32


def _hash_bits(seed: int, offset: int, rows: int, cols: int, device=None) -> torch.Tensor:
    r = (torch.arange(rows, device=device, dtype=torch.int64) + offset) & _MASK32
    r = _fmix32(r.sub_((r >> 31) << 32).to(torch.int32))  # uint32 bits into int32
    row_key = _fmix32(r ^ _int32(fold_seed(seed)))  # (rows,)
    v = torch.arange(cols, device=device, dtype=torch.int32) * _int32(_GOLDEN32)  # (cols,)
    return _fmix32(row_key[:, None] ^ v[None, :])  # (rows, cols) int32


def counter_hash(seed: int, offset: int, rows: int, cols: int, device=None) -> torch.Tensor:
    """uint32 hash of every (offset + row, col) under `seed`, as int64 in [0, 2^32): (rows, cols)."""
    return _hash_bits(seed, offset, rows, cols, device).to(torch.int64) & _MASK32


def gumbel_noise(seed: int, offset: int, rows: int, cols: int, device=None) -> torch.Tensor:
    """Standard Gumbel noise (rows, cols) fp32 from the counter hash."""
    top23 = (_hash_bits(seed, offset, rows, cols, device) >> 9) & 0x7FFFFF
    u = (top23.to(torch.float32) + 0.5) * (2.0**-23)
    return u.log_().neg_().log_().neg_()


# ---------------------------------------------------------------------------------------
# denoise_sample
# ---------------------------------------------------------------------------------------


def denoise_sample(
    logits: torch.Tensor, temperature: float, seed: int, offset: int = 0, softcap: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample, argmax and entropy of softmax(softcap(logits) / T) per row of (..., V).

    The sample is Gumbel-max with the counter noise of row r = offset + flat row index, so a
    caller may split rows into chunks (advancing offset) and draw the same tokens.
    Traffic: reads R*V logits, writes ~4 R*V fp32 intermediates (scaled, log-probs, probs,
    perturbed scores) and reads each back: ~9 R*V*4 bytes against R*V*itemsize fused.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    x = logits.reshape(-1, vocab).float()  # (R, V)
    if softcap is not None:
        x = torch.tanh(x / softcap) * softcap
    x = x / temperature
    logp = torch.log_softmax(x, dim=-1)  # (R, V)
    p = logp.exp()
    entropy = -torch.where(p > 0, p * logp, 0.0).sum(-1)  # a -inf logit contributes 0
    argmax = x.argmax(-1)
    noise = gumbel_noise(seed, offset, x.shape[0], vocab, x.device)  # (R, V)
    sample = (x + noise).argmax(-1)
    return sample.reshape(lead), argmax.reshape(lead), entropy.reshape(lead)


def denoise_sample_from_hidden(
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    temperature: float,
    seed: int,
    offset: int = 0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """denoise_sample of the tied-embedding logits hidden (..., H) @ embedding (V, H).T.

    Traffic: the reference also writes and reads the R*V fp32 logits; fused, only hidden
    and embedding are read.
    """
    logits = hidden.reshape(-1, hidden.shape[-1]).float() @ embedding.float().T  # (R, V)
    sample, argmax, entropy = denoise_sample(logits, temperature, seed, offset, softcap)
    lead = hidden.shape[:-1]
    return sample.reshape(lead), argmax.reshape(lead), entropy.reshape(lead)


# ---------------------------------------------------------------------------------------
# entropy_accept
# ---------------------------------------------------------------------------------------


def entropy_accept(
    entropy: torch.Tensor,
    current: torch.Tensor,
    denoised: torch.Tensor,
    clamped: torch.Tensor | None,
    bound: float,
    noise_tokens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy-bound acceptance then renoising of a (B, C) canvas.

    Free (non-clamped) positions are ranked by ascending entropy (stable: ties by index);
    a position is accepted when the entropies ranked before it sum to <= bound, i.e.
    cumsum(sorted) - sorted <= bound. Accepted positions take `denoised`, other free
    positions take `noise_tokens`, clamped positions keep `current` and are never accepted.
    Traffic: tiny (B*C); the cost is a sort, cumsum and two scatters per step, i.e. ~8
    launches where the kernel does one.
    """
    if clamped is None:
        clamped = torch.zeros_like(current, dtype=torch.bool)
    ranked = entropy.float().masked_fill(clamped, math.inf)  # clamped rank last
    sorted_entropy, order = torch.sort(ranked, dim=-1, stable=True)
    before = torch.cumsum(sorted_entropy, dim=-1) - sorted_entropy  # nan past the free set
    accept = torch.zeros_like(clamped).scatter(-1, order, before <= bound) & ~clamped
    next_canvas = torch.where(accept, denoised, noise_tokens)
    next_canvas = torch.where(clamped, current, next_canvas)
    return next_canvas, accept


# ---------------------------------------------------------------------------------------
# soft_embedding
# ---------------------------------------------------------------------------------------


def soft_embedding(logits: torch.Tensor, embedding: torch.Tensor, scale: float) -> torch.Tensor:
    """Self-conditioning input: softmax(logits, fp32) @ embedding * scale, (..., H).

    Traffic: reads R*V logits, writes then reads R*V probabilities (fp32, then a cast copy
    in the embedding dtype), reads V*H embedding. Fused, the probabilities never exist.
    """
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    probs = torch.softmax(logits.reshape(-1, vocab).float(), dim=-1).to(embedding.dtype)  # (R, V)
    out = (probs @ embedding) * scale  # (R, H)
    return out.reshape(*lead, embedding.shape[-1])


# ---------------------------------------------------------------------------------------
# moe_experts
# ---------------------------------------------------------------------------------------


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def moe_experts(
    x: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
) -> torch.Tensor:
    """Top-k routed experts: sum_k w[t,k] * down[e] @ (gelu_tanh(gate) * up), e = index[t,k].

    gate_up (E, 2I, H): rows [:I] are the gate projection, [I:] the up projection; down is
    (E, H, I). Traffic: one gather of each expert's tokens (T*K*H), the per-expert GEMMs,
    a (n_e, 2I) and a (n_e, I) intermediate per expert, and a launch train of ~8 ops per
    hit expert: for 128 experts that train, not the bytes, dominates.
    """
    out = torch.zeros_like(x)  # (T, H)
    inter = down.shape[-1]
    for expert in top_k_index.unique().tolist():
        if not 0 <= expert < gate_up.shape[0]:  # an out-of-range index marks a dropped slot
            continue
        token, slot = torch.where(top_k_index == expert)  # (n_e,), (n_e,)
        gate_and_up = F.linear(x[token], gate_up[expert])  # (n_e, 2I); F.linear also takes torchao weights
        hidden = gelu_tanh(gate_and_up[:, :inter]) * gate_and_up[:, inter:]  # (n_e, I)
        y = F.linear(hidden, down[expert]) * top_k_weights[token, slot, None]  # (n_e, H)
        out.index_add_(0, token, y.to(out.dtype))
    return out


# ---------------------------------------------------------------------------------------
# decoder_attention
# ---------------------------------------------------------------------------------------


def decoder_visible(canvas_start: int, length: int, window: int | None, device=None) -> torch.Tensor:
    """Which of the `length` keys a canvas query sees: (length,) bool.

    Canvas keys [canvas_start, length) are all visible (bidirectional); a cached key j is
    visible iff window is None or j > canvas_start - window (a sliding layer keeps the
    last window - 1 cached tokens).
    """
    j = torch.arange(length, device=device)
    if window is None:
        return torch.ones(length, dtype=torch.bool, device=device)
    return (j >= canvas_start) | (j > canvas_start - window)


def decoder_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    canvas_start: int,
    window: int | None,
    scale: float = 1.0,
) -> torch.Tensor:
    """Canvas queries (B, Hq, C, D) over [cached prompt ; canvas] keys (B, Hkv, L, D).

    GQA: query head h reads kv head h // (Hq // Hkv). Softmax in fp32.
    Traffic: repeats K and V to Hq heads (2 * B*Hq*L*D), writes and reads the B*Hq*C*L
    scores twice (fp32 scores, probabilities): the flash kernel keeps them on chip.
    """
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # (B, Hq, L, D)
    v = v.repeat_interleave(groups, dim=1)  # (B, Hq, L, Dv)
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, Hq, C, L)
    visible = decoder_visible(canvas_start, k.shape[2], window, q.device)
    scores = scores.masked_fill(~visible, -math.inf)
    probs = torch.softmax(scores, dim=-1)
    return (probs @ v.float()).to(q.dtype)  # (B, Hq, C, Dv)
