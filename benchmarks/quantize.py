"""Weight-only quantization measured beside bf16 in one run. A script, never a timed test:

    python -m benchmarks.quantize [--out runs/quantize.json] [--requests 40] [--corpus data/corpus] [--skip-layer]

1. logit error: relative ||q - bf16|| / ||bf16|| of encoder and decoder logits (and argmax
   agreement) on tiny random checkpoints (seeds 0-2) and the embedded model, for int8 and int4
   at torchao's CPU group sizes 32 / 64 / 128 (the embedded model's widths take all three);
2. agreement: the embedded model's `generate` and `infill` outputs under int8 / int4 against
   bf16 (same seeds): token agreement by position, exact matches, and ms per call;
3. load memory: peak anonymous RSS and peak RSS while loading, each mode in a fresh process, for
   the embedded model and a ~0.6 GB synthetic checkpoint, beside the weights' own bytes;
4. one full layer of the real 26B (hidden 2816, 128 experts of 704) materialized on the CPU and
   quantized: what torchao's tensors occupy against engine.quantize.bytes_per_weight.

Prints a table per section and writes everything as JSON (docs/quantization.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine import quantize
from engine.checkpoint import load_model
from engine.model import KVCache

EMBEDDED = "engine/default_model"


def _logits(model, config, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, config.vocab_size, (1, 24), generator=g)
    cache = KVCache(config, 1, model.dtype, model.device)
    encoder = model.logits(model.encode(ids, cache))  # (1, 24, V)
    canvas = torch.randint(3, config.vocab_size, (1, 16), generator=g)
    return encoder, model.decoder_logits(canvas, model.decoder_context(cache, 1), 24)  # (1, 16, V)


def logit_error(tiny_dirs: list[str]) -> list[dict]:
    rows = []
    for name, path, groups in [*((f"tiny seed {i}", d, [32]) for i, d in enumerate(tiny_dirs)),
                               ("embedded", EMBEDDED, [32, 64, 128])]:
        want = _logits(*load_model(path, dtype="bfloat16")[:2])
        for mode, group in [("int8", None), *(("int4", g) for g in groups)]:
            if group:
                quantize.INT4_GROUP = group
            got = _logits(*load_model(path, dtype="bfloat16", quantize=mode)[:2])
            quantize.INT4_GROUP = 32
            row = {"model": name, "mode": mode if group is None else f"int4 g{group}"}
            for part, g_, w in zip(("encoder", "decoder"), got, want):
                row[f"{part}_rel_err"] = round(((g_ - w).norm() / w.norm()).item(), 4)
                row[f"{part}_argmax_agree"] = round((g_.argmax(-1) == w.argmax(-1)).float().mean().item(), 3)
            rows.append(row)
            print(f"  {row}", flush=True)
    return rows


def _agree(a: list[int], b: list[int]) -> float:
    n = max(len(a), len(b))
    return 1.0 if n == 0 else sum(x == y for x, y in zip(a, b)) / n


def agreement(requests: int, corpus: str) -> list[dict]:
    from benchmarks.common import fim_requests
    from engine.api import Engine

    holes = fim_requests(corpus, requests, seed=0)
    prompts = [p[-400:] for p, _, _ in holes[: requests // 2]]
    outputs = {}
    for mode in ("none", "int8", "int4"):
        engine = Engine.load(None, quantize=mode)
        tok = engine.tokenizer
        gen, fill, t_gen, t_fill = [], [], [], []
        for i, prompt in enumerate(prompts):
            out = engine.continue_text(prompt, max_new_tokens=32, seed=i)
            gen.append(tok.encode(out.text))
            t_gen.append(out.ms)
        for i, (prefix, suffix, _) in enumerate(holes):
            t0 = time.perf_counter()
            middle = engine.infill(prefix, suffix, seed=i)[0]
            t_fill.append((time.perf_counter() - t0) * 1e3)
            fill.append(tok.encode(middle.text))
        outputs[mode] = (gen, fill, t_gen, t_fill)
    rows = []
    for mode in ("none", "int8", "int4"):
        gen, fill, t_gen, t_fill = outputs[mode]
        ref_gen, ref_fill = outputs["none"][:2]
        rows.append({
            "mode": "bf16" if mode == "none" else mode,
            "generate_token_agreement": round(sum(map(_agree, gen, ref_gen)) / len(gen), 3),
            "generate_exact": f"{sum(a == b for a, b in zip(gen, ref_gen))}/{len(gen)}",
            "infill_token_agreement": round(sum(map(_agree, fill, ref_fill)) / len(fill), 3),
            "infill_exact": f"{sum(a == b for a, b in zip(fill, ref_fill))}/{len(fill)}",
            "generate_ms_p50": round(sorted(t_gen)[len(t_gen) // 2], 1),
            "infill_ms_p50": round(sorted(t_fill)[len(t_fill) // 2], 1),
        })
        print(f"  {rows[-1]}", flush=True)
    return rows


_LOAD_PROBE = r"""
import sys, threading, time, json
def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out
import torch, engine.quantize as q
from engine.checkpoint import load_model
q._torchao()
base = status()
peak = dict(base)
done = False
def sample():
    while not done:
        s = status()
        for k in s: peak[k] = max(peak[k], s[k])
        time.sleep(0.002)
t = threading.Thread(target=sample); t.start()
t0 = time.perf_counter()
model = load_model(sys.argv[1], dtype="bfloat16", quantize=sys.argv[2])[0]
seconds = time.perf_counter() - t0
done = True; t.join()
end = status()
weights = sum(q.stored_bytes(p) for p in model.parameters())
print(json.dumps({"weights": weights, "seconds": seconds, "peak_anon": peak["RssAnon"] - base["RssAnon"],
                  "end_anon": end["RssAnon"] - base["RssAnon"], "peak_rss": peak["VmRSS"] - base["VmRSS"],
                  "file_pages_end": end["RssFile"] - base["RssFile"]}))
"""


def write_synthetic(path: Path) -> Path:
    """A ~0.6 GB bf16 random checkpoint in the HF layout: big enough that one tensor is small against the model."""
    from engine.checkpoint import save_model
    from engine.config import GenerationConfig, ModelConfig
    from engine.model import DiffusionGemma, init_weights

    config = ModelConfig(vocab_size=16384, hidden_size=1024, intermediate_size=2048, num_hidden_layers=6,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=128, global_head_dim=256,
                         num_global_key_value_heads=2, sliding_window=256, num_experts=16, top_k_experts=4,
                         moe_intermediate_size=512, canvas_length=64)
    model = DiffusionGemma(config)
    init_weights(model)
    save_model(model, GenerationConfig(eos_token_id=[1], pad_token_id=0), path, dtype=torch.bfloat16)
    return path


def load_memory(synthetic: Path) -> list[dict]:
    rows = []
    for name, path in (("embedded", EMBEDDED), ("synthetic 0.6 GB", str(synthetic))):
        for mode in ("none", "int8", "int4"):
            out = subprocess.run([sys.executable, "-c", _LOAD_PROBE, path, mode], capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            row = {"model": name, "mode": "bf16" if mode == "none" else mode,
                   **{k: round(v / 2**20, 1) if k != "seconds" else round(v, 2) for k, v in r.items()}}
            rows.append(row)
            print(f"  {row}  (MiB)", flush=True)
    return rows


def layer_26b() -> list[dict]:
    """Layer 0 of the 26B (sliding attention) with random bf16 weights, quantized tensor by tensor."""
    from engine.config import ModelConfig, read_json

    config = ModelConfig.from_hf_dict(read_json("benchmarks/diffusiongemma-26B-A4B-it/config.json"))
    shapes = {n: s for n, s in quantize.parameter_shapes(config).items() if n.startswith("layers.0.")}
    rows = []
    for mode in ("int8", "int4"):
        actual = predicted = 0
        t0 = time.perf_counter()
        for name, shape in shapes.items():
            weight = (torch.randn(shape) * 0.02).to(torch.bfloat16)
            stored = quantize.quantize_weight(name, weight, mode)
            actual += quantize.stored_bytes(stored)
            if quantize.quantized_kind(name):
                experts = shape[0] if len(shape) == 3 else 1
                predicted += experts * quantize.bytes_per_weight(mode, shape[-2], shape[-1])
            else:
                predicted += weight.numel() * 2
            del weight, stored
        bf16 = sum(torch.Size(s).numel() for s in shapes.values()) * 2
        rows.append({"mode": mode, "bf16_bytes": bf16, "torchao_bytes": actual, "predicted_bytes": predicted,
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"  {rows[-1]}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/quantize.json")
    p.add_argument("--requests", type=int, default=40, help="infill holes (and half as many generate prompts)")
    p.add_argument("--corpus", default="data/corpus", help="corpus with heldout.jsonl (the holes are cut from it)")
    p.add_argument("--skip-layer", action="store_true", help="skip the 26B layer (1.6 GB, a minute or two)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from engine.training.tiny import write_tiny_checkpoint

    result = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       check=False).stdout.strip(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = [str(write_tiny_checkpoint(Path(tmp) / f"tiny{s}", seed=s)) for s in range(3)]
        print("logit error vs bf16", flush=True)
        result["logit_error"] = logit_error(tiny)
        print("generate / infill agreement with bf16 (embedded model)", flush=True)
        result["agreement"] = agreement(args.requests, args.corpus)
        print("load memory (MiB above the process before the load)", flush=True)
        result["load_memory"] = load_memory(write_synthetic(Path(tmp) / "synthetic"))
    if not args.skip_layer:
        print("one 26B layer on the CPU", flush=True)
        result["layer_26b"] = layer_26b()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
