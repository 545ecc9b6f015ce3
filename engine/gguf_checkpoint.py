"""DiffusionGemma GGUF checkpoints (llama.cpp `diffusion-gemma` builds: Q8_0, Q6_K, Q4_K_M...).

Reads the file through the `gguf` package and dequantizes one tensor at a time into the model
built on the meta device (then `engine.quantize` may requantize it, as for safetensors). The
tensor names and metadata keys are those of llama.cpp's draft conversion (PRs #24423 / #24427)
as the published Unsloth GGUF carries them; docs/quantization.md lists the sources. The
tokenizer is the Hugging Face `tokenizer.json`, expected beside the .gguf file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .config import FULL, SLIDING, GenerationConfig, ModelConfig
from .errors import CheckpointError
from .model import DiffusionGemma
from .quantize import check_mode, quantize_weight, release_freed_heap

log = logging.getLogger(__name__)

ARCH = "diffusion-gemma"
# GGUF name -> our parameter name (engine.checkpoint.LAYER_NAMES / GLOBAL_NAMES for safetensors)
GLOBAL_NAMES = {
    "token_embd.weight": "embed.weight",
    "output_norm.weight": "norm.weight",
    "self_cond_pre_norm.weight": "sc_pre_norm.weight",
    "self_cond_gate.weight": "sc_gate.weight",
    "self_cond_up.weight": "sc_up.weight",
    "self_cond_down.weight": "sc_down.weight",
}
LAYER_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",  # sliding layers only
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "ffn_gate.weight": "mlp_gate.weight",
    "ffn_up.weight": "mlp_up.weight",
    "ffn_down.weight": "mlp_down.weight",
    "post_ffw_norm_1.weight": "post_feedforward_layernorm_1.weight",
    "ffn_gate_inp.weight": "router_proj.weight",
    "ffn_gate_inp.scale": "router_scale",
    "ffn_down_exps.scale": "per_expert_scale",
    "pre_ffw_norm_2.weight": "pre_feedforward_layernorm_2.weight",
    "ffn_gate_up_exps.weight": "experts_gate_up",  # fused, gate rows first, as in the HF checkpoint
    "ffn_down_exps.weight": "experts_down",
    "post_ffw_norm_2.weight": "post_feedforward_layernorm_2.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "layer_output_scale.weight": "decoder_scalar",
    "enc_layer_output_scale.weight": "encoder_scalar",
}
UNUSED = ("rope_freqs.weight",)  # read only to derive the partial rotary factor


def find_gguf(path: str | Path) -> Path | None:
    """The .gguf file `path` names, or the single one in directory `path` when it holds no safetensors."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return p
    if p.is_dir() and not any(p.glob("*.safetensors")) and not (p / "config.json").exists():
        found = sorted(p.glob("*.gguf"))
        if len(found) > 1:
            raise CheckpointError(f"{p}: {len(found)} .gguf files; pass one of them")
        return found[0] if found else None
    return None


def _reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise CheckpointError(f"{path}: GGUF checkpoints need the gguf package: pip install 'dgemma-ls[quantize]'") from None

    try:
        return GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None


def _config(reader, path: Path) -> tuple[ModelConfig, GenerationConfig]:
    def meta(key, default=None, required=False):
        field = reader.fields.get(key)
        if field is None:
            if required:
                raise CheckpointError(f"{path}: GGUF metadata {key!r} is missing")
            return default
        return field.contents()

    arch = meta("general.architecture")
    if arch != ARCH:
        raise CheckpointError(f"{path}: GGUF architecture is {arch!r}, expected {ARCH!r} (a DiffusionGemma conversion)")
    def key(name: str) -> str:
        return f"{ARCH}.{name}"

    n = int(meta(key("block_count"), required=True))
    pattern = meta(key("attention.sliding_window_pattern"), required=True)
    if not isinstance(pattern, list) or len(pattern) != n:
        raise CheckpointError(f"{path}: {key('attention.sliding_window_pattern')} must list {n} layers")
    layer_types = [SLIDING if sliding else FULL for sliding in pattern]
    kv = meta(key("attention.head_count_kv"), required=True)
    kv = kv if isinstance(kv, list) else [kv] * n
    sliding_kv = next((int(h) for h, t in zip(kv, layer_types) if t == SLIDING), int(kv[0]))
    full_kv = next((int(h) for h, t in zip(kv, layer_types) if t == FULL), sliding_kv)
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{path}: tensor 'token_embd.weight' is missing")
    global_head_dim = int(meta(key("attention.key_length"), required=True))
    partial = 0.25
    if "rope_freqs.weight" in tensors:  # llama.cpp's frequency factors: 1 on the rotated pairs
        from gguf.quants import dequantize

        factors = dequantize(tensors["rope_freqs.weight"].data, tensors["rope_freqs.weight"].tensor_type)
        partial = 2 * int((factors == 1.0).sum()) / global_head_dim
    config = ModelConfig(
        vocab_size=int(tensors["token_embd.weight"].shape[1]),
        hidden_size=int(meta(key("embedding_length"), required=True)),
        intermediate_size=int(meta(key("feed_forward_length"), required=True)),
        num_hidden_layers=n,
        num_attention_heads=int(meta(key("attention.head_count"), required=True)),
        num_key_value_heads=sliding_kv,
        head_dim=int(meta(key("attention.key_length_swa"), required=True)),
        global_head_dim=global_head_dim,
        num_global_key_value_heads=full_kv,
        sliding_window=int(meta(key("attention.sliding_window"), required=True)),
        layer_types=layer_types,
        rope_parameters={
            SLIDING: {"rope_type": "default", "rope_theta": float(meta(key("rope.freq_base_swa"), 10_000.0))},
            FULL: {"rope_type": "proportional", "partial_rotary_factor": partial,
                   "rope_theta": float(meta(key("rope.freq_base"), 1_000_000.0))},
        },
        rms_norm_eps=float(meta(key("attention.layer_norm_rms_epsilon"), 1e-6)),
        final_logit_softcapping=meta(key("final_logit_softcapping"), 30.0),
        num_experts=int(meta(key("expert_count"), required=True)),
        top_k_experts=int(meta(key("expert_used_count"), required=True)),
        moe_intermediate_size=int(meta(key("expert_feed_forward_length"), required=True)),
        canvas_length=int(meta("diffusion.canvas_length", required=True)),
        pad_token_id=meta("tokenizer.ggml.padding_token_id", 0),
        eos_token_id=meta("tokenizer.ggml.eos_token_id", 1),
        bos_token_id=meta("tokenizer.ggml.bos_token_id", 2),
        max_position_embeddings=int(meta(key("context_length"), 131_072)),
    )
    gen = {"eos_token_id": config.eos_ids, "pad_token_id": config.pad_token_id}
    if meta("diffusion.eb_max_steps") is not None:
        gen["max_denoising_steps"] = int(meta("diffusion.eb_max_steps"))
    try:
        return config, GenerationConfig.from_hf_dict(gen)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def gguf_names(config: ModelConfig) -> dict[str, str]:
    """Our parameter name -> the GGUF tensor holding it."""
    names = {ours: theirs for theirs, ours in GLOBAL_NAMES.items()}
    for i, spec in enumerate(config.layers):
        for theirs, ours in LAYER_NAMES.items():
            if ours == "self_attn.v_proj.weight" and not spec.sliding:
                continue
            names[f"layers.{i}.{ours}"] = f"blk.{i}.{theirs}"
    return names


def load_gguf(path: Path, dtype: str | torch.dtype = "auto", device: str = "cpu", quantize: str = "none"):
    """-> (model, ModelConfig, GenerationConfig, the file's directory), as engine.checkpoint.load_model."""
    from .checkpoint import DTYPES, _place

    if not (path.parent / "tokenizer.json").is_file():
        raise CheckpointError(f"{path.parent}: no tokenizer.json beside {path.name}; the GGUF's own vocabulary is "
                              "not read: put the model's Hugging Face tokenizer.json there")
    reader = _reader(path)
    from gguf.quants import dequantize

    config, gen = _config(reader, path)
    if dtype in (None, "auto"):
        dtype = torch.bfloat16  # the file's blocks are integer codes: compute in bf16
    elif not isinstance(dtype, torch.dtype):
        if dtype not in DTYPES:
            raise CheckpointError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
        dtype = DTYPES[dtype]
    check_mode(quantize, dtype, device)
    tensors = {t.name: t for t in reader.tensors}
    with torch.device("meta"):
        model = DiffusionGemma(config)
    expected = dict(model.named_parameters())
    for ours, theirs in gguf_names(config).items():
        tensor = tensors.get(theirs)
        if tensor is None:
            raise CheckpointError(f"{path}: tensor {theirs!r} is missing")
        try:
            values = dequantize(tensor.data, tensor.tensor_type)
        except (NotImplementedError, ValueError) as e:
            raise CheckpointError(f"{path}: tensor {theirs} ({tensor.tensor_type.name}) cannot be dequantized ({e})") from None
        t = torch.from_numpy(values.copy()).reshape(-1) if values.size == 1 else torch.from_numpy(values.copy())
        want = tuple(expected[ours].shape)
        if tuple(t.shape) != want:
            raise CheckpointError(f"{path}: tensor {theirs} has shape {tuple(t.shape)}, the metadata implies {want}")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: tensor {theirs} contains NaN or Inf")
        _place(model, ours, quantize_weight(ours, t.to(device=device, dtype=dtype), quantize))
        del t, values
        release_freed_heap()
    extra = set(tensors) - set(gguf_names(config).values()) - set(UNUSED)
    if extra:
        log.info("%s: %d GGUF tensors not used by the text engine (e.g. %s)", path, len(extra), min(extra))
    model._inv_freq = {spec: inv.to(device) for spec, inv in model._inv_freq.items()}
    model.requires_grad_(False).eval()
    return model, config, gen, path.parent
