"""Tiny random-weight checkpoints in the Hugging Face layout, for tests and first runs.

A real checkpoint in every respect the loader checks (config, safetensors, generation
config, byte-level BPE tokenizer with our special tokens) — only its weights are untrained.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import save_model
from ..config import GenerationConfig, ModelConfig
from ..model import DiffusionGemma, init_weights
from .bpe import train_tokenizer

_TOKENIZER_TEXT = [
    "def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n",
    "function add(a, b) {\n  return a + b;\n}\nconst x = [1, 2, 3].map((v) => v * 2);\n",
    '{"name": "dgemma", "version": "0.1.0", "items": [1, 2, 3], "ok": true, "none": null}\n',
    "| Name | Value |\n|:-----|------:|\n| a | 1 |\n| b | 2 |\n# Title\n\nSome *text* here.\n",
    "import os\nimport sys\n\nfor i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
]


def tiny_config(vocab_size: int, canvas_length: int = 32) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
        num_global_key_value_heads=1, sliding_window=64,
        layer_types=["sliding_attention", "full_attention"], num_experts=4, top_k_experts=2,
        moe_intermediate_size=32, canvas_length=canvas_length, final_logit_softcapping=30.0,
    )


def write_tiny_checkpoint(path: str | Path, seed: int = 0, steps: int = 8) -> Path:
    """Write a tiny random DiffusionGemma checkpoint (~0.2M params) to `path` and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(_TOKENIZER_TEXT * 4, vocab_size=384)
    tokenizer.save(str(path / "tokenizer.json"))
    config = tiny_config(tokenizer.get_vocab_size(with_added_tokens=True))
    model = DiffusionGemma(config)
    init_weights(model, seed=seed)
    gen = GenerationConfig(max_denoising_steps=steps, eos_token_id=[1], pad_token_id=0)
    save_model(model, gen, path)
    return path
