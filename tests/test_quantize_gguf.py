"""DiffusionGemma GGUF checkpoints: a tiny model written with gguf's own writer in the llama.cpp
`diffusion-gemma` layout (Q8_0 blocks for the matrices, F32 for norms and scalars) loads
through the gguf package to the same logits as its safetensors source, within Q8_0's error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import load_model
from engine.errors import CheckpointError
from engine.gguf_checkpoint import ARCH, GLOBAL_NAMES, LAYER_NAMES
from engine.model import KVCache

gguf = pytest.importorskip("gguf")
from gguf.quants import quantize


def write_gguf(model, config, out: Path, quantized: bool = True) -> Path:
    """The model as a llama.cpp diffusion-gemma GGUF: the metadata keys and tensor names of the
    draft conversion (llama.cpp PRs #24423 / #24427), written by gguf.GGUFWriter."""
    writer = gguf.GGUFWriter(str(out), ARCH)
    full_dim = next(s.head_dim for s in config.layers if not s.sliding)
    sliding_dim = next(s.head_dim for s in config.layers if s.sliding)
    def key(name):
        return f"{ARCH}.{name}"

    writer.add_uint32(key("block_count"), config.num_hidden_layers)
    writer.add_uint32(key("embedding_length"), config.hidden_size)
    writer.add_uint32(key("feed_forward_length"), config.intermediate_size)
    writer.add_uint32(key("attention.head_count"), config.num_attention_heads)
    writer.add_array(key("attention.head_count_kv"), [s.num_kv_heads for s in config.layers])
    writer.add_uint32(key("attention.key_length"), full_dim)
    writer.add_uint32(key("attention.key_length_swa"), sliding_dim)
    writer.add_uint32(key("attention.sliding_window"), config.sliding_window)
    writer.add_array(key("attention.sliding_window_pattern"), [s.sliding for s in config.layers])
    writer.add_float32(key("attention.layer_norm_rms_epsilon"), config.rms_norm_eps)
    writer.add_float32(key("rope.freq_base"), 1_000_000.0)
    writer.add_float32(key("rope.freq_base_swa"), 10_000.0)
    writer.add_float32(key("final_logit_softcapping"), config.final_logit_softcapping)
    writer.add_uint32(key("expert_count"), config.num_experts)
    writer.add_uint32(key("expert_used_count"), config.top_k_experts)
    writer.add_uint32(key("expert_feed_forward_length"), config.moe_intermediate_size)
    writer.add_uint32(key("context_length"), config.max_position_embeddings)
    writer.add_uint32("diffusion.canvas_length", config.canvas_length)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 1)
    writer.add_uint32("tokenizer.ggml.padding_token_id", 0)
    # llama.cpp's proportional-RoPE frequency factors: 1 on the rotated pairs, huge on the rest
    rotated = int(0.25 * full_dim // 2)
    writer.add_tensor("rope_freqs.weight", np.array([1.0] * rotated + [1e30] * (full_dim // 2 - rotated),
                                                    dtype=np.float32))
    params = dict(model.named_parameters())
    names = {f"{theirs}": ours for theirs, ours in GLOBAL_NAMES.items()}
    for i, spec in enumerate(config.layers):
        for theirs, ours in LAYER_NAMES.items():
            if ours != "self_attn.v_proj.weight" or spec.sliding:
                names[f"blk.{i}.{theirs}"] = f"layers.{i}.{ours}"
    for theirs, ours in names.items():
        values = params[ours].detach().float().numpy()
        if quantized and values.ndim >= 2 and values.shape[-1] % 32 == 0:
            writer.add_tensor(theirs, quantize(values, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(theirs, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _logits(model, config):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.vocab_size, (1, 24), generator=g)
    cache = KVCache(config, 1, model.dtype, model.device)
    encoder = model.logits(model.encode(ids, cache))  # (1, 24, V)
    canvas = torch.randint(3, config.vocab_size, (1, 16), generator=g)
    return encoder, model.decoder_logits(canvas, model.decoder_context(cache, 1), 24)  # (1, 16, V)


@pytest.fixture(scope="module")
def gguf_pair(tiny_model_dir, tmp_path_factory):
    source = load_model(tiny_model_dir, dtype="float32")
    out = tmp_path_factory.mktemp("gguf")
    shutil.copy(Path(tiny_model_dir) / "tokenizer.json", out / "tokenizer.json")
    return source, write_gguf(source[0], source[1], out / "tiny-Q8_0.gguf")


def test_gguf_config_is_read_from_the_metadata(gguf_pair):
    (_, want, _, _), path = gguf_pair
    _, got, _, root = load_model(path, dtype="float32")
    assert root == path.parent
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_experts", "top_k_experts", "canvas_length",
                  "moe_intermediate_size", "sliding_window", "layer_types"):
        assert getattr(got, field) == getattr(want, field), field
    assert got.layers == want.layers  # head dims, KV heads, RoPE kind / theta / partial factor per layer


def test_f32_gguf_gives_the_safetensors_logits_bit_for_bit(gguf_pair, tmp_path):
    (model, config, _, _), path = gguf_pair
    shutil.copy(path.parent / "tokenizer.json", tmp_path / "tokenizer.json")
    f32 = write_gguf(model, config, tmp_path / "tiny-F32.gguf", quantized=False)
    for part, got, want in zip(("encoder", "decoder"), _logits(*load_model(f32, dtype="float32")[:2]),
                               _logits(model, config)):
        assert torch.equal(got, want), f"{part} logits differ: every name, layout and scalar must map exactly"


def test_q8_0_gguf_logits_stay_within_the_measured_bound(gguf_pair):
    (model, config, _, _), path = gguf_pair
    want = _logits(model, config)
    got = _logits(*load_model(path, dtype="float32")[:2])
    # Q8_0 everywhere (the tied embedding too) measured 0.062 / 0.036 on this checkpoint, at most
    # 0.165 / 0.121 over seeds 0-2 (random routers flip experts); bounds ~1.5x the worst
    for part, g, w, bound in zip(("encoder", "decoder"), got, want, (0.25, 0.2)):
        error = ((g - w).norm() / w.norm()).item()
        assert 0 < error < bound, f"{part} logits: relative error {error:.4f}"


def test_gguf_loads_quantized_and_directory_form(gguf_pair):
    _, path = gguf_pair
    quantized, *_ = load_model(path.parent, quantize="int8")  # the directory holding one .gguf; auto -> bf16
    assert type(quantized.layers[0].experts_gate_up).__name__ == "Int8Tensor"
    assert quantized.dtype == torch.bfloat16


def test_gguf_of_another_architecture_or_without_tokenizer_is_refused(gguf_pair, tmp_path):
    _, path = gguf_pair
    lone = tmp_path / "lone.gguf"
    shutil.copy(path, lone)
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        load_model(lone)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(path.parent / "tokenizer.json", other / "tokenizer.json")
    writer = gguf.GGUFWriter(str(other / "gemma3.gguf"), "gemma3")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="expected 'diffusion-gemma'"):
        load_model(other / "gemma3.gguf")
