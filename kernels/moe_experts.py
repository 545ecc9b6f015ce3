"""Top-k routed experts as two grouped GEMMs over expert-sorted assignments.

The launcher sorts the T*K (token, slot) assignments by expert and cuts each expert's run
into BLOCK_M-row blocks (padded to a static upper bound, so no host sync). Kernel one does
gate_up with gelu_tanh(gate) * up fused in its epilogue; kernel two does down scaled by the
routing weight and writes each assignment's row back to its (token, slot) place. The K rows
of a token are then summed in a fixed order: deterministic, unlike float atomics.

int8 experts (torchao's Int8Tensor, symmetric, a scale per expert row) are read as int8 and
dequantized in the kernels: int8 values are exact in bf16, so the tiles are cast to the
activation dtype before tl.dot and each output column is scaled by its row's scale after the
K loop (half the weight bytes of bf16 per tile). Other quantized layouts (int4, fp8: one torchao
tensor per expert) run the reference's per-expert loop, whose F.linear dispatches to torchao.
"""

import torch
import triton
import triton.language as tl

from kernels._dot import dot_flags


@triton.jit
def _gelu_tanh(x):
    y = 0.7978845608028654 * (x + 0.044715 * x * x * x)  # sqrt(2 / pi)
    return 0.5 * x * (2.0 - 2.0 / (tl.exp(2.0 * y) + 1.0))  # 1 + tanh(y)


@triton.jit
def _moe_gate_up_kernel(
    x_ptr, w_ptr, ws_ptr, order_ptr, block_expert_ptr, block_start_ptr, block_end_ptr, inter_ptr,
    H, I, K_SLOTS, stride_xt, stride_we, stride_wn, stride_it, stride_se,
    W_SCALED: tl.constexpr, DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    block = tl.program_id(0)
    start = tl.load(block_start_ptr + block)
    end = tl.load(block_end_ptr + block)
    if start >= end:  # padding block: the schedule is sized for the worst case
        return
    expert = tl.load(block_expert_ptr + block).to(tl.int64)
    m = start + tl.arange(0, BLOCK_M)
    row_ok = m < end
    token = tl.load(order_ptr + m, mask=row_ok, other=0) // K_SLOTS
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < I
    w = w_ptr + expert * stride_we
    gate = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    up = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < H
        a = tl.load(x_ptr + token[:, None] * stride_xt + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wg = tl.load(w + n[:, None] * stride_wn + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        wu = tl.load(w + (n[:, None] + I) * stride_wn + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if DOT_FP32:
            a, wg, wu = a.to(tl.float32), wg.to(tl.float32), wu.to(tl.float32)
        elif W_SCALED:  # int8 codes, exact in the activation dtype
            wg, wu = wg.to(a.dtype), wu.to(a.dtype)
        gate += tl.dot(a, tl.trans(wg), input_precision=DOT_PRECISION)
        up += tl.dot(a, tl.trans(wu), input_precision=DOT_PRECISION)
    if W_SCALED:
        scales = ws_ptr + expert * stride_se
        gate = gate * tl.load(scales + n, mask=n_ok, other=0.0)[None, :]
        up = up * tl.load(scales + I + n, mask=n_ok, other=0.0)[None, :]
    hidden = _gelu_tanh(gate) * up
    tl.store(inter_ptr + m[:, None].to(tl.int64) * stride_it + n[None, :],
             hidden.to(inter_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _moe_down_kernel(
    inter_ptr, w_ptr, ws_ptr, order_ptr, weights_ptr, block_expert_ptr, block_start_ptr, block_end_ptr, y_ptr,
    H, I, stride_it, stride_we, stride_wn, stride_yt, stride_se,
    W_SCALED: tl.constexpr, DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    block = tl.program_id(0)
    start = tl.load(block_start_ptr + block)
    end = tl.load(block_end_ptr + block)
    if start >= end:
        return
    expert = tl.load(block_expert_ptr + block).to(tl.int64)
    m = start + tl.arange(0, BLOCK_M)
    row_ok = m < end
    assignment = tl.load(order_ptr + m, mask=row_ok, other=0)  # flat token * K + slot
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < H
    w = w_ptr + expert * stride_we
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, I, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < I
        a = tl.load(inter_ptr + m[:, None].to(tl.int64) * stride_it + k[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w + n[:, None] * stride_wn + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if DOT_FP32:
            a, b = a.to(tl.float32), b.to(tl.float32)
        elif W_SCALED:
            b = b.to(a.dtype)
        acc += tl.dot(a, tl.trans(b), input_precision=DOT_PRECISION)
    if W_SCALED:
        acc = acc * tl.load(ws_ptr + expert * stride_se + n, mask=n_ok, other=0.0)[None, :]
    routing = tl.load(weights_ptr + assignment, mask=row_ok, other=0.0).to(tl.float32)
    acc = acc * routing[:, None]
    tl.store(y_ptr + assignment[:, None] * stride_yt + n[None, :], acc, mask=row_ok[:, None] & n_ok[None, :])


def _block_schedule(flat_expert: torch.Tensor, num_experts: int, block_m: int):
    """Expert-sorted order of the assignments and, per BLOCK_M block, its (expert, start, end).

    Indices outside [0, E) mark dropped assignments (as in the reference) and get no block.
    Sized for the worst case cdiv(T*K, BLOCK_M) + E blocks so the grid needs no host sync;
    blocks past the real ones get start == end and return at once.
    """
    dropped = (flat_expert < 0) | (flat_expert >= num_experts)
    flat_expert = flat_expert.masked_fill(dropped, num_experts)  # dropped sort last, in no block
    order = torch.argsort(flat_expert, stable=True)  # (T*K,) assignment ids by expert
    counts = torch.bincount(flat_expert, minlength=num_experts + 1)[:num_experts]  # (E,)
    run_end = torch.cumsum(counts, 0)
    run_start = run_end - counts
    blocks = (counts + block_m - 1) // block_m  # (E,)
    blocks_end = torch.cumsum(blocks, 0)
    max_blocks = triton.cdiv(flat_expert.numel(), block_m) + num_experts
    block = torch.arange(max_blocks, device=flat_expert.device)
    expert = torch.searchsorted(blocks_end, block, right=True).clamp_(max=num_experts - 1)  # (max_blocks,)
    first = run_start[expert] + (block - (blocks_end - blocks)[expert]) * block_m
    real = block < blocks_end[-1]
    start = torch.where(real, first, 0)
    end = torch.where(real, torch.minimum(first + block_m, run_end[expert]), 0)
    return order, expert, start, end


def _int8_rows(w):
    """(codes, per-row scales (E, N) fp32, True) of a symmetric per-row int8 torchao tensor, else (w, w, False)."""
    qdata = getattr(w, "qdata", None)
    if qdata is None or qdata.dtype != torch.int8:
        return w, w, False
    if w.scale.shape != (*qdata.shape[:-1], 1):  # engine.quantize builds them symmetric (zero point 0)
        raise ValueError(f"int8 experts need per-row scales, got scale {tuple(w.scale.shape)}")
    return qdata.contiguous(), w.scale.reshape(qdata.shape[:-1]).float().contiguous(), True


def moe_experts(
    x: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    *,
    block_m: int = 32,
    block_n: int = 64,
    block_k: int = 64,
) -> torch.Tensor:
    gate_up, gate_up_scale, scaled = _int8_rows(gate_up)
    down, down_scale, _ = _int8_rows(down)
    if not scaled and type(gate_up) is not torch.Tensor and not isinstance(gate_up, torch.nn.Parameter):
        from kernels import reference  # int4 / fp8 experts: torchao's per-expert F.linear

        return reference.moe_experts(x, top_k_index, top_k_weights, gate_up, down)
    T, H = x.shape
    K = top_k_index.shape[1]
    E, two_i, _ = gate_up.shape
    I = two_i // 2
    x, gate_up, down = x.contiguous(), gate_up.contiguous(), down.contiguous()
    weights = top_k_weights.reshape(-1).contiguous()  # (T*K,)
    order, block_expert, block_start, block_end = _block_schedule(top_k_index.reshape(-1), E, block_m)
    inter = torch.empty(T * K, I, dtype=x.dtype, device=x.device)  # expert-sorted rows
    y = torch.zeros(T * K, H, dtype=torch.float32, device=x.device)  # (token, slot) rows; dropped stay 0
    n_blocks = block_expert.numel()
    _moe_gate_up_kernel[(n_blocks, triton.cdiv(I, block_n))](
        x, gate_up, gate_up_scale, order, block_expert, block_start, block_end, inter,
        H, I, K, x.stride(0), gate_up.stride(0), gate_up.stride(1), inter.stride(0),
        gate_up_scale.stride(0) if scaled else 0,
        W_SCALED=scaled, **dot_flags(x.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )
    _moe_down_kernel[(n_blocks, triton.cdiv(H, block_n))](
        inter, down, down_scale, order, weights, block_expert, block_start, block_end, y,
        H, I, inter.stride(0), down.stride(0), down.stride(1), y.stride(0),
        down_scale.stride(0) if scaled else 0,
        W_SCALED=scaled, **dot_flags(x.dtype), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )
    return y.view(T, K, H).sum(1).to(x.dtype)
