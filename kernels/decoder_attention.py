"""Flash-style bidirectional attention of canvas queries over [cached prompt ; canvas] keys.

Every canvas query sees the same contiguous key range [lo, L): lo = 0 on full layers and
max(0, canvas_start - window + 1) on sliding ones, so the kernel simply starts its key loop
at lo and needs no per-element mask beyond the sequence end. GQA maps query head h to kv
head h // (Hq // Hkv); head dims that are not powers of two are padded and masked.
"""

import torch
import triton
import triton.language as tl

from kernels._dot import dot_flags


@triton.jit
def _decoder_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr,
    C, L, D, DV, HQ, GROUPS, lo, scale,
    sqb, sqh, sqc, skb, skh, skl, svb, svh, svl, sob, soh, soc,
    DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    bh = tl.program_id(1)
    b = (bh // HQ).to(tl.int64)
    h = bh % HQ
    kvh = (h // GROUPS).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + b * sqb + h * sqh + rows[:, None] * sqc + d[None, :],
                mask=(rows[:, None] < C) & (d[None, :] < D), other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    k_base = k_ptr + b * skb + kvh * skh
    v_base = v_ptr + b * svb + kvh * svh
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    for j0 in range(lo, L, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        j_ok = j < L
        k = tl.load(k_base + j[:, None] * skl + d[None, :], mask=j_ok[:, None] & (d[None, :] < D), other=0.0)
        v = tl.load(v_base + j[:, None] * svl + dv[None, :], mask=j_ok[:, None] & (dv[None, :] < DV), other=0.0)
        if DOT_FP32:
            k, v = k.to(tl.float32), v.to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale  # (BLOCK_M, BLOCK_N)
        scores = tl.where(j_ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(scores - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m = m_new
    out = acc / l[:, None]
    tl.store(out_ptr + b * sob + h * soh + rows[:, None] * soc + dv[None, :],
             out.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < C) & (dv[None, :] < DV))


def decoder_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    canvas_start: int,
    window: int | None,
    scale: float = 1.0,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    B, HQ, C, D = q.shape
    HKV, L, DV = k.shape[1], k.shape[2], v.shape[-1]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty(B, HQ, C, DV, dtype=q.dtype, device=q.device)
    lo = 0 if window is None else max(0, canvas_start - window + 1)
    block_d, block_dv = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(DV))
    wide = max(block_d, block_dv) > 128  # D = 256 / 512 heads: smaller tiles, more warps (untuned)
    block_m = min(block_m or (32 if wide else 64), max(16, triton.next_power_of_2(C)))
    block_n = block_n or (32 if wide else 64)
    _decoder_attention_kernel[(triton.cdiv(C, block_m), B * HQ)](
        q, k, v, out, C, L, D, DV, HQ, HQ // HKV, lo, float(scale),
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        **dot_flags(q.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
        num_warps=8 if wide else 4,
    )
    return out
