"""`dgemma convert SOURCE DEST`: a Gemma 3 checkpoint (llama.cpp GGUF or Hugging Face directory) as a
DiffusionGemma checkpoint directory, optionally on a trimmed vocabulary (engine/gemma3.py)."""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p):
    p.add_argument("source", help="a gemma3 .gguf file or a Gemma3ForCausalLM directory")
    p.add_argument("dest", help="the DiffusionGemma checkpoint directory to write")
    p.add_argument("--vocab", metavar="DIR", default=None,
                   help="a trimmed vocabulary (kept_tokens.json + tokenizer.json, e.g. engine/embedded_model); "
                        "default: keep every token")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json to copy beside the weights (default: the --vocab one, or the source "
                        "directory's)")
    p.add_argument("--adapter", default=None, help="an adapter.safetensors to fold in (engine.training.adapt)")
    p.add_argument("--canvas-length", type=int, default=96)
    p.add_argument("--float32", action="store_true", help="write fp32 weights (default bf16)")


def run(args) -> int:
    import torch
    from safetensors.torch import load_file

    from engine.checkpoint import save_model
    from engine.gemma3 import apply_adapter, convert, generation_defaults, read_gemma3

    keep = None
    tokenizer = args.tokenizer
    if args.vocab:
        keep = json.loads((Path(args.vocab) / "kept_tokens.json").read_text())
        tokenizer = tokenizer or str(Path(args.vocab) / "tokenizer.json")
    source = Path(args.source)
    if tokenizer is None and source.is_dir() and (source / "tokenizer.json").exists():
        tokenizer = str(source / "tokenizer.json")
    model = convert(read_gemma3(source), keep, canvas_length=args.canvas_length)
    if args.adapter:
        apply_adapter(model, load_file(args.adapter))
    dest = Path(args.dest)
    save_model(model, generation_defaults(), dest, dtype=torch.float32 if args.float32 else torch.bfloat16)
    if tokenizer:
        (dest / "tokenizer.json").write_bytes(Path(tokenizer).read_bytes())
    else:
        print("note: no tokenizer.json written (pass --tokenizer or --vocab); the engine needs one to load it")
    print(f"wrote {dest} ({model.num_parameters() / 1e6:.1f}M parameters, vocabulary {model.config.vocab_size})")
    return 0
