"""Load-time weight-only quantization: logits against bf16 within measured bounds, the stored
layouts and their bytes, the int8 expert kernel, and clear errors for what cannot run."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported (the kernel test)

import pytest
import torch

import kernels
from engine.api import Engine
from engine.checkpoint import load_model
from engine.config import ModelConfig, read_json
from engine.model import KVCache
from engine.quantize import ExpertStack, QuantizeError, footprint, quantize_weight, stored_bytes
from kernels import reference
from kernels.testing import assert_close

EMBEDDED = "engine/default_model"

# Relative logit error ||q - bf16|| / ||bf16|| (encoder, decoder), bounded at ~1.5x the worst of
# `python -m benchmarks.quantize` (docs/quantization.md): tiny random checkpoints, seeds 0-2,
# measured int8 <= 0.16 / 0.061 and int4 <= 0.58 / 0.44 (near-uniform random routers flip experts,
# so these are loose); the embedded model int8 0.015 / 0.016 and int4 0.135 / 0.076.
BOUNDS = {
    ("tiny", "int8"): (0.25, 0.10),
    ("tiny", "int4"): (0.85, 0.65),
    ("embedded", "int8"): (0.03, 0.03),
    ("embedded", "int4"): (0.20, 0.12),
}


def _logits(model, config, seed=0):
    """Encoder logits of a 24-token prompt and decoder logits of a 16-token canvas after it."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, config.vocab_size, (1, 24), generator=g)
    cache = KVCache(config, 1, model.dtype, model.device)
    encoder = model.logits(model.encode(ids, cache))  # (1, 24, V)
    canvas = torch.randint(3, config.vocab_size, (1, 16), generator=g)
    decoder = model.decoder_logits(canvas, model.decoder_context(cache, 1), 24)  # (1, 16, V)
    return encoder, decoder


def _relative(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("which", ["tiny", "embedded"])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_logits_stay_within_measured_bounds(which, mode, tiny_model_dir):
    path = tiny_model_dir if which == "tiny" else EMBEDDED
    want = _logits(*load_model(path, dtype="bfloat16")[:2])
    got = _logits(*load_model(path, dtype="bfloat16", quantize=mode)[:2])
    errors = [_relative(g, w) for g, w in zip(got, want)]
    for part, error, bound in zip(("encoder", "decoder"), errors, BOUNDS[which, mode]):
        assert 0 < error <= bound, f"{which} {mode} {part} logits: relative error {error:.4f}, bound {bound}"


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_every_projection_and_expert_is_stored_quantized_and_bytes_match_inspect(mode, tiny_model_dir):
    model, config, _, _ = load_model(tiny_model_dir, dtype="bfloat16", quantize=mode)
    layer = model.layers[0]
    for weight in (layer.self_attn.q_proj.weight, layer.mlp_down.weight, model.sc_up.weight):
        assert type(weight).__module__.startswith("torchao"), type(weight)
    if mode == "int8":
        assert type(layer.experts_gate_up).__name__ == "Int8Tensor" and layer.experts_gate_up.qdata.dtype == torch.int8
    else:
        assert isinstance(layer.experts_gate_up, ExpertStack) and len(layer.experts_gate_up.experts) == config.num_experts
    for kept in (model.embed.weight, layer.router_proj.weight, layer.input_layernorm.weight):
        assert type(kept) is torch.nn.Parameter and kept.dtype == torch.bfloat16
    held = sum(stored_bytes(p) for p in model.parameters())  # ExpertStack's experts are parameters too
    assert held == footprint(config, mode).device_bytes
    assert held < 0.75 * footprint(config, "none").device_bytes


def test_inspect_footprint_of_the_26b_config():
    config = ModelConfig.from_hf_dict(read_json("benchmarks/diffusiongemma-26B-A4B-it/config.json"))
    bf16, int8, int4 = (footprint(config, m) for m in ("none", "int8", "int4"))
    assert 25.0e9 < bf16.params < 25.5e9  # text weights of the 26B (the vision tower is not loaded)
    assert bf16.device_bytes == 2 * bf16.params
    assert 0.5 < int8.device_bytes / bf16.device_bytes < 0.53
    assert 16e9 < int4.device_bytes < 18e9  # the "~18 GB" of community 4-bit builds


@pytest.mark.skipif(not kernels.INTERPRETED and not torch.cuda.is_available(), reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-4, 1e-4), (torch.bfloat16, 6e-2, 3e-2)])
def test_triton_moe_reads_int8_experts_like_their_dequantized_weights(dtype, atol, rtol):
    from kernels.moe_experts import moe_experts as moe_experts_triton

    g = torch.Generator().manual_seed(0)
    tokens, hidden, inter, experts, top_k = 13, 48, 40, 5, 2  # nothing a multiple of a block
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    gate_up = quantize_weight("layers.0.experts_gate_up", (torch.randn(experts, 2 * inter, hidden, generator=g)
                                                           * hidden**-0.5).to(dtype), "int8")
    down = quantize_weight("layers.0.experts_down", (torch.randn(experts, hidden, inter, generator=g)
                                                     * inter**-0.5).to(dtype), "int8")
    index = torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(tokens)])
    weights = torch.rand(tokens, top_k, generator=g)
    got = moe_experts_triton(x, index, weights, gate_up, down, block_m=16, block_n=16, block_k=16)
    want = reference.moe_experts(x, index, weights, gate_up.dequantize().to(dtype), down.dequantize().to(dtype))
    assert_close("int8 moe out", got, want, atol, rtol)
    assert_close("torchao F.linear path", reference.moe_experts(x, index, weights, gate_up, down), want, atol, rtol)


@pytest.mark.parametrize("kwargs, message", [
    ({"quantize": "int3"}, "unknown quantization 'int3'"),
    ({"quantize": "int8", "dtype": "float32"}, "float32 is the bit-exact parity mode"),
    ({"quantize": "int4", "dtype": "float16"}, "int4 needs bfloat16"),
    ({"quantize": "fp8", "dtype": "bfloat16"}, "fp8 needs a CUDA GPU"),
])
def test_unsupported_settings_fail_with_a_clear_error(kwargs, message, tiny_model_dir):
    with pytest.raises(QuantizeError, match=message):
        load_model(tiny_model_dir, **kwargs)
    with pytest.raises(QuantizeError, match=message):
        Engine.load(tiny_model_dir, **kwargs)


def test_int4_rejects_a_shape_its_packing_cannot_hold():
    with pytest.raises(QuantizeError, match="does not fit torchao's int4 packing"):
        quantize_weight("layers.0.mlp_up.weight", torch.randn(8, 64, dtype=torch.bfloat16), "int4")


def test_quantized_engine_generates_and_infills(tiny_model_dir):
    engine = Engine.load(tiny_model_dir, quantize="int4")  # a float32 file: --dtype auto computes in bf16
    assert engine.model.dtype == torch.bfloat16 and "weights int4" in engine.describe()
    out = engine.continue_text("def add(a, b):", max_new_tokens=8, seed=0)
    assert out.tokens > 0
    middles = engine.infill("def add(a, b):\n    return ", "\n", max_middle_tokens=4, seed=0)
    assert middles and all(m.tokens <= 4 for m in middles)
