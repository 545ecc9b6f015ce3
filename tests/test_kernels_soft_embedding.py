"""soft_embedding: online-softmax Triton kernel against softmax @ embedding."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

import pytest
import torch

import kernels
from kernels import reference
from kernels.soft_embedding import soft_embedding as soft_embedding_triton
from kernels.testing import assert_close

pytestmark = pytest.mark.skipif(not kernels.INTERPRETED and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1 before triton is first imported")

# bf16: the reference rounds probabilities to bf16 before the matmul, the kernel does not
DTYPES = [(torch.float32, 1e-5, 1e-4), (torch.bfloat16, 2e-2, 2e-2)]


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize(
    "lead, vocab, hidden",
    [
        ((1,), 1, 16),  # one-token vocabulary: output is scale * that embedding
        ((1,), 37, 24),  # canvas of 1, V below a block
        ((2, 9), 300, 40),  # V not a multiple of the block, H not a power of two
        ((70,), 130, 16),  # rows spill into a second row block
    ],
)
def test_triton_matches_softmax_matmul(lead, vocab, hidden, dtype, atol, rtol):
    torch.manual_seed(vocab)
    logits = torch.randn(*lead, vocab) * 6  # peaked rows: the running max moves between tiles
    logits[..., -1] += 20  # ...and the max can sit in the last, partial tile
    emb = torch.randn(vocab, hidden).to(dtype)
    got = soft_embedding_triton(logits, emb, 3.0, block_v=32)
    want = reference.soft_embedding(logits, emb, 3.0)
    assert got.dtype == dtype and got.shape == (*lead, hidden)
    assert_close("soft embedding", got, want, atol, rtol)


def test_reference_is_transformers_self_conditioning_input():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 64)
    emb = torch.randn(64, 32)
    scale = 32**0.5
    want = logits.softmax(-1, dtype=torch.float32) @ emb * scale  # DiffusionGemmaDecoderModel.forward
    assert_close("soft embedding", reference.soft_embedding(logits, emb, scale), want, 1e-5, 1e-5)
