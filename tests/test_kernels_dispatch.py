"""The kernels switch: Triton for CUDA tensors, the torch reference otherwise, forceable."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

import subprocess
import sys

import pytest
import torch

import kernels
from kernels.testing import assert_close, assert_equal


def test_auto_uses_torch_for_cpu_tensors_and_force_overrides():
    x = torch.zeros(2, 8)
    assert kernels.backend_for(x) == "torch"
    with kernels.force("torch"):
        assert kernels.backend_for(x) == "torch"
        if kernels.INTERPRETED:
            with kernels.force("triton"):
                assert kernels.backend_for(x) == "triton"
            assert kernels.backend_for(x) == "torch", "force did not restore the outer mode"
    assert kernels.backend_for(x) == "torch"


def test_env_switch_and_invalid_modes(monkeypatch):
    x = torch.zeros(2, 8)
    monkeypatch.setenv("DGEMMA_KERNELS", "torch")
    assert kernels.backend_for(x) == "torch"
    monkeypatch.setenv("DGEMMA_KERNELS", "cuda")
    with pytest.raises(ValueError, match="DGEMMA_KERNELS"):
        kernels.backend_for(x)
    with pytest.raises(ValueError, match="mode"):
        with kernels.force("fast"):
            pass


@pytest.mark.skipif(not kernels.INTERPRETED, reason="needs TRITON_INTERPRET=1 before triton is first imported")
def test_forced_paths_agree_through_the_public_api():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 50)
    emb = torch.randn(50, 16)
    q, k, v = torch.randn(1, 2, 3, 16), torch.randn(1, 1, 7, 16), torch.randn(1, 1, 7, 16)
    results = {}
    for mode in ("torch", "triton"):
        with kernels.force(mode):
            results[mode] = (
                kernels.denoise_sample(logits, 0.9, seed=1),
                kernels.soft_embedding(logits, emb, 2.0),
                kernels.decoder_attention(q, k, v, 4, 2),
            )
    (ts, ta, te), tsoft, tattn = results["triton"]
    (rs, ra, re), rsoft, rattn = results["torch"]
    assert_equal("sample", ts, rs)
    assert_equal("argmax", ta, ra)
    assert_close("entropy", te, re, 1e-5, 1e-5)
    assert_close("soft embedding", tsoft, rsoft, 1e-5, 1e-4)
    assert_close("attention", tattn, rattn, 1e-5, 1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sampler_rejects_non_positive_temperature(backend):
    if backend == "triton" and not kernels.INTERPRETED:
        pytest.skip("needs TRITON_INTERPRET=1 before triton is first imported")
    with kernels.force(backend), pytest.raises(ValueError, match="temperature"):
        kernels.denoise_sample(torch.zeros(2, 5), 0.0, seed=0)


def test_decoder_attention_rejects_keys_of_the_wrong_length():
    q, k = torch.zeros(1, 2, 3, 16), torch.zeros(1, 1, 9, 16)
    with pytest.raises(ValueError, match="canvas_start"):
        kernels.decoder_attention(q, k, k, canvas_start=4, window=None)


@pytest.mark.slow
def test_import_without_triton_falls_back_to_torch():
    # a meta-path finder that refuses `triton` stands in for an environment without it
    code = (
        "import sys\n"
        "class NoTriton:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('no triton')\n"
        "sys.meta_path.insert(0, NoTriton())\n"
        "import torch, kernels\n"
        "assert not kernels.HAS_TRITON\n"
        "s, a, e = kernels.denoise_sample(torch.randn(3, 10), 1.0, seed=0)\n"
        "print(kernels.backend_for(torch.zeros(1)), tuple(s.shape))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch (3,)"
