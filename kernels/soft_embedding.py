"""Self-conditioning soft embedding softmax(logits) @ embedding * scale with an online
softmax over vocabulary tiles: the (R, V) probabilities never exist in memory.

Each program owns BLOCK_R rows and BLOCK_H embedding columns and streams the vocabulary,
accumulating exp(x - m) @ embedding tile and rescaling the accumulator whenever the running
max m grows; it divides by the running sum once at the end.
"""

import torch
import triton
import triton.language as tl

from kernels._dot import dot_flags


@triton.jit
def _soft_embedding_kernel(
    logits_ptr, emb_ptr, out_ptr, R, V, H, stride_lr, stride_ev, stride_or, scale,
    DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    hs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    m = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_R,), tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_H), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        vs = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(logits_ptr + rows[:, None].to(tl.int64) * stride_lr + vs[None, :],
                    mask=(rows[:, None] < R) & (vs[None, :] < V), other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows past R stay all -inf
        alpha = tl.exp(m - m_safe)
        p = tl.exp(x - m_safe[:, None])  # (BLOCK_R, BLOCK_V), unnormalized
        s = alpha * s + tl.sum(p, 1)
        e = tl.load(emb_ptr + vs[:, None].to(tl.int64) * stride_ev + hs[None, :],
                    mask=(vs[:, None] < V) & (hs[None, :] < H), other=0.0)
        if DOT_FP32:
            acc = acc * alpha[:, None] + tl.dot(p, e.to(tl.float32), input_precision=DOT_PRECISION)
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(e.dtype), e, input_precision=DOT_PRECISION)
        m = m_new
    s = tl.where(s > 0, s, 1.0)
    out = acc * (scale / s)[:, None]
    tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_or + hs[None, :],
             out.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < R) & (hs[None, :] < H))


def soft_embedding(
    logits: torch.Tensor,
    embedding: torch.Tensor,
    scale: float,
    *,
    block_v: int = 64,
    block_h: int = 128,
) -> torch.Tensor:
    lead, V = logits.shape[:-1], logits.shape[-1]
    H = embedding.shape[-1]
    x = logits.reshape(-1, V)
    if x.stride(-1) != 1:
        x = x.contiguous()
    emb = embedding.contiguous()
    R = x.shape[0]
    out = torch.empty(R, H, dtype=embedding.dtype, device=x.device)
    block_r = 16 if R <= 16 else 64  # tl.dot needs >= 16 rows
    block_v = min(block_v, max(16, triton.next_power_of_2(V)))
    block_h = min(block_h, max(16, triton.next_power_of_2(H)))
    _soft_embedding_kernel[(triton.cdiv(R, block_r), triton.cdiv(H, block_h))](
        x, emb, out, R, V, H, x.stride(0), emb.stride(0), out.stride(0), float(scale),
        **dot_flags(emb.dtype), BLOCK_R=block_r, BLOCK_V=block_v, BLOCK_H=block_h,
    )
    return out.reshape(*lead, H)
