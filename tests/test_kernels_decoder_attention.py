"""decoder_attention: flash Triton kernel against masked softmax attention."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

from types import SimpleNamespace

import pytest
import torch
from transformers.models.diffusion_gemma.modeling_diffusion_gemma import eager_attention_forward

import kernels
from kernels import reference
from kernels.decoder_attention import decoder_attention as decoder_attention_triton
from kernels.testing import assert_close

pytestmark = pytest.mark.skipif(not kernels.INTERPRETED and not torch.cuda.is_available(),
                                reason="needs a GPU or TRITON_INTERPRET=1 before triton is first imported")

DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 2e-2)]


def _qkv(batch, q_heads, kv_heads, canvas, cached, dim, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, canvas, dim, generator=g).to(dtype)
    k = torch.randn(batch, kv_heads, cached + canvas, dim, generator=g).to(dtype)
    v = torch.randn(batch, kv_heads, cached + canvas, dim, generator=g).to(dtype)
    return q, k, v


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize(
    "batch, q_heads, kv_heads, canvas, cached, dim, window",
    [
        (1, 3, 3, 1, 0, 16, None),  # canvas of 1, no prompt, odd head count, GQA 1
        (2, 4, 2, 5, 19, 24, 7),  # GQA 2, D=24 padded, window inside the prompt
        (1, 8, 2, 9, 40, 16, 100),  # GQA 4, window longer than the sequence
        (1, 2, 1, 20, 70, 24, None),  # keys span several blocks, full layer
        (1, 2, 2, 3, 5, 16, 1),  # window 1: a sliding layer sees no cached key
    ],
)
def test_triton_matches_reference(batch, q_heads, kv_heads, canvas, cached, dim, window, dtype, atol, rtol):
    q, k, v = _qkv(batch, q_heads, kv_heads, canvas, cached, dim, dtype, cached)
    got = decoder_attention_triton(q, k, v, cached, window, scale=0.3, block_m=16, block_n=16)
    want = reference.decoder_attention(q, k, v, cached, window, scale=0.3)
    assert got.dtype == dtype and got.shape == q.shape
    assert_close("attention", got, want, atol, rtol)


@pytest.mark.parametrize("window", [None, 6])
def test_reference_matches_transformers_eager_attention(window):
    q, k, v = _qkv(2, 4, 2, 5, 12, 16, torch.float32, 0)
    visible = reference.decoder_visible(12, 17, window)
    mask = torch.zeros(17).masked_fill(~visible, float("-inf"))[None, None, None, :]
    module = SimpleNamespace(num_key_value_groups=2, training=False, head_dim=16)
    want, _ = eager_attention_forward(module, q, k, v, mask, scaling=1.0)  # (B, C, Hq, D)
    got = reference.decoder_attention(q, k, v, 12, window, scale=1.0)
    assert_close("attention", got, want.transpose(1, 2), 1e-5, 1e-5)


def test_window_keeps_last_window_minus_one_cached_keys():
    visible = reference.decoder_visible(canvas_start=10, length=13, window=4)
    assert visible.tolist() == [False] * 7 + [True] * 6  # cached 7, 8, 9 and the 3 canvas keys
