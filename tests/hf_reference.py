"""Tiny random DiffusionGemma checkpoints written by transformers' own `save_pretrained`.

transformers is the numerical ground truth: used here and in benchmarks, never at run time.
"""

from __future__ import annotations

import torch

# Small configs that still cross every code path: sliding + full layers with their own head
# dims / KV heads / RoPE, GQA, MoE top-k, a sliding window shorter than the prompts.
CONFIGS = {
    "sliding-full-gqa": dict(
        num_hidden_layers=3, layer_types=["sliding_attention", "full_attention", "full_attention"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
        num_global_key_value_heads=1, hidden_size=64, intermediate_size=96, num_experts=4,
        top_k_experts=2, moe_intermediate_size=32, vocab_size=101, sliding_window=5),
    "default-pattern-top1": dict(
        num_hidden_layers=6, num_attention_heads=3, num_key_value_heads=1, head_dim=8,
        global_head_dim=16, hidden_size=48, intermediate_size=64, num_experts=3, top_k_experts=1,
        moe_intermediate_size=16, vocab_size=97, sliding_window=4),
}
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
              num_key_value_heads=2, head_dim=8)


def make_reference(name: str, path, *, seed: int = 0, canvas_length: int = 8, generation: dict | None = None):
    """Build, randomize (weights, norms and both layer scalars) and save a reference model."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        DiffusionGemmaGenerationConfig, EntropyBoundSamplerConfig)

    torch.manual_seed(seed)
    config = DiffusionGemmaConfig(text_config=dict(CONFIGS[name]), vision_config=dict(VISION),
                                  canvas_length=canvas_length)
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "vision" in n:
                continue
            if "norm" in n or "scale" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.05)
        for n, b in model.named_buffers():
            if n.endswith("layer_scalar"):
                b.copy_(1 + 0.1 * torch.randn_like(b))
    gen = dict(eos_token_id=[1, 7], pad_token_id=0, max_denoising_steps=12, t_min=0.4, t_max=0.8,
               stability_threshold=1, confidence_threshold=0.005, entropy_bound=0.3)
    gen.update(generation or {})
    bound = gen.pop("entropy_bound")
    model.generation_config = DiffusionGemmaGenerationConfig(
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=bound), **gen)
    model.save_pretrained(path)
    return model
