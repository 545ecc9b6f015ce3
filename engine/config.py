"""Model and generation configuration as plain dataclasses.

Reads the Hugging Face `config.json` (DiffusionGemmaConfig with a `text_config`) and
`generation_config.json` layouts; knows nothing about weights or tokenization.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import CheckpointError

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True)
class RopeSpec:
    kind: str  # "default" | "proportional"
    theta: float
    partial_rotary_factor: float = 1.0
    factor: float = 1.0


@dataclass(frozen=True)
class LayerSpec:
    sliding: bool
    head_dim: int
    num_kv_heads: int
    rope: RopeSpec


@dataclass
class ModelConfig:
    vocab_size: int = 262_144
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 30
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    global_head_dim: int = 512
    num_global_key_value_heads: int | None = None
    sliding_window: int = 512
    layer_types: list[str] = field(default_factory=list)
    rope_parameters: dict = field(default_factory=dict)
    per_layer_config: dict = field(default_factory=dict)
    rms_norm_eps: float = 1e-6
    final_logit_softcapping: float | None = 30.0
    hidden_activation: str = "gelu_pytorch_tanh"
    num_experts: int = 128
    top_k_experts: int = 8
    moe_intermediate_size: int = 704
    canvas_length: int = 256
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    bos_token_id: int | None = 2
    max_position_embeddings: int = 131_072
    # derived in __post_init__
    layers: list[LayerSpec] = field(default_factory=list, repr=False)

    def __post_init__(self):
        if not self.layer_types:
            self.layer_types = [FULL if (i + 1) % 6 == 0 else SLIDING for i in range(self.num_hidden_layers)]
        if len(self.layer_types) != self.num_hidden_layers:
            raise CheckpointError(
                f"config.json: layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers"
            )
        if self.layer_types[-1] != FULL:  # the reference forces the last layer to full attention
            self.layer_types = [*self.layer_types[:-1], FULL]
        if not self.rope_parameters:
            self.rope_parameters = {
                SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
                FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
            }
        if not self.per_layer_config:
            full_override = {"head_dim": self.global_head_dim}
            if self.num_global_key_value_heads is not None:
                full_override["num_key_value_heads"] = self.num_global_key_value_heads
            self.per_layer_config = {str(i): dict(full_override) for i, t in enumerate(self.layer_types) if t == FULL}
        self.layers = [self._layer_spec(i) for i in range(self.num_hidden_layers)]
        for i, spec in enumerate(self.layers):
            if self.num_attention_heads % spec.num_kv_heads:
                raise CheckpointError(
                    f"config.json: layer {i} has {spec.num_kv_heads} KV heads, which does not divide "
                    f"{self.num_attention_heads} attention heads"
                )

    def _layer_spec(self, i: int) -> LayerSpec:
        kind = self.layer_types[i]
        if kind not in (SLIDING, FULL):
            raise CheckpointError(f"config.json: unknown layer type {kind!r} at layer {i}")
        override = self.per_layer_config.get(str(i), self.per_layer_config.get(i, {}))
        rope = self.rope_parameters.get(kind)
        if rope is None:
            raise CheckpointError(f"config.json: rope_parameters has no entry for {kind!r}")
        if rope.get("rope_type", "default") not in ("default", "proportional"):
            raise CheckpointError(f"config.json: unsupported rope_type {rope.get('rope_type')!r} for {kind}")
        return LayerSpec(
            sliding=kind == SLIDING,
            head_dim=override.get("head_dim", self.head_dim),
            num_kv_heads=override.get("num_key_value_heads", self.num_key_value_heads),
            rope=RopeSpec(
                kind=rope.get("rope_type", "default"),
                theta=float(rope["rope_theta"]),
                partial_rotary_factor=float(rope.get("partial_rotary_factor", 1.0)),
                factor=float(rope.get("factor", 1.0)),
            ),
        )

    @property
    def eos_ids(self) -> list[int]:
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    @classmethod
    def from_hf_dict(cls, raw: dict, source: str = "config.json") -> "ModelConfig":
        model_type = raw.get("model_type")
        if model_type != "diffusion_gemma":
            raise CheckpointError(
                f"{source}: model_type is {model_type!r}, expected 'diffusion_gemma' (a DiffusionGemmaConfig)"
            )
        text = raw.get("text_config")
        if not isinstance(text, dict):
            raise CheckpointError(f"{source}: missing 'text_config' object")
        if text.get("use_bidirectional_attention") == "all":
            raise CheckpointError(f"{source}: use_bidirectional_attention='all' (bidirectional encoder) is not supported")
        known = {f.name for f in fields(cls)} - {"layers", "canvas_length"}
        kwargs = {k: v for k, v in text.items() if k in known}
        kwargs["canvas_length"] = raw.get("canvas_length") or 256
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise CheckpointError(f"{source}: {e}") from None

    def to_hf_dict(self) -> dict:
        """The config.json layout transformers' DiffusionGemmaConfig reads back."""
        text = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("layers", "canvas_length")}
        text.pop("global_head_dim")
        text.pop("num_global_key_value_heads")
        text["model_type"] = "diffusion_gemma_text"
        text["tie_word_embeddings"] = True
        return {
            "architectures": ["DiffusionGemmaForBlockDiffusion"],
            "model_type": "diffusion_gemma",
            "canvas_length": self.canvas_length,
            "tie_word_embeddings": True,
            "text_config": text,
            "vision_config": None,
        }


@dataclass
class GenerationConfig:
    """Denoising defaults; `generation_config.json` overrides them."""

    max_new_tokens: int = 256
    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    stability_threshold: int = 1
    confidence_threshold: float = 0.005
    eos_token_id: list[int] = field(default_factory=lambda: [1])
    pad_token_id: int | None = 0
    # ours, off by default (the reference has no such option): a free position that holds a freshly
    # drawn uniform-noise token says nothing about its clean token, so its current token gets no
    # probability. Small models copy their noisy input; this removes that bias.
    ignore_noise_tokens: bool = False
    # ours, off by default: infilling seeds the hole with the causal encoder's greedy draft of the
    # middle (to the first newline) instead of uniform noise; the decoder then denoises from it,
    # seeing the suffix, and may keep or rewrite every draft token (engine/api.py Engine.infill)
    encoder_draft: bool = False
    # ours, 0 (off) by default: committing infilling (Engine.infill). Each decoder pass denoises a
    # hole of `commit_hole` noise positions placed right after the KV cache (the prompt and the
    # middle so far), then the suffix's first `commit_head` tokens clamped (and end of text where
    # the whole suffix fits); the argmax at the hole's first position is committed, encoded into
    # the cache, and the next pass starts after it, until end of text, a filler, a newline (one-line
    # fills) or the token budget. For a decoder that reads cached states far better than canvas
    # ones: the Gemma 3 adaptation (engine/embedded_model/README.md).
    commit_hole: int = 0
    commit_head: int = 0
    # with commit_hole: each pass also decodes a one-position canvas with nothing after it (the
    # suffix unseen) and picks the argmax of the two views' summed log-probabilities (one pass over
    # the weights still: DiffusionGemma.encode_then_decode takes both canvases)
    commit_blind: bool = False

    def __post_init__(self):
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = [self.eos_token_id]
        self.validate()

    def validate(self):
        if not isinstance(self.max_denoising_steps, int) or self.max_denoising_steps <= 0:
            raise ValueError(f"max_denoising_steps must be a positive integer, got {self.max_denoising_steps!r}")
        if not self.entropy_bound > 0:
            raise ValueError(f"entropy_bound must be > 0, got {self.entropy_bound!r}")
        if not 0 <= self.t_min < self.t_max:
            raise ValueError(f"need 0 <= t_min < t_max, got t_min={self.t_min} t_max={self.t_max}")
        if self.stability_threshold < 0:
            raise ValueError(f"stability_threshold must be >= 0, got {self.stability_threshold}")
        if not self.confidence_threshold > 0:
            raise ValueError(f"confidence_threshold must be > 0, got {self.confidence_threshold}")
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        if not isinstance(self.ignore_noise_tokens, bool):
            raise ValueError(f"ignore_noise_tokens must be true or false, got {self.ignore_noise_tokens!r}")
        if not isinstance(self.encoder_draft, bool):
            raise ValueError(f"encoder_draft must be true or false, got {self.encoder_draft!r}")
        for name in ("commit_hole", "commit_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.commit_head and not self.commit_hole:
            raise ValueError("commit_head needs commit_hole >= 1 (committing infilling)")
        if not isinstance(self.commit_blind, bool):
            raise ValueError(f"commit_blind must be true or false, got {self.commit_blind!r}")
        if self.commit_blind and not self.commit_hole:
            raise ValueError("commit_blind needs commit_hole >= 1 (committing infilling)")

    @classmethod
    def from_hf_dict(cls, raw: dict) -> "GenerationConfig":
        # like the reference, EOS and pad come from generation_config.json only (none listed: no EOS stop)
        out = cls(eos_token_id=[], pad_token_id=None)
        sampler = raw.get("sampler_config") or {}
        values = {
            "max_new_tokens": raw.get("max_new_tokens"),
            "max_denoising_steps": raw.get("max_denoising_steps"),
            "entropy_bound": sampler.get("entropy_bound") if isinstance(sampler, dict) else None,
            "t_min": raw.get("t_min"),
            "t_max": raw.get("t_max"),
            "stability_threshold": raw.get("stability_threshold"),
            "confidence_threshold": raw.get("confidence_threshold"),
            "eos_token_id": raw.get("eos_token_id"),
            "pad_token_id": raw.get("pad_token_id"),
            "ignore_noise_tokens": raw.get("ignore_noise_tokens"),
            "encoder_draft": raw.get("encoder_draft"),
            "commit_hole": raw.get("commit_hole"),
            "commit_head": raw.get("commit_head"),
            "commit_blind": raw.get("commit_blind"),
        }
        for key, value in values.items():
            if value is not None:
                setattr(out, key, [value] if key == "eos_token_id" and isinstance(value, int) else value)
        out.validate()
        return out

    def to_hf_dict(self) -> dict:
        return {
            "max_new_tokens": self.max_new_tokens,
            "max_denoising_steps": self.max_denoising_steps,
            "sampler_config": {"entropy_bound": self.entropy_bound, "_cls_name": "EntropyBoundSamplerConfig"},
            "t_min": self.t_min,
            "t_max": self.t_max,
            "stability_threshold": self.stability_threshold,
            "confidence_threshold": self.confidence_threshold,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            **({"ignore_noise_tokens": True} if self.ignore_noise_tokens else {}),
            **({"encoder_draft": True} if self.encoder_draft else {}),
            **({"commit_hole": self.commit_hole, "commit_head": self.commit_head} if self.commit_hole else {}),
            **({"commit_blind": True} if self.commit_blind else {}),
        }


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data
