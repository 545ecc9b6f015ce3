"""Fused denoiser sampling: softcap, temperature, entropy, argmax and a Gumbel-max sample in
one streaming pass over the vocabulary, never materializing the (R, V) probabilities.

A canvas has few rows, so the grid also splits each row's vocabulary across SPLITS programs;
a second small kernel merges their partial statistics. The noise is the counter hash of
`kernels.reference`, bit for bit, so both paths draw the same tokens from the same seed.
"""

import torch
import triton
import triton.language as tl

from kernels._dot import dot_flags
from kernels.reference import fold_seed


@triton.jit
def _fmix32(h):
    # murmur3 finalizer on uint32; each product is truncated back to uint32 explicitly so the
    # hash is the same whether a literal promotes to uint32 or to int64.
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B).to(tl.uint32)
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35).to(tl.uint32)
    return h ^ (h >> 16)


@triton.jit
def _row_key(seed32, offset, rows):
    r = ((rows.to(tl.int64) + offset) & 0xFFFFFFFF).to(tl.uint32)
    return _fmix32(seed32.to(tl.uint32) ^ _fmix32(r))


@triton.jit
def _gumbel(row_key, cols):
    h = _fmix32(row_key ^ (cols.to(tl.uint32) * 0x9E3779B9).to(tl.uint32))
    u = ((h >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # 2^-23: u in (0, 1)
    return -tl.log(-tl.log(u))


@triton.jit
def _merge_tile(x, noise, col0, m, s, t, best_idx, pick, pick_idx):
    # x: (BLOCK_R, BLOCK_V) scaled logits, -inf where masked; statistics are per row:
    #   m = running max, s = sum exp(x - m), t = sum exp(x - m) * (x - m)
    # so entropy = log s - t / s. When m grows both sums rescale by exp(m_old - m_new), and
    # t also absorbs s * (m_old - m_new) since every (x - m) shifts by that much.
    # m is also the argmax value: the first occurrence wins ties, as in torch.argmax, because
    # a tile takes over only on a strict improvement.
    tile_max = tl.max(x, 1)
    best_idx = tl.where(tile_max > m, tl.argmax(x, 1) + col0, best_idx)
    m_new = tl.maximum(m, tile_max)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    shift = tl.where(m == float("-inf"), 0.0, m - m_safe)
    d = x - m_safe[:, None]
    p = tl.exp(d)
    t = alpha * (t + s * shift) + tl.sum(p * tl.where(p > 0, d, 0.0), 1)
    s = alpha * s + tl.sum(p, 1)
    noisy = x + noise
    tile_pick = tl.max(noisy, 1)
    take = tile_pick > pick
    pick_idx = tl.where(take, tl.argmax(noisy, 1) + col0, pick_idx)
    pick = tl.where(take, tile_pick, pick)
    return m_new, s, t, best_idx, pick, pick_idx


@triton.jit
def _scale(x, softcap, temperature, HAS_SOFTCAP: tl.constexpr):
    if HAS_SOFTCAP:
        y = x / softcap
        x = (1.0 - 2.0 / (tl.exp(2.0 * y) + 1.0)) * softcap  # tanh(y), saturating to +-1
    return x / temperature


@triton.jit
def _store_partials(part_ptr, rows, split, R, SPLITS, m, s, t, best_idx, pick, pick_idx):
    # part (6, R, SPLITS) fp32; indices < 2^24 are exact in fp32
    o = rows * SPLITS + split
    n = R * SPLITS
    ok = rows < R
    tl.store(part_ptr + o, m, mask=ok)
    tl.store(part_ptr + n + o, s, mask=ok)
    tl.store(part_ptr + 2 * n + o, t, mask=ok)
    tl.store(part_ptr + 3 * n + o, best_idx.to(tl.float32), mask=ok)
    tl.store(part_ptr + 4 * n + o, pick, mask=ok)
    tl.store(part_ptr + 5 * n + o, pick_idx.to(tl.float32), mask=ok)


@triton.jit(do_not_specialize=["seed32", "offset"])
def _denoise_logits_kernel(
    logits_ptr, part_ptr, R, V, stride_r, cols_per_split, SPLITS,
    temperature, softcap, seed32, offset,
    HAS_SOFTCAP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    split = tl.program_id(1)
    row_key = _row_key(seed32, offset, rows)
    m = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_R,), tl.float32)
    t = tl.zeros((BLOCK_R,), tl.float32)
    pick = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_R,), tl.int32)
    pick_idx = tl.zeros((BLOCK_R,), tl.int32)
    lo = split * cols_per_split
    hi = tl.minimum(lo + cols_per_split, V)
    for col0 in range(lo, hi, BLOCK_V):
        cols = col0 + tl.arange(0, BLOCK_V)
        ok = (rows[:, None] < R) & (cols[None, :] < hi)
        x = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_r + cols[None, :], mask=ok, other=0.0)
        x = _scale(x.to(tl.float32), softcap, temperature, HAS_SOFTCAP)
        x = tl.where(ok, x, float("-inf"))
        noise = _gumbel(row_key[:, None], cols[None, :])
        m, s, t, best_idx, pick, pick_idx = _merge_tile(x, noise, col0, m, s, t, best_idx, pick, pick_idx)
    _store_partials(part_ptr, rows, split, R, SPLITS, m, s, t, best_idx, pick, pick_idx)


@triton.jit(do_not_specialize=["seed32", "offset"])
def _denoise_hidden_kernel(
    hidden_ptr, emb_ptr, part_ptr, R, V, H, stride_hr, stride_ev, cols_per_split, SPLITS,
    temperature, softcap, seed32, offset,
    HAS_SOFTCAP: tl.constexpr, DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    split = tl.program_id(1)
    row_key = _row_key(seed32, offset, rows)
    m = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_R,), tl.float32)
    t = tl.zeros((BLOCK_R,), tl.float32)
    pick = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_R,), tl.int32)
    pick_idx = tl.zeros((BLOCK_R,), tl.int32)
    lo = split * cols_per_split
    hi = tl.minimum(lo + cols_per_split, V)
    for col0 in range(lo, hi, BLOCK_V):
        cols = col0 + tl.arange(0, BLOCK_V)
        x = tl.zeros((BLOCK_R, BLOCK_V), tl.float32)
        for h0 in range(0, H, BLOCK_H):  # logits tile = hidden rows @ embedding tile.T
            hs = h0 + tl.arange(0, BLOCK_H)
            a = tl.load(hidden_ptr + rows[:, None].to(tl.int64) * stride_hr + hs[None, :],
                        mask=(rows[:, None] < R) & (hs[None, :] < H), other=0.0)
            b = tl.load(emb_ptr + cols[:, None].to(tl.int64) * stride_ev + hs[None, :],
                        mask=(cols[:, None] < hi) & (hs[None, :] < H), other=0.0)
            if DOT_FP32:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            x += tl.dot(a, tl.trans(b), input_precision=DOT_PRECISION)
        ok = (rows[:, None] < R) & (cols[None, :] < hi)
        x = tl.where(ok, _scale(x, softcap, temperature, HAS_SOFTCAP), float("-inf"))
        noise = _gumbel(row_key[:, None], cols[None, :])
        m, s, t, best_idx, pick, pick_idx = _merge_tile(x, noise, col0, m, s, t, best_idx, pick, pick_idx)
    _store_partials(part_ptr, rows, split, R, SPLITS, m, s, t, best_idx, pick, pick_idx)


@triton.jit
def _denoise_combine_kernel(
    part_ptr, sample_ptr, argmax_ptr, entropy_ptr, R, SPLITS,
    BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    splits = tl.arange(0, BLOCK_S)
    ok = (rows[:, None] < R) & (splits[None, :] < SPLITS)
    o = rows[:, None] * SPLITS + splits[None, :]
    n = R * SPLITS
    m = tl.load(part_ptr + o, mask=ok, other=float("-inf"))
    s = tl.load(part_ptr + n + o, mask=ok, other=0.0)
    t = tl.load(part_ptr + 2 * n + o, mask=ok, other=0.0)
    best_idx = tl.load(part_ptr + 3 * n + o, mask=ok, other=0.0)
    pick = tl.load(part_ptr + 4 * n + o, mask=ok, other=float("-inf"))
    pick_idx = tl.load(part_ptr + 5 * n + o, mask=ok, other=0.0)

    m_all = tl.max(m, 1)
    m_all = tl.where(m_all == float("-inf"), 0.0, m_all)  # rows past R
    alpha = tl.exp(m - m_all[:, None])
    shift = tl.where(m == float("-inf"), 0.0, m - m_all[:, None])
    s_all = tl.where(rows < R, tl.sum(alpha * s, 1), 1.0)
    t_all = tl.sum(alpha * (t + s * shift), 1)
    entropy = tl.log(s_all) - t_all / s_all
    # splits cover ascending columns, so the first maximal split holds the first maximal column
    first = tl.argmax(m, 1)
    argmax = tl.sum(tl.where(splits[None, :] == first[:, None], best_idx, 0.0), 1)
    first = tl.argmax(pick, 1)
    sample = tl.sum(tl.where(splits[None, :] == first[:, None], pick_idx, 0.0), 1)
    keep = rows < R
    tl.store(sample_ptr + rows, sample.to(tl.int64), mask=keep)
    tl.store(argmax_ptr + rows, argmax.to(tl.int64), mask=keep)
    tl.store(entropy_ptr + rows, entropy, mask=keep)


def _pick_splits(row_blocks: int, vocab: int, block_v: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(programs, row_blocks), triton.cdiv(vocab, block_v)))


def _launch_combine(part, R, splits, lead, device):
    sample = torch.empty(R, dtype=torch.int64, device=device)
    argmax = torch.empty(R, dtype=torch.int64, device=device)
    entropy = torch.empty(R, dtype=torch.float32, device=device)
    block_r = 16
    _denoise_combine_kernel[(triton.cdiv(R, block_r),)](
        part, sample, argmax, entropy, R, splits,
        BLOCK_R=block_r, BLOCK_S=triton.next_power_of_2(splits),
    )
    return sample.reshape(lead), argmax.reshape(lead), entropy.reshape(lead)


def denoise_sample(
    logits: torch.Tensor,
    temperature: float,
    seed: int,
    offset: int = 0,
    softcap: float | None = None,
    *,
    splits: int | None = None,
    block_v: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lead, V = logits.shape[:-1], logits.shape[-1]
    if V >= 1 << 24:
        raise ValueError("vocabulary indices travel as fp32 partials: V must be < 2^24")
    x = logits.reshape(-1, V)
    if x.stride(-1) != 1:
        x = x.contiguous()
    R = x.shape[0]
    block_r = 4
    block_v = min(block_v, triton.next_power_of_2(V))
    splits = splits or _pick_splits(triton.cdiv(R, block_r), V, block_v, x.device)
    cols_per_split = triton.cdiv(triton.cdiv(V, splits), block_v) * block_v
    splits = triton.cdiv(V, cols_per_split)
    part = torch.empty(6, R, splits, dtype=torch.float32, device=x.device)
    _denoise_logits_kernel[(triton.cdiv(R, block_r), splits)](
        x, part, R, V, x.stride(0), cols_per_split, splits,
        float(temperature), float(softcap or 1.0), fold_seed(seed), offset & 0xFFFFFFFF,
        HAS_SOFTCAP=softcap is not None, BLOCK_R=block_r, BLOCK_V=block_v,
    )
    return _launch_combine(part, R, splits, lead, x.device)


def denoise_sample_from_hidden(
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    temperature: float,
    seed: int,
    offset: int = 0,
    softcap: float | None = None,
    *,
    splits: int | None = None,
    block_v: int = 128,
    block_h: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lead, H = hidden.shape[:-1], hidden.shape[-1]
    V = embedding.shape[0]
    if V >= 1 << 24:
        raise ValueError("vocabulary indices travel as fp32 partials: V must be < 2^24")
    h = hidden.reshape(-1, H).contiguous()
    emb = embedding.contiguous()
    R = h.shape[0]
    block_r = 16 if R <= 16 else 64  # tl.dot needs >= 16 rows
    block_v = min(block_v, max(16, triton.next_power_of_2(V)))
    block_h = min(block_h, max(16, triton.next_power_of_2(H)))
    splits = splits or _pick_splits(triton.cdiv(R, block_r), V, block_v, h.device)
    cols_per_split = triton.cdiv(triton.cdiv(V, splits), block_v) * block_v
    splits = triton.cdiv(V, cols_per_split)
    part = torch.empty(6, R, splits, dtype=torch.float32, device=h.device)
    _denoise_hidden_kernel[(triton.cdiv(R, block_r), splits)](
        h, emb, part, R, V, H, h.stride(0), emb.stride(0), cols_per_split, splits,
        float(temperature), float(softcap or 1.0), fold_seed(seed), offset & 0xFFFFFFFF,
        HAS_SOFTCAP=softcap is not None, **dot_flags(h.dtype),
        BLOCK_R=block_r, BLOCK_V=block_v, BLOCK_H=block_h,
    )
    return _launch_combine(part, R, splits, lead, h.device)
