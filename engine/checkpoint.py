"""Load and save checkpoints in the Hugging Face DiffusionGemma layout, offline.

A checkpoint is a directory (or a Hugging Face cache snapshot of one) with `config.json`,
`model.safetensors` or sharded `model-*.safetensors` + `model.safetensors.index.json`,
`generation_config.json` and `tokenizer.json`. Weights are memory-mapped by safetensors and
assigned one at a time to a model built on the meta device (no second copy when the dtype
matches); with `quantize` each is quantized on its device as it arrives (engine.quantize), so
the peak is the quantized model plus one tensor. Only safetensors are read: never pickle.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import GenerationConfig, ModelConfig, read_json
from .errors import CheckpointError
from .gguf_checkpoint import find_gguf, load_gguf
from .model import DiffusionGemma
from .quantize import check_mode, quantize_weight, release_freed_heap

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Checkpoint name (after the shared-layer prefix) -> our parameter name. The encoder and decoder
# share every weight but their layer scalars; checkpoints store the shared ones under the decoder.
LAYER_NAMES = {
    "self_attn.q_proj.weight": "self_attn.q_proj.weight",
    "self_attn.k_proj.weight": "self_attn.k_proj.weight",
    "self_attn.v_proj.weight": "self_attn.v_proj.weight",
    "self_attn.o_proj.weight": "self_attn.o_proj.weight",
    "self_attn.q_norm.weight": "self_attn.q_norm.weight",
    "self_attn.k_norm.weight": "self_attn.k_norm.weight",
    "mlp.gate_proj.weight": "mlp_gate.weight",
    "mlp.up_proj.weight": "mlp_up.weight",
    "mlp.down_proj.weight": "mlp_down.weight",
    "router.proj.weight": "router_proj.weight",
    "router.scale": "router_scale",
    "router.per_expert_scale": "per_expert_scale",
    "experts.gate_up_proj": "experts_gate_up",
    "experts.down_proj": "experts_down",
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "pre_feedforward_layernorm.weight": "pre_feedforward_layernorm.weight",
    "post_feedforward_layernorm.weight": "post_feedforward_layernorm.weight",
    "post_feedforward_layernorm_1.weight": "post_feedforward_layernorm_1.weight",
    "pre_feedforward_layernorm_2.weight": "pre_feedforward_layernorm_2.weight",
    "post_feedforward_layernorm_2.weight": "post_feedforward_layernorm_2.weight",
}
GLOBAL_NAMES = {
    "model.decoder.embed_tokens.weight": "embed.weight",
    "model.decoder.norm.weight": "norm.weight",
    "model.decoder.self_conditioning.pre_norm.weight": "sc_pre_norm.weight",
    "model.decoder.self_conditioning.gate_proj.weight": "sc_gate.weight",
    "model.decoder.self_conditioning.up_proj.weight": "sc_up.weight",
    "model.decoder.self_conditioning.down_proj.weight": "sc_down.weight",
}
DECODER_LAYER = "model.decoder.layers.{i}."
ENCODER_LAYER = "model.encoder.language_model.layers.{i}."
ENCODER_GLOBAL = {"model.decoder.embed_tokens.weight": "model.encoder.language_model.embed_tokens.weight",
                  "model.decoder.norm.weight": "model.encoder.language_model.norm.weight"}
SKIPPED_PREFIXES = ("model.encoder.vision_tower.", "model.encoder.embed_vision.")


def checkpoint_names(config: ModelConfig) -> dict[str, str]:
    """Our parameter name -> the checkpoint's name for it."""
    names = {ours: theirs for theirs, ours in GLOBAL_NAMES.items()}
    for i, spec in enumerate(config.layers):
        for theirs, ours in LAYER_NAMES.items():
            if ours == "self_attn.v_proj.weight" and not spec.sliding:
                continue
            names[f"layers.{i}.{ours}"] = DECODER_LAYER.format(i=i) + theirs
        names[f"layers.{i}.decoder_scalar"] = DECODER_LAYER.format(i=i) + "layer_scalar"
        names[f"layers.{i}.encoder_scalar"] = ENCODER_LAYER.format(i=i) + "layer_scalar"
    return names


def resolve_dir(path: str | Path) -> Path:
    """A checkpoint directory, a HF cache snapshot, or a HF cache repo dir (models--org--name)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint directory does not exist")
    if p.is_file():
        raise CheckpointError(f"{p}: expected a checkpoint directory, got a file")
    if (p / "snapshots").is_dir() and not (p / "config.json").exists():
        ref = p / "refs" / "main"
        snaps = sorted((p / "snapshots").iterdir())
        if ref.is_file() and (p / "snapshots" / ref.read_text().strip()).is_dir():
            return p / "snapshots" / ref.read_text().strip()
        if len(snaps) == 1:
            return snaps[0]
        raise CheckpointError(f"{p}: Hugging Face cache with {len(snaps)} snapshots and no refs/main; pass one")
    return p


def weight_files(root: Path) -> list[Path]:
    single = root / "model.safetensors"
    index = root / "model.safetensors.index.json"
    if single.exists():
        return [single]
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: missing 'weight_map'")
        files = sorted({root / name for name in weight_map.values()})
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{f}: shard listed in {index.name} is missing")
        return files
    if any(root.glob("*.bin")) or any(root.glob("*.pt")) or any(root.glob("*.pth")):
        raise CheckpointError(f"{root}: only pickle weights (.bin/.pt) found; dgemma loads safetensors only")
    raise CheckpointError(f"{root}: no model.safetensors or model.safetensors.index.json")


def _open_tensors(files: list[Path]) -> dict[str, tuple[Path, object]]:
    """name -> (file, handle); opening validates each header (truncated or corrupt files fail here)."""
    found = {}
    for f in files:
        try:
            handle = safe_open(str(f), framework="pt", device="cpu")
            for name in handle.keys():
                found[name] = (f, handle)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None
    return found


def load_model(path: str | Path, dtype: str | torch.dtype = "auto", device: str = "cpu", quantize: str = "none"):
    """-> (model, ModelConfig, GenerationConfig, root dir). Raises CheckpointError with the file/tensor named.

    `quantize`: none, int8, int4 or fp8 (engine.quantize); every projection and expert weight is
    quantized as it is read, so the full-precision model never exists on the host or the device.
    A .gguf file (or a directory holding one and no safetensors) loads through engine.gguf_checkpoint."""
    gguf_file = find_gguf(path)
    if gguf_file is not None:
        return load_gguf(gguf_file, dtype=dtype, device=device, quantize=quantize)
    root = resolve_dir(path)
    config = ModelConfig.from_hf_dict(read_json(root / "config.json"), str(root / "config.json"))
    gen_path = root / "generation_config.json"
    try:
        gen = GenerationConfig.from_hf_dict(read_json(gen_path) if gen_path.exists() else {})
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{gen_path}: {e}") from None
    tensors = _open_tensors(weight_files(root))
    skipped = [n for n in tensors if n.startswith(SKIPPED_PREFIXES)]
    if skipped:
        log.info("skipping %d vision-tower tensors (text-only engine)", len(skipped))

    with torch.device("meta"):
        model = DiffusionGemma(config)
    expected = {name: p for name, p in model.named_parameters()}
    names = checkpoint_names(config)
    # quantized weights compute in bf16: "auto" means that for them whatever the file stores
    if quantize != "none" and dtype in (None, "auto"):
        target_dtype = torch.bfloat16
    else:
        target_dtype = _pick_dtype(dtype, tensors, names)
    check_mode(quantize, target_dtype, device)
    for ours, theirs in names.items():
        source = theirs
        if source not in tensors:
            source = ENCODER_GLOBAL.get(theirs, theirs.replace("model.decoder.layers.", "model.encoder.language_model.layers."))
        if source not in tensors:
            raise CheckpointError(f"{root}: tensor {theirs!r} is missing from the checkpoint")
        file, handle = tensors[source]
        try:
            t = handle.get_tensor(source)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{file}: tensor {source!r} cannot be read ({e})") from None
        want = tuple(expected[ours].shape)
        if tuple(t.shape) != want:
            raise CheckpointError(f"{file}: tensor {source!r} has shape {tuple(t.shape)}, config.json implies {want}")
        if t.dtype not in _FLOAT_DTYPES:
            raise CheckpointError(f"{file}: tensor {source!r} has dtype {t.dtype}, expected a float dtype")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{file}: tensor {source!r} contains NaN or Inf")
        _place(model, ours, quantize_weight(ours, t.to(device=device, dtype=target_dtype), quantize))
        del t  # the full-precision copy goes before the next tensor is read
        if quantize != "none":
            release_freed_heap()
    unplaced = [name for name, p in model.named_parameters() if p.is_meta]
    if unplaced:
        raise CheckpointError(f"{root}: no checkpoint tensor for {unplaced[:3]}")
    model._inv_freq = {spec: inv.to(device) for spec, inv in model._inv_freq.items()}
    model.requires_grad_(False).eval()
    return model, config, gen, root


def _place(model: DiffusionGemma, name: str, value) -> None:
    """Replace the meta parameter `name` by `value` (a tensor, a torchao tensor or an ExpertStack)."""
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner)
    if isinstance(value, torch.nn.Module):
        delattr(module, attr)
        setattr(module, attr, value)
    else:
        setattr(module, attr, torch.nn.Parameter(value, requires_grad=False))


def _pick_dtype(dtype, tensors, names) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        embed = names["embed.weight"]
        handle = tensors.get(embed, (None, None))[1]
        if handle is None:
            return torch.float32
        stored = handle.get_slice(embed).get_dtype()
        return {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(stored, torch.float32)
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return DTYPES[dtype]


def save_model(model: DiffusionGemma, gen: GenerationConfig, out: str | Path, dtype: torch.dtype | None = None):
    """Write config.json, generation_config.json and model.safetensors in the HF layout."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    tensors = {theirs: params[ours].detach().to(dtype or params[ours].dtype).contiguous().clone()
               for ours, theirs in checkpoint_names(model.config).items()}
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(gen.to_hf_dict(), indent=2) + "\n")
