"""A tiny random Gemma 3 for the converter and embedded-model tests: saved by transformers, and
written as llama.cpp writes a gemma3 GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")


def tiny_gemma3(path: Path, vocab: int = 300):
    """Gemma3ForCausalLM with norm weights made non-trivial, saved to `path`; returns the model."""
    config = transformers.Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=1, head_dim=32, sliding_window=16, query_pre_attn_scalar=32,
        final_logit_softcapping=None, max_position_embeddings=256,
        # weights at a trained model's scale: activations far above the norms' eps, where the
        # MLP's extra output norm is a no-op (at transformers' default 0.02 it is not: ~9 %)
        initializer_range=0.2)
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(path)
    return model


def write_gguf(hf, path):
    """The tiny model as llama.cpp writes a gemma3 GGUF: F32 tensors, norms stored as 1 + w."""
    c = hf.config
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["full_attention"]["rope_theta"])
    w.add_sliding_window(c.sliding_window)
    w.add_string("general.license", "gemma")
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for theirs, ours_ in {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                          "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
                          "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
                          "post_feedforward_layernorm": "post_ffw_norm"}.items():
        for i in range(c.num_hidden_layers):
            names[f"model.layers.{i}.{theirs}.weight"] = f"blk.{i}.{ours_}.weight"
    state = hf.state_dict()
    for theirs, name in names.items():
        t = state[theirs].float()
        if "norm" in theirs:
            t = t + 1.0
        w.add_tensor(name, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


