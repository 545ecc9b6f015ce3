"""Gemma 3 (autoregressive) -> DiffusionGemma: the pretrained base mapped into our layout.

Reads a Gemma 3 text checkpoint (llama.cpp GGUF through the `gguf` package, or a Hugging Face
`Gemma3ForCausalLM` safetensors directory) and writes the DiffusionGemma weights that make the
causal encoder compute what Gemma 3 computes. Knows checkpoint layouts, not tokenization text.

What maps exactly: Gemma's norms x·(1+w) are ours with weight 1+w (GGUF stores 1+w already);
the 1/sqrt(query_pre_attn_scalar) attention scale is folded into q_norm (DiffusionGemma scales
by 1.0); sandwich norms; the dense MLP (its output norm `post_feedforward_layernorm_1` at 1 is
a no-op under the outer norm while the MLP output's mean square is far above eps, as in a trained
model: the real 270M matches to ~1e-5 per layer); the MoE branch is exactly zero (one zero expert whose output norm
weight is 0); per-layer-type RoPE; tied sqrt(hidden)-scaled embeddings; the self-conditioning
block starts at zero (down projection 0).

What maps approximately: DiffusionGemma normalises every value vector (`v_norm`, no weight).
- Sliding layers: v_proj is scaled by 2^-24, so the norm's input sits far below sqrt(eps) and
  the norm is linear there (relative error ~1e-7); o_proj is scaled back up (the
  post-attention norm that follows is scale-free, so powers of two suffice).
- Full layers have no v_proj (values are the pre-norm keys). They are widened to head_dim 512:
  key rows [k; 2^-8·v] and query rows [q; 0] (rotated halves interleaved so RoPE's pairs stay
  Gemma's), so scores are Gemma's; the values' v half is v / rms(k) per key token, which the
  post-attention norm fixes only up to the spread of rms(k) across tokens: the one inexact part.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import FULL, SLIDING, GenerationConfig, ModelConfig
from .errors import CheckpointError
from .model import DiffusionGemma

log = logging.getLogger(__name__)

SLIDING_V_SCALE = 2.0**-24  # sliding layers: v_proj * this keeps v_norm linear
SLIDING_O_SCALE = 2.0**14  # ~ sqrt(eps) / SLIDING_V_SCALE, a power of two
FULL_V_SCALE = 2.0**-8  # full layers: the value half of the widened keys
FULL_O_SCALE = 2.0**8
EXPERT_WIDTH = 8  # the zero expert's size (it never contributes)

# GGUF tensor name (after `blk.{i}.`) -> canonical name; norms hold the scale 1+w
GGUF_LAYER = {
    "attn_norm.weight": "input_layernorm",
    "attn_q.weight": "q_proj",
    "attn_k.weight": "k_proj",
    "attn_v.weight": "v_proj",
    "attn_output.weight": "o_proj",
    "attn_q_norm.weight": "q_norm",
    "attn_k_norm.weight": "k_norm",
    "post_attention_norm.weight": "post_attention_layernorm",
    "ffn_norm.weight": "pre_feedforward_layernorm",
    "ffn_gate.weight": "gate_proj",
    "ffn_up.weight": "up_proj",
    "ffn_down.weight": "down_proj",
    "post_ffw_norm.weight": "post_feedforward_layernorm",
}
# Hugging Face Gemma3ForCausalLM name (after `model.layers.{i}.`) -> canonical name
HF_LAYER = {
    "input_layernorm.weight": "input_layernorm",
    "self_attn.q_proj.weight": "q_proj",
    "self_attn.k_proj.weight": "k_proj",
    "self_attn.v_proj.weight": "v_proj",
    "self_attn.o_proj.weight": "o_proj",
    "self_attn.q_norm.weight": "q_norm",
    "self_attn.k_norm.weight": "k_norm",
    "post_attention_layernorm.weight": "post_attention_layernorm",
    "pre_feedforward_layernorm.weight": "pre_feedforward_layernorm",
    "mlp.gate_proj.weight": "gate_proj",
    "mlp.up_proj.weight": "up_proj",
    "mlp.down_proj.weight": "down_proj",
    "post_feedforward_layernorm.weight": "post_feedforward_layernorm",
}
NORMS = {"input_layernorm", "q_norm", "k_norm", "post_attention_layernorm", "pre_feedforward_layernorm",
         "post_feedforward_layernorm"}


@dataclass
class Gemma3:
    """A Gemma 3 text model as plain tensors (fp32): `layers[i][canonical]`, norms as scales (1+w)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_window: int
    layer_types: list[str]
    rope_local_theta: float
    rope_global_theta: float
    query_pre_attn_scalar: float
    rms_norm_eps: float
    max_position_embeddings: int
    final_logit_softcapping: float | None
    embed: torch.Tensor  # (vocab, hidden)
    norm: torch.Tensor  # (hidden,) final norm scale
    layers: list[dict[str, torch.Tensor]]
    license: str = ""

    @property
    def vocab_size(self) -> int:
        return self.embed.shape[0]


def default_layer_types(n: int, pattern: int = 6) -> list[str]:
    return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n)]


# ---- readers ------------------------------------------------------------------------------------


def read_gguf(path: str | Path) -> Gemma3:
    """A llama.cpp `gemma3` GGUF, dequantized per tensor to fp32."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    path = Path(path)
    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None

    def meta(key, default=None):
        field = reader.fields.get(key)
        return default if field is None else field.contents()

    arch = meta("general.architecture")
    if arch != "gemma3":
        raise CheckpointError(f"{path}: GGUF architecture is {arch!r}, expected 'gemma3'")
    tensors = {}
    for t in reader.tensors:
        try:
            tensors[t.name] = torch.from_numpy(dequantize(t.data, t.tensor_type).copy()).float()
        except (NotImplementedError, ValueError) as e:
            raise CheckpointError(f"{path}: tensor {t.name} ({t.tensor_type.name}) cannot be dequantized ({e})") from None
    n = int(meta("gemma3.block_count"))
    head_dim = int(meta("gemma3.attention.key_length", 256))
    layers = []
    for i in range(n):
        layer = {}
        for theirs, ours in GGUF_LAYER.items():
            name = f"blk.{i}.{theirs}"
            if name not in tensors:
                raise CheckpointError(f"{path}: tensor {name} is missing")
            layer[ours] = tensors[name]
        layers.append(layer)
    for name in ("token_embd.weight", "output_norm.weight"):
        if name not in tensors:
            raise CheckpointError(f"{path}: tensor {name} is missing")
    return Gemma3(
        hidden_size=int(meta("gemma3.embedding_length")), intermediate_size=int(meta("gemma3.feed_forward_length")),
        num_layers=n, num_heads=int(meta("gemma3.attention.head_count")),
        num_kv_heads=int(meta("gemma3.attention.head_count_kv")), head_dim=head_dim,
        sliding_window=int(meta("gemma3.attention.sliding_window", 512)), layer_types=default_layer_types(n),
        rope_local_theta=10_000.0, rope_global_theta=float(meta("gemma3.rope.freq_base", 1_000_000.0)),
        query_pre_attn_scalar=float(head_dim), rms_norm_eps=float(meta("gemma3.attention.layer_norm_rms_epsilon", 1e-6)),
        max_position_embeddings=int(meta("gemma3.context_length", 32768)), final_logit_softcapping=None,
        embed=tensors["token_embd.weight"], norm=tensors["output_norm.weight"], layers=layers,
        license=str(meta("general.license", "")),
    )


def read_hf(path: str | Path) -> Gemma3:
    """A Hugging Face `Gemma3ForCausalLM` directory (config.json + safetensors); norms stored as w."""
    from safetensors import safe_open

    from .checkpoint import resolve_dir, weight_files
    from .config import read_json

    root = resolve_dir(path)
    raw = read_json(root / "config.json")
    cfg = raw.get("text_config", raw)
    if cfg.get("model_type") not in ("gemma3_text", "gemma3"):
        raise CheckpointError(f"{root / 'config.json'}: model_type {cfg.get('model_type')!r}, expected gemma3_text")
    tensors = {}
    for f in weight_files(root):
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                tensors[name.removeprefix("language_model.")] = handle.get_tensor(name).float()

    def get(name):
        if name not in tensors:
            raise CheckpointError(f"{root}: tensor {name} is missing")
        return tensors[name]

    n = cfg["num_hidden_layers"]
    layers = []
    for i in range(n):
        layer = {ours: get(f"model.layers.{i}.{theirs}") for theirs, ours in HF_LAYER.items()}
        for k in NORMS:
            layer[k] = layer[k] + 1.0
        layers.append(layer)
    rope = cfg.get("rope_parameters") or {}
    local = (rope.get(SLIDING) or {}).get("rope_theta", cfg.get("rope_local_base_freq", 10_000.0))
    glob = (rope.get(FULL) or {}).get("rope_theta", cfg.get("rope_theta", 1_000_000.0))
    for kind in (SLIDING, FULL):
        spec = rope.get(kind) or {}
        if spec.get("rope_type", "default") != "default" or spec.get("factor", 1.0) != 1.0:
            raise CheckpointError(f"{root}: rope scaling {spec} for {kind} is not supported by the converter")
    if cfg.get("attn_logit_softcapping"):
        raise CheckpointError(f"{root}: attention logit softcapping is not supported by the converter")
    return Gemma3(
        hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"], num_layers=n,
        num_heads=cfg["num_attention_heads"], num_kv_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
        sliding_window=cfg["sliding_window"], layer_types=list(cfg.get("layer_types") or default_layer_types(n)),
        rope_local_theta=float(local), rope_global_theta=float(glob),
        query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", cfg["head_dim"])),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
        final_logit_softcapping=cfg.get("final_logit_softcapping"),
        embed=get("model.embed_tokens.weight"), norm=get("model.norm.weight") + 1.0, layers=layers,
    )


def read_gemma3(path: str | Path) -> Gemma3:
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return read_gguf(p)
    if p.is_dir():
        return read_hf(p)
    raise CheckpointError(f"{p}: expected a .gguf file or a Hugging Face Gemma 3 directory")


# ---- the mapping --------------------------------------------------------------------------------


def diffusion_config(g: Gemma3, vocab_size: int, canvas_length: int = 96,
                     max_position_embeddings: int | None = None) -> ModelConfig:
    types = list(g.layer_types)
    if types[-1] != FULL:
        raise CheckpointError("the converter needs a full-attention last layer (DiffusionGemma forces one)")
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=g.hidden_size, intermediate_size=g.intermediate_size,
        num_hidden_layers=g.num_layers, num_attention_heads=g.num_heads, num_key_value_heads=g.num_kv_heads,
        head_dim=g.head_dim, global_head_dim=2 * g.head_dim, num_global_key_value_heads=g.num_kv_heads,
        sliding_window=g.sliding_window, layer_types=types,
        rope_parameters={
            SLIDING: {"rope_type": "default", "rope_theta": g.rope_local_theta},
            # head_dim doubles: rotate the first half of the pairs at Gemma's frequencies
            # (theta^2 over 2D = theta over D), leave the value half unrotated
            FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.5, "rope_theta": g.rope_global_theta**2},
        },
        rms_norm_eps=g.rms_norm_eps, final_logit_softcapping=g.final_logit_softcapping,
        num_experts=1, top_k_experts=1, moe_intermediate_size=EXPERT_WIDTH, canvas_length=canvas_length,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
        max_position_embeddings=max_position_embeddings or g.max_position_embeddings,
    )


def _interleave_halves(a: torch.Tensor, b: torch.Tensor, D: int) -> torch.Tensor:
    """Rows (heads*D, in) of a and b -> (heads*2D, in): per head [a lo; b lo; a hi; b hi], so that
    rotate_half over 2D pairs a's halves exactly as over D."""
    h = a.shape[0] // D
    a, b = a.view(h, 2, D // 2, -1), b.view(h, 2, D // 2, -1)
    return torch.stack([a[:, 0], b[:, 0], a[:, 1], b[:, 1]], dim=1).reshape(h * 2 * D, -1)


def convert(g: Gemma3, keep: list[int] | None = None, *, canvas_length: int = 96,
            max_position_embeddings: int | None = None, seed: int = 0) -> DiffusionGemma:
    """The DiffusionGemma (fp32) whose encoder computes Gemma 3's function; `keep` lists the
    base token ids to keep, in the new order (a trimmed vocabulary), or None for all."""
    embed = g.embed if keep is None else g.embed[torch.tensor(keep)]
    config = diffusion_config(g, embed.shape[0], canvas_length, max_position_embeddings)
    model = DiffusionGemma(config)
    D = g.head_dim
    q_scale = g.query_pre_attn_scalar**-0.5
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.weight.copy_(embed)
        model.norm.weight.copy_(g.norm)
        for layer, src, spec in zip(model.layers, g.layers, config.layers):
            attn = layer.self_attn
            if spec.sliding:
                attn.q_proj.weight.copy_(src["q_proj"])
                attn.k_proj.weight.copy_(src["k_proj"])
                attn.v_proj.weight.copy_(src["v_proj"] * SLIDING_V_SCALE)
                attn.o_proj.weight.copy_(src["o_proj"] * SLIDING_O_SCALE)
                attn.q_norm.weight.copy_(src["q_norm"] * q_scale)
                attn.k_norm.weight.copy_(src["k_norm"])
            else:
                # norms over 2D see rms/sqrt(2) (the value half is ~0): q and k each gain sqrt(2),
                # so the query scale halves; zero query rows make the value half invisible to scores
                attn.q_proj.weight.copy_(_interleave_halves(src["q_proj"], torch.zeros_like(src["q_proj"]), D))
                attn.k_proj.weight.copy_(_interleave_halves(src["k_proj"], src["v_proj"] * FULL_V_SCALE, D))
                zeros = torch.zeros(D)
                attn.q_norm.weight.copy_(_interleave_halves(src["q_norm"][:, None] * q_scale / 2, zeros[:, None], D)[:, 0])
                attn.k_norm.weight.copy_(_interleave_halves(src["k_norm"][:, None], zeros[:, None], D)[:, 0])
                o = src["o_proj"].T  # (heads*D, hidden): read only the value half
                attn.o_proj.weight.copy_(_interleave_halves(torch.zeros_like(o), o * FULL_O_SCALE, D).T)
            layer.input_layernorm.weight.copy_(src["input_layernorm"])
            layer.post_attention_layernorm.weight.copy_(src["post_attention_layernorm"])
            layer.pre_feedforward_layernorm.weight.copy_(src["pre_feedforward_layernorm"])
            layer.post_feedforward_layernorm.weight.copy_(src["post_feedforward_layernorm"])
            layer.post_feedforward_layernorm_1.weight.fill_(1.0)
            layer.mlp_gate.weight.copy_(src["gate_proj"])
            layer.mlp_up.weight.copy_(src["up_proj"])
            layer.mlp_down.weight.copy_(src["down_proj"])
            # the MoE branch: one zero expert, its output norm weight 0 -> exactly zero
            layer.router_scale.fill_(1.0)
            layer.per_expert_scale.fill_(1.0)
            layer.pre_feedforward_layernorm_2.weight.fill_(1.0)
            layer.encoder_scalar.fill_(1.0)
            layer.decoder_scalar.fill_(1.0)
        # self-conditioning starts as a zero signal but can learn (gate/up random, down zero)
        H, I = config.hidden_size, config.intermediate_size
        model.sc_pre_norm.weight.fill_(1.0)
        model.sc_gate.weight.copy_(torch.randn(I, H, generator=gen) * H**-0.5)
        model.sc_up.weight.copy_(torch.randn(I, H, generator=gen) * H**-0.5)
    model.requires_grad_(False).eval()
    return model


def delta_targets(config: ModelConfig, values: bool = True) -> dict[str, float]:
    """The projections adaptation gives low-rank deltas (engine.training.adapt), with the scale
    their converted weight carries (a delta is applied at that scale). Full layers' k_proj is left
    out: it also carries the scaled value rows. `values`: sliding layers' v_proj too, at the tiny
    scale that keeps v_norm linear (a delta there changes the values as a delta to Gemma's would)."""
    out = {}
    for i, spec in enumerate(config.layers):
        out[f"layers.{i}.self_attn.q_proj"] = 1.0
        if spec.sliding:
            out[f"layers.{i}.self_attn.k_proj"] = 1.0
            if values:
                out[f"layers.{i}.self_attn.v_proj"] = SLIDING_V_SCALE
        out[f"layers.{i}.self_attn.o_proj"] = SLIDING_O_SCALE if spec.sliding else FULL_O_SCALE
        for name in ("mlp_gate", "mlp_up", "mlp_down"):
            out[f"layers.{i}.{name}"] = 1.0
    return out


def apply_adapter(model: DiffusionGemma, tensors: dict[str, torch.Tensor]) -> None:
    """Fold an adapter into the model's weights: W += scale * B @ A for each `<name>.lora_A/B`
    pair, and every other tensor (self-conditioning block, decoder scalars) copied in place."""
    params = dict(model.named_parameters())
    scales = delta_targets(model.config)
    unknown = [n for n in tensors if n.removesuffix(".lora_A").removesuffix(".lora_B") not in scales
               and n not in params]
    if unknown:
        raise CheckpointError(f"adapter: tensors {unknown[:3]} match no parameter of the converted model")
    with torch.no_grad():
        for name, t in tensors.items():
            if name.endswith(".lora_A"):
                target = name.removesuffix(".lora_A")
                B = tensors[target + ".lora_B"].float()
                w = params[target + ".weight"]
                if (B.shape[0], t.shape[1]) != tuple(w.shape):
                    raise CheckpointError(f"adapter: {target} delta is {B.shape[0]}x{t.shape[1]}, "
                                          f"the weight {tuple(w.shape)}")
                w.copy_((w.float() + (B @ t.float()) * scales[target]).to(w.dtype))
            elif not name.endswith(".lora_B"):
                if tuple(t.shape) != tuple(params[name].shape):
                    raise CheckpointError(f"adapter: {name} has shape {tuple(t.shape)}, expected "
                                          f"{tuple(params[name].shape)}")
                params[name].copy_(t.to(params[name].dtype))


def frozen_by_mapping(name: str) -> bool:
    """Parameters whose converted value carries the mapping and must not be trained: the tiny /
    widened value paths, the zeroed MoE branch, the norm that keeps it at zero."""
    parts = name.split(".")
    return (any(k in parts for k in ("v_proj", "router_proj", "router_scale", "per_expert_scale"))
            or parts[-1] in ("experts_gate_up", "experts_down")
            or "post_feedforward_layernorm_2" in parts or "pre_feedforward_layernorm_2" in parts)


def generation_defaults(steps: int = 4) -> GenerationConfig:
    return GenerationConfig(max_denoising_steps=steps, eos_token_id=[1], pad_token_id=0, ignore_noise_tokens=True)


def convert_checkpoint(source: str | Path, out: str | Path, *, keep: list[int] | None = None,
                       tokenizer_json: str | Path | None = None, canvas_length: int = 96,
                       dtype: torch.dtype = torch.bfloat16) -> Path:
    """`dgemma convert`: write a loadable DiffusionGemma checkpoint directory from a Gemma 3 one."""
    from .checkpoint import save_model

    g = read_gemma3(source)
    model = convert(g, keep, canvas_length=canvas_length)
    out = Path(out)
    save_model(model, generation_defaults(), out, dtype=dtype)
    if tokenizer_json is not None:
        (out / "tokenizer.json").write_bytes(Path(tokenizer_json).read_bytes())
    (out / "conversion.json").write_text(json.dumps({
        "source": str(source), "base_vocab_size": g.vocab_size, "kept_tokens": None if keep is None else len(keep),
        "license": g.license or "gemma", "sliding_v_scale": SLIDING_V_SCALE, "full_v_scale": FULL_V_SCALE,
    }, indent=2) + "\n")
    log.info("converted %s -> %s (%.1fM parameters)", source, out, model.num_parameters() / 1e6)
    return out


def rope_check(config: ModelConfig) -> float:
    """Largest gap between the widened full layers' rotary frequencies and Gemma's (diagnostic)."""
    from .model import rope_inv_freq

    spec = next(s for s in config.layers if not s.sliding)
    ours = rope_inv_freq(spec)[: spec.head_dim // 4]
    theta = math.sqrt(config.rope_parameters[FULL]["rope_theta"])
    D = spec.head_dim // 2
    theirs = 1.0 / (theta ** (torch.arange(0, D, 2).float() / D))
    return float(((ours - theirs).abs() / theirs).max())
