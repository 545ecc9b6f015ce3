"""entropy_accept: sort-free Triton acceptance against the stable-sort torch reference."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

import pytest
import torch
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    EntropyBoundSampler,
    EntropyBoundSamplerConfig,
)

import kernels
from kernels import reference
from kernels.entropy_accept import entropy_accept as entropy_accept_triton
from kernels.testing import assert_equal

pytestmark = pytest.mark.skipif(not kernels.INTERPRETED and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1 before triton is first imported")

VOCAB = 1000


def _canvas(batch, length, seed, quantize=None):
    g = torch.Generator().manual_seed(seed)
    entropy = torch.rand(batch, length, generator=g) * 0.2
    if quantize:  # few distinct values: many exact ties
        entropy = (entropy * quantize).round() / quantize
    current, denoised, noise = (torch.randint(0, VOCAB, (batch, length), generator=g) for _ in range(3))
    return entropy, current, denoised, noise


@pytest.mark.parametrize(
    "batch, length, bound, quantize, clamp_rate",
    [
        (1, 1, 0.1, None, 0.0),  # canvas of 1: always accepted
        (1, 1, 0.1, None, 1.0),  # canvas of 1, clamped: untouched
        (3, 7, 0.15, 8, 0.3),  # ties broken by index
        (2, 64, 0.5, None, 0.0),
        (2, 200, 1.0, 16, 0.25),  # not a power of two, ties and clamps
        (1, 256, 100.0, None, 0.5),  # bound above the total: every free position accepted
    ],
)
def test_triton_accepts_and_renoises_like_reference(batch, length, bound, quantize, clamp_rate):
    entropy, current, denoised, noise = _canvas(batch, length, length, quantize)
    clamped = torch.rand(batch, length, generator=torch.Generator().manual_seed(1)) < clamp_rate
    got = entropy_accept_triton(entropy, current, denoised, clamped, bound, noise, block_j=32)
    want = reference.entropy_accept(entropy, current, denoised, clamped, bound, noise)
    assert_equal("accept mask", got[1], want[1])
    assert_equal("next canvas", got[0], want[0])
    assert got[1].dtype == torch.bool and got[0].dtype == torch.int64


def test_triton_without_clamped_mask_matches_reference():
    entropy, current, denoised, noise = _canvas(4, 33, 0, quantize=4)
    got = entropy_accept_triton(entropy, current, denoised, None, 0.2, noise)
    want = reference.entropy_accept(entropy, current, denoised, None, 0.2, noise)
    assert_equal("accept mask", got[1], want[1])
    assert_equal("next canvas", got[0], want[0])


def test_clamped_positions_are_kept_and_spend_no_budget():
    # the clamped position has the lowest entropy; were it ranked, it would use the budget
    entropy = torch.tensor([[0.0, 0.3, 0.05, 0.5]])
    clamped = torch.tensor([[True, False, False, False]])
    current = torch.tensor([[10, 11, 12, 13]])
    denoised = torch.tensor([[20, 21, 22, 23]])
    noise = torch.tensor([[30, 31, 32, 33]])
    for fn in (reference.entropy_accept, entropy_accept_triton):
        next_canvas, accept = fn(entropy, current, denoised, clamped, 0.3, noise)
        # free order: 0.05 (sum before 0), 0.3 (0.05), 0.5 (0.35 > 0.3)
        assert_equal("accept mask", accept, torch.tensor([[False, True, True, False]]))
        assert_equal("next canvas", next_canvas, torch.tensor([[10, 21, 22, 33]]))


def test_reference_matches_transformers_entropy_bound_sampler():
    torch.manual_seed(0)
    logits = torch.randn(3, 48, 50) * torch.linspace(0.2, 6, 48)[None, :, None]
    entropy = torch.distributions.Categorical(logits=logits).entropy()  # distinct values
    current = torch.randint(0, 50, (3, 48))
    denoised = torch.randint(0, 50, (3, 48))
    noise = torch.randint(0, 50, (3, 48))
    sampler = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=0.8), 48, 50, 10)
    accepted = sampler.accept_canvas(current, denoised, logits, 0)
    want = torch.where(sampler.accepted_token_mask, accepted, noise)  # renoise with our tokens
    got = reference.entropy_accept(entropy, current, denoised, None, 0.8, noise)
    assert_equal("accept mask", got[1], sampler.accepted_token_mask)
    assert_equal("next canvas", got[0], want)
