"""Entropy-bound acceptance and renoising of a canvas in one launch, sort-free.

A free position's prefix sum in the stable ascending order is the sum of the free entropies
that rank before it (smaller, or equal with a smaller index): O(C^2) compares per row, which
for a canvas of <= 256 positions is cheaper than a sort, a cumsum and two scatters.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _entropy_accept_kernel(
    entropy_ptr, current_ptr, denoised_ptr, clamped_ptr, noise_ptr, next_ptr, accept_ptr,
    C, bound,
    HAS_CLAMPED: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * C
    i = tl.arange(0, BLOCK_C)
    in_row = i < C
    e_i = tl.load(entropy_ptr + row + i, mask=in_row, other=0.0)
    if HAS_CLAMPED:
        free_i = in_row & (tl.load(clamped_ptr + row + i, mask=in_row, other=1) == 0)
    else:
        free_i = in_row
    before = tl.zeros((BLOCK_C,), tl.float32)
    for j0 in range(0, C, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        in_j = j < C
        e_j = tl.load(entropy_ptr + row + j, mask=in_j, other=0.0)
        if HAS_CLAMPED:
            free_j = in_j & (tl.load(clamped_ptr + row + j, mask=in_j, other=1) == 0)
        else:
            free_j = in_j
        ranks_before = (e_j[None, :] < e_i[:, None]) | ((e_j[None, :] == e_i[:, None]) & (j[None, :] < i[:, None]))
        before += tl.sum(tl.where(ranks_before & free_j[None, :], e_j[None, :], 0.0), 1)
    accept = free_i & (before <= bound)
    current = tl.load(current_ptr + row + i, mask=in_row, other=0)
    denoised = tl.load(denoised_ptr + row + i, mask=in_row, other=0)
    noise = tl.load(noise_ptr + row + i, mask=in_row, other=0)
    next_tokens = tl.where(accept, denoised, tl.where(free_i, noise, current))
    tl.store(next_ptr + row + i, next_tokens, mask=in_row)
    tl.store(accept_ptr + row + i, accept.to(tl.int8), mask=in_row)


def entropy_accept(
    entropy: torch.Tensor,
    current: torch.Tensor,
    denoised: torch.Tensor,
    clamped: torch.Tensor | None,
    bound: float,
    noise_tokens: torch.Tensor,
    *,
    block_j: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, C = current.shape
    entropy = entropy.float().contiguous()
    current, denoised, noise_tokens = current.contiguous(), denoised.contiguous(), noise_tokens.contiguous()
    clamped_u8 = clamped.contiguous().view(torch.uint8) if clamped is not None else entropy
    next_canvas = torch.empty_like(current)
    accept = torch.empty((B, C), dtype=torch.int8, device=current.device)
    block_c = triton.next_power_of_2(C)
    _entropy_accept_kernel[(B,)](
        entropy, current, denoised, clamped_u8, noise_tokens, next_canvas, accept,
        C, float(bound),
        HAS_CLAMPED=clamped is not None, BLOCK_C=block_c, BLOCK_J=min(block_j, block_c),
    )
    return next_canvas, accept.view(torch.bool)
