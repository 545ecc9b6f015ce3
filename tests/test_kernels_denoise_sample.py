"""denoise_sample: the fused Triton sampler against its torch reference (the spec)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

import pytest
import torch

import kernels
from kernels import reference
from kernels.denoise_sample import denoise_sample as denoise_sample_triton
from kernels.denoise_sample import denoise_sample_from_hidden as denoise_sample_from_hidden_triton
from kernels.testing import assert_close, assert_equal

pytestmark = pytest.mark.skipif(not kernels.INTERPRETED and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1 before triton is first imported")

DTYPES = [(torch.float32, 2e-5, 2e-5), (torch.bfloat16, 2e-5, 2e-5)]  # entropy (dtype, atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize(
    "lead, vocab, splits, softcap",
    [
        ((1,), 1, 1, None),  # a one-token vocabulary
        ((1,), 37, 2, None),  # canvas of 1, vocab far below a block, empty second split
        ((2, 5), 1000, 3, 30.0),  # V not a multiple of the block, uneven splits
        ((3,), 4099, 1, 2.0),  # hard softcap flattens logits: close calls between columns
    ],
)
def test_logits_sampler_draws_reference_tokens_and_entropy(lead, vocab, splits, softcap, dtype, atol, rtol):
    torch.manual_seed(vocab)
    logits = (torch.randn(*lead, vocab) * 4).to(dtype)
    got = denoise_sample_triton(logits, 0.7, seed=1234, offset=9, softcap=softcap, splits=splits, block_v=256)
    want = reference.denoise_sample(logits, 0.7, seed=1234, offset=9, softcap=softcap)
    assert_equal("sample", got[0], want[0])
    assert_equal("argmax", got[1], want[1])
    assert_close("entropy", got[2], want[2], atol, rtol)
    assert got[0].shape == lead and got[0].dtype == torch.int64 and got[2].dtype == torch.float32


@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-4, 1e-4), (torch.bfloat16, 1e-4, 1e-4)])
@pytest.mark.parametrize("lead, vocab, hidden, splits", [((1,), 300, 24, 2), ((3, 7), 77, 40, 1)])
def test_hidden_sampler_draws_reference_tokens_without_logits(lead, vocab, hidden, splits, dtype, atol, rtol):
    torch.manual_seed(hidden)
    h = torch.randn(*lead, hidden).to(dtype)
    emb = torch.randn(vocab, hidden).to(dtype)
    got = denoise_sample_from_hidden_triton(
        h, emb, 0.8, seed=7, softcap=30.0, splits=splits, block_v=64, block_h=16
    )
    want = reference.denoise_sample_from_hidden(h, emb, 0.8, seed=7, softcap=30.0)
    assert_equal("sample", got[0], want[0])
    assert_equal("argmax", got[1], want[1])
    assert_close("entropy", got[2], want[2], atol, rtol)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_seed_reproducibility_and_offset_chunking(backend):
    logits = torch.randn(8, 50) * 0.5  # flat logits: samples depend on the noise
    with kernels.force(backend):
        full = kernels.denoise_sample(logits, 1.0, seed=3)[0]
        again = kernels.denoise_sample(logits, 1.0, seed=3)[0]
        other = kernels.denoise_sample(logits, 1.0, seed=4)[0]
        chunks = torch.cat([kernels.denoise_sample(logits[:5], 1.0, seed=3)[0],
                            kernels.denoise_sample(logits[5:], 1.0, seed=3, offset=5)[0]])
    assert_equal("same seed", again, full)
    assert_equal("row chunks with offset", chunks, full)
    assert (other != full).any(), "a different seed drew the same 8 tokens"


def test_gumbel_max_samples_follow_softmax():
    # 40k rows of the same 4 logits: each row has its own counter noise
    probs = torch.tensor([0.5, 0.25, 0.15, 0.10])
    logits = probs.log().expand(40_000, 4)
    sample = reference.denoise_sample(logits, 1.0, seed=11)[0]
    freq = torch.bincount(sample, minlength=4).float() / sample.numel()
    assert_close("empirical frequencies", freq, probs, atol=0.01, rtol=0)


def _fmix32(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_counter_hash_equals_plain_python_uint32_arithmetic():
    # the torch hash relies on int32 products wrapping: check it against exact integers
    seed, offset = 2**40 + 99, 2**32 - 3  # a 64-bit seed; rows wrap past 2^32
    folded = (seed ^ (seed >> 32)) & 0xFFFFFFFF
    got = reference.counter_hash(seed, offset, 4, 40)
    for r in range(4):
        key = _fmix32(folded ^ _fmix32((offset + r) & 0xFFFFFFFF))
        want = torch.tensor([_fmix32(key ^ ((v * 0x9E3779B9) & 0xFFFFFFFF)) for v in range(40)])
        assert_equal(f"row {r}", got[r], want)


def test_counter_noise_is_uniform_and_gumbel_moments_hold():
    u = ((reference.counter_hash(5, 0, 64, 4096) >> 9).float() + 0.5) * 2.0**-23
    assert 0.0 < u.min() and u.max() < 1.0
    assert_close("uniform mean", u.mean(), torch.tensor(0.5), atol=2e-3, rtol=0)
    g = reference.gumbel_noise(5, 0, 64, 4096)
    assert_close("gumbel mean (Euler-Mascheroni)", g.mean(), torch.tensor(0.5772), atol=1e-2, rtol=0)


def test_entropy_matches_categorical_entropy_and_greedy_argmax():
    logits = torch.randn(6, 33) * 3
    _, argmax, entropy = reference.denoise_sample(logits, 0.5, seed=0)
    want = torch.distributions.Categorical(logits=logits / 0.5).entropy()
    assert_close("entropy", entropy, want, atol=1e-5, rtol=1e-5)
    assert_equal("argmax", argmax, logits.argmax(-1))


@pytest.mark.slow
def test_kernel_entropies_give_reference_accept_set():
    torch.manual_seed(1)
    logits = torch.randn(2, 64, 500) * torch.linspace(0.5, 8, 64)[None, :, None]  # spread of entropies
    sample, _, entropy = denoise_sample_triton(logits, 0.6, seed=2, splits=2, block_v=128)
    want_sample, _, want_entropy = reference.denoise_sample(logits, 0.6, seed=2)
    current = torch.randint(0, 500, (2, 64))
    noise = torch.randint(0, 500, (2, 64))
    got = reference.entropy_accept(entropy, current, sample, None, 1.0, noise)
    want = reference.entropy_accept(want_entropy, current, want_sample, None, 1.0, noise)
    assert got[1].any() and not got[1].all()
    assert_equal("accept mask", got[1], want[1])
    assert_equal("next canvas", got[0], want[0])
