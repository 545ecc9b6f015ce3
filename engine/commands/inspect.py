"""`dgemma inspect`: parameter counts and the device bytes of each quantization, from config.json alone.

No weight is read: users decide before a 50 GB load whether the model fits their GPU or RAM.
"""

from __future__ import annotations

from engine.checkpoint import resolve_dir
from engine.config import ModelConfig, read_json
from engine.quantize import MODES, available_memory, footprint

HEADROOM = 0.9  # weights may take this share of a device; the rest is the KV cache, activations, the runtime


def add_arguments(p):
    p.add_argument("--model", required=True, help="checkpoint directory (only its config.json is read)")
    p.add_argument("--quantize", default=None, choices=MODES, help="show one mode (default: all)")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def report(config: ModelConfig, modes, memory: dict[str, int]) -> str:
    lines = []
    for mode in modes:
        fp = footprint(config, mode)
        fits = [f"{'fits' if fp.device_bytes <= HEADROOM * total else 'does not fit'} {name} ({_gb(total)})"
                for name, total in memory.items()]
        label = "bf16" if mode == "none" else mode
        lines.append(f"{label:>5}: {_gb(fp.device_bytes):>9} of weights; " + "; ".join(fits))
    return "\n".join(lines)


def run(args) -> int:
    root = resolve_dir(args.model)
    config = ModelConfig.from_hf_dict(read_json(root / "config.json"), str(root / "config.json"))
    fp = footprint(config, "int8")
    print(f"{root}: {fp.params / 1e9:.3f}B parameters, {fp.quantized_params / 1e9:.3f}B in projections and "
          f"experts (quantized by --quantize); {config.num_hidden_layers} layers, {config.num_experts} experts "
          f"top-{config.top_k_experts}, hidden {config.hidden_size}, vocab {config.vocab_size}")
    print(report(config, [args.quantize] if args.quantize else MODES, available_memory()))
    print(f"(weights only, bf16 compute; 'fits' leaves {1 - HEADROOM:.0%} of the device for the KV cache and "
          "activations; fp8 runs on GPUs of compute capability 8.9+)")
    return 0
