"""moe_experts: grouped-GEMM Triton experts against the per-expert torch loop."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

import pytest
import torch
from transformers.models.diffusion_gemma.configuration_diffusion_gemma import DiffusionGemmaTextConfig
from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaTextExperts

import kernels
from kernels import reference
from kernels.moe_experts import moe_experts as moe_experts_triton
from kernels.testing import assert_close

pytestmark = pytest.mark.skipif(not kernels.INTERPRETED and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1 before triton is first imported")

# bf16: the reference rounds gate, up and their product to bf16, the kernel keeps fp32
DTYPES = [(torch.float32, 1e-4, 1e-4), (torch.bfloat16, 6e-2, 3e-2)]


def _experts(tokens, hidden, inter, experts, top_k, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    gate_up = (torch.randn(experts, 2 * inter, hidden, generator=g) * hidden**-0.5).to(dtype)
    down = (torch.randn(experts, hidden, inter, generator=g) * inter**-0.5).to(dtype)
    index = torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(tokens)])
    weights = torch.rand(tokens, top_k, generator=g)
    return x, index, weights, gate_up, down


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize(
    "tokens, hidden, inter, experts, top_k",
    [
        (1, 16, 16, 1, 1),  # one token, one expert
        (13, 48, 40, 5, 2),  # nothing a multiple of a block
        (40, 24, 24, 8, 3),  # an expert's run spans two row blocks, some experts idle
    ],
)
def test_triton_matches_reference(tokens, hidden, inter, experts, top_k, dtype, atol, rtol):
    x, index, weights, gate_up, down = _experts(tokens, hidden, inter, experts, top_k, dtype, tokens)
    got = moe_experts_triton(x, index, weights, gate_up, down, block_m=16, block_n=16, block_k=16)
    want = reference.moe_experts(x, index, weights, gate_up, down)
    assert got.dtype == dtype
    assert_close("moe out", got, want, atol, rtol)


def test_dropped_slots_contribute_nothing():
    x, index, weights, gate_up, down = _experts(6, 16, 16, 4, 2, torch.float32, 0)
    index[::2, 1] = 4  # out of range: dropped, as the reference's one_hot(E + 1) allows
    got = moe_experts_triton(x, index, weights, gate_up, down, block_m=16, block_n=16, block_k=16)
    want = reference.moe_experts(x, index, weights, gate_up, down)
    assert_close("moe out", got, want, 1e-4, 1e-4)


def test_reference_matches_transformers_experts():
    config = DiffusionGemmaTextConfig(hidden_size=48, moe_intermediate_size=40, num_experts=5, top_k_experts=2)
    module = DiffusionGemmaTextExperts(config)
    x, index, weights, gate_up, down = _experts(11, 48, 40, 5, 2, torch.float32, 1)
    with torch.no_grad():
        module.gate_up_proj.copy_(gate_up)
        module.down_proj.copy_(down)
        want = module(x, index, weights)
    assert_close("moe out", reference.moe_experts(x, index, weights, gate_up, down), want, 1e-5, 1e-5)
