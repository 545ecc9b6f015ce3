"""Speed and memory of the engine, beside transformers' reference measured in the same run.

1. parity config: a random DiffusionGemma of the embedded model's shape, saved by transformers
   and loaded by us: prefill, one decoder step, `generate` of 128 tokens (reference-mode noise,
   same seed, same tokens), fp32 and bf16; `--reference` also times transformers on it.
2. inline completion: FIM requests cut from held-out python files through `Engine.infill` with
   the server's line-scope defaults, 1 vs 2 torch threads, and the prompt-KV reuse of typing;
   eager, then with the compiled decoder step (`Engine.compile`).
3. memory: peak RSS of loading the model against its safetensors size (mmap, no second copy).

transformers is used only here and in tests, never at run time. A script, never a timed test,
run from the repository root; prints the tables and writes them to benchmarks/results/engine_latency.json:

    python -m benchmarks.engine_latency [--model DIR] [--corpus DIR] [--reference] [--requests 50]
        [--threads 1] [--no-compile] [--out-json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, fim_requests, markdown, ms_of, pct, write_result
from engine.api import SMALL_MODEL, Engine
from engine.checkpoint import load_model, weight_files
from engine.constants import MAX_MIDDLE_TOKENS
from engine.generate import generate_blocks
from engine.model import KVCache
from engine.sampler import TorchNoise

RUN_MODEL = Path("runs/default/model")  # relative to the working directory, as training writes it
LINE_SCOPE_TOKENS = MAX_MIDDLE_TOKENS["line"]  # what the server asks for a line
FALLBACK_SHAPE = dict(hidden_size=256, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64, global_head_dim=64, num_global_key_value_heads=1,
                      num_experts=8, top_k_experts=2, moe_intermediate_size=128, vocab_size=8192,
                      sliding_window=256, max_position_embeddings=8192,
                      layer_types=["sliding_attention", "sliding_attention", "full_attention", "full_attention"])
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
              num_key_value_heads=2, head_dim=8)


def default_model() -> Path | None:
    for path in (RUN_MODEL, SMALL_MODEL):
        if (path / "model.safetensors").exists():
            return path
    return None


# ------------------------------------------------------------------------ 1. parity config

def parity_shape(model_dir: Path | None) -> tuple[dict, int, int]:
    """(text_config, canvas_length, denoising steps) of the model we benchmark, or the fallback."""
    if model_dir is not None and (model_dir / "config.json").exists():
        raw = json.loads((model_dir / "config.json").read_text())
        text = {k: v for k, v in raw["text_config"].items() if k != "model_type"}
        gen = json.loads((model_dir / "generation_config.json").read_text())
        return text, raw.get("canvas_length", 64), gen.get("max_denoising_steps", 16)
    return dict(FALLBACK_SHAPE), 64, 16


def build_reference(text: dict, canvas: int, steps: int, out: Path):
    """A random DiffusionGemmaForBlockDiffusion saved with transformers' own save_pretrained."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        DiffusionGemmaGenerationConfig,
        EntropyBoundSamplerConfig,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    config = DiffusionGemmaConfig(text_config=dict(text), vision_config=dict(VISION), canvas_length=canvas)
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    model.generation_config = DiffusionGemmaGenerationConfig(
        sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.1), max_denoising_steps=steps, t_min=0.4,
        t_max=0.8, stability_threshold=1, confidence_threshold=0.005, eos_token_id=[1], pad_token_id=0)
    model.save_pretrained(out)
    return model


def bench_parity(model_dir: Path | None, reference: bool, new_tokens: int = 128, prompt_len: int = 256) -> dict:
    from transformers import DynamicCache

    text, canvas, steps = parity_shape(model_dir)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dgemma-bench-") as tmp:
        hf = build_reference(text, canvas, steps, Path(tmp))
        V = hf.config.text_config.vocab_size
        prompt = torch.randint(3, V, (1, prompt_len), generator=torch.Generator().manual_seed(1))
        draft = torch.randint(0, V, (1, canvas), generator=torch.Generator().manual_seed(2))
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            ours, config, gen, _ = load_model(tmp, dtype=dtype)
            hf.to(dtype)
            sc = torch.randn(1, canvas, V, generator=torch.Generator().manual_seed(3)).to(dtype)
            with torch.no_grad():
                cache = KVCache(config, 1, dtype, "cpu")
                prefill = ms_of(lambda: (cache.truncate(0), ours.encode(prompt, cache)), 3)
                ctx = ours.decoder_context(cache, 1)
                step = ms_of(lambda: ours.logits(ours.decode(draft, ctx, cache.length, sc_logits=sc)), 5)
            torch.manual_seed(0)  # the timed calls above warmed every shape generate uses
            mine = generate_blocks(ours, prompt, gen, noise=TorchNoise(V), max_new_tokens=new_tokens)
            gen_ms = mine.ms
            tokens = int((mine.new_tokens != gen.pad_token_id).sum())
            rows.append([f"ours {name}", f"{statistics.median(prefill):.1f}", f"{statistics.median(step):.1f}",
                         f"{gen_ms:.0f}", f"{tokens / gen_ms * 1000:.0f}", f"{float(mine.tokens_per_forward[0]):.2f}",
                         "–"])
            if not reference:
                continue
            with torch.no_grad():
                def hf_prefill():
                    c = DynamicCache(config=hf.config.text_config)
                    hf.model.encoder(input_ids=prompt, past_key_values=c)
                    return c
                hf_cache = hf_prefill()
                hf_pre = ms_of(hf_prefill, 3)
                hf_step = ms_of(lambda: hf(decoder_input_ids=draft, past_key_values=hf_cache,
                                           self_conditioning_logits=sc).logits, 5)
                torch.manual_seed(0)
                t0 = time.perf_counter()
                ref = hf.generate(prompt, max_new_tokens=new_tokens)
                hf_ms = (time.perf_counter() - t0) * 1000
            same = torch.equal(ref.sequences, mine.sequences)
            rows.append([f"transformers {name}", f"{statistics.median(hf_pre):.1f}", f"{statistics.median(hf_step):.1f}",
                         f"{hf_ms:.0f}", f"{tokens / hf_ms * 1000:.0f}",
                         f"{float(ref.tokens_per_forward[0]):.2f}", "yes" if same else "no"])
        hf.float()
    shape = (f"hidden {text['hidden_size']}, {text['num_hidden_layers']} layers, {text['num_experts']} experts "
             f"top-{text['top_k_experts']}, vocab {text['vocab_size']}, canvas {canvas}, {steps} denoising steps")
    return {"title": (f"Parity config ({shape}; prompt {prompt_len} tokens, {new_tokens} new tokens, "
                      f"{torch.get_num_threads()} torch threads)"),
            "header": ["implementation", "prefill ms", "decoder step ms", "generate ms", "tokens/s", "tokens/forward",
                       "same tokens"], "rows": rows}


# ------------------------------------------------------------------- 2. inline completion

def bench_infill(engine: Engine, requests, steps: int | None, threads: int) -> list:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for prefix, suffix, _ in requests[:3]:  # warm-up (one call left the first row ~8% slow)
            engine.infill(prefix, suffix, max_middle_tokens=LINE_SCOPE_TOKENS, steps=steps)
        ms, tpf, forwards = [], [], []
        for prefix, suffix, _ in requests:
            t0 = time.perf_counter()
            best = engine.infill(prefix, suffix, max_middle_tokens=LINE_SCOPE_TOKENS, steps=steps)[0]
            ms.append((time.perf_counter() - t0) * 1000)
            tpf.append(best.tokens_per_forward)
            forwards.append(best.steps)
    finally:
        torch.set_num_threads(previous)
    label = f"{steps if steps is not None else engine.generation.max_denoising_steps}"
    step = "compiled" if engine.compiled_step is not None else "eager"
    return [label + ("" if steps is not None else " (default)"), step, threads, len(requests),
            f"{statistics.median(ms):.0f}", f"{pct(ms, 0.95):.0f}", f"{statistics.fmean(ms):.0f}",
            f"{statistics.fmean(forwards):.1f}", f"{statistics.fmean(tpf):.2f}"]


def bench_reuse(engine: Engine, requests, title: str, count: int = 10) -> dict:
    """A request after an unrelated one (cold prompt) against the same request with one more
    typed character (the prompt KV cache covers all but the last few tokens)."""
    cold, typed, cold_tokens, typed_tokens = [], [], [], []
    for prefix, suffix, _ in requests[:count]:
        if not suffix:
            continue
        before = engine.encoded_tokens
        t0 = time.perf_counter()
        engine.infill(prefix, suffix, max_middle_tokens=LINE_SCOPE_TOKENS)
        cold.append((time.perf_counter() - t0) * 1000)
        cold_tokens.append(engine.encoded_tokens - before)
        before = engine.encoded_tokens
        t0 = time.perf_counter()
        engine.infill(prefix + suffix[0], suffix[1:], max_middle_tokens=LINE_SCOPE_TOKENS)
        typed.append((time.perf_counter() - t0) * 1000)
        typed_tokens.append(engine.encoded_tokens - before)
    return {"title": title, "header": ["call", "requests", "prompt tokens encoded (mean)", "ms p50", "ms mean"],
            "rows": [
        ["after an unrelated request", len(cold), f"{statistics.fmean(cold_tokens):.0f}",
         f"{statistics.median(cold):.0f}", f"{statistics.fmean(cold):.0f}"],
        ["same request + 1 typed char", len(typed), f"{statistics.fmean(typed_tokens):.0f}",
         f"{statistics.median(typed):.0f}", f"{statistics.fmean(typed):.0f}"]]}


def bench_completion(model_dir: Path, corpus: Path, n: int, threads: int, compile: bool) -> dict[str, dict]:
    engine = Engine.load(model_dir)
    requests = fim_requests(corpus, n)
    other = 2 if threads == 1 else 1
    fewer = max(1, engine.generation.max_denoising_steps // 2)
    rows = [bench_infill(engine, requests, None, threads), bench_infill(engine, requests, fewer, threads),
            bench_infill(engine, requests[:10], None, other)]
    kinds = ", ".join(f"{sum(k == kind for *_, k in requests)} {kind}" for kind in ("mid-line", "end-of-line"))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        reuse = f"Prompt-KV reuse (default steps, {threads} torch thread(s), {{}} decoder step)"
        tables = {"reuse_eager": bench_reuse(engine, requests, reuse.format("eager"))}
        if compile and engine.compile():  # Engine.compile: the server's `dgemma.compile` setting
            rows += [bench_infill(engine, requests, None, threads), bench_infill(engine, requests, fewer, threads)]
            tables["reuse_compiled"] = bench_reuse(engine, requests, reuse.format("compiled"))
    finally:
        torch.set_num_threads(previous)
    completion = {"title": f"Inline completion ({engine.describe()}; {kinds}; max_middle_tokens {LINE_SCOPE_TOKENS})",
                  "header": ["steps", "decoder step", "torch threads", "requests", "ms p50", "ms p95", "ms mean",
                             "decoder passes", "tokens/forward"], "rows": rows}
    if compile:
        completion["note"] = f"{engine.compile_status} ({threads} torch thread(s))."
    return {"completion": completion, **tables}


# ----------------------------------------------------------------------------------- 3. memory

_MEASURE_LOAD = """
import json, resource, sys
from engine.api import Engine

Engine.load(sys.argv[3])  # a tiny checkpoint: lazy imports and first-call buffers, not weights

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile")}

before = status()
maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
engine = Engine.load(sys.argv[1], dtype=sys.argv[2])
print(json.dumps({"before": before, "after": status(), "dtype": str(engine.model.dtype),
                  "maxrss_before": maxrss_before, "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def bench_memory(model_dir: Path) -> dict:
    """Each load in a fresh process, after loading a tiny checkpoint (so lazy imports and
    first-call buffers are not counted as the model's). Peak RSS (getrusage) before and after the
    load, and the growth split from /proc/self/status: file-backed (mmap'd safetensors pages,
    shared with the page cache) vs anonymous (copies)."""
    from engine.training.tiny import write_tiny_checkpoint

    size = sum(f.stat().st_size for f in weight_files(model_dir))
    rows = []
    with tempfile.TemporaryDirectory(prefix="dgemma-bench-") as tiny:
        write_tiny_checkpoint(tiny)
        for dtype in ("auto", "float32", "bfloat16"):
            out = subprocess.run([sys.executable, "-c", _MEASURE_LOAD, str(model_dir), dtype, tiny],
                                 capture_output=True, text=True, check=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            grow = {k: (m["after"][k] - m["before"][k]) / 1024 for k in m["after"]}
            rows.append([dtype, m["dtype"].removeprefix("torch."), f"{size / 1e6:.1f}",
                         f"{m['maxrss_before'] / 1024:.0f}", f"{m['maxrss'] / 1024:.0f}",
                         f"{(m['maxrss'] - m['maxrss_before']) / 1024:.1f}", f"{grow['RssFile']:.1f}",
                         f"{grow['RssAnon']:.1f}"])
    return {"title": f"Memory ({model_dir})",
            "header": ["--dtype", "loaded as", "safetensors MB", "peak RSS before MB", "peak RSS after MB",
                       "peak growth MB", "RSS growth file-backed MB", "RSS growth anonymous MB"], "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: runs/default/model, else embedded)")
    parser.add_argument("--corpus", default="data/corpus", help="the corpus whose held-out files give the requests")
    parser.add_argument("--reference", action="store_true", help="also time transformers' implementation")
    parser.add_argument("--requests", type=int, default=50, help="FIM requests for the latency table")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for 1 and 2 (2 also times 10 requests at the other count)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the compiled decoder step (Engine.compile; default on)")
    parser.add_argument("--sections", default="parity,completion,memory",
                        help="comma-separated subset of parity, completion, memory (default: all three)")
    parser.add_argument("--out-json", default=str(RESULTS / "engine_latency.json"))
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    if not sections <= {"parity", "completion", "memory"}:
        parser.error(f"--sections: unknown {', '.join(sorted(sections - {'parity', 'completion', 'memory'}))}")
    model_dir = Path(args.model) if args.model else default_model()
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads by default, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; benchmarking with {args.threads}\n")
    torch.set_num_threads(args.threads)
    tables: dict[str, dict] = {}

    def show(name: str, table: dict) -> None:
        tables[name] = table
        print(f"### {table['title']}\n\n{markdown(table)}\n", flush=True)

    # first: a child's ru_maxrss starts at its parent's high-water mark (fork copies it), and
    # the parity section grows this process past the size of a model load
    memory = bench_memory(model_dir) if model_dir is not None and "memory" in sections else None
    try:
        if "parity" in sections:
            show("parity", bench_parity(model_dir, args.reference))
    except ImportError as e:  # transformers builds the parity checkpoint: a test dependency
        print(f"parity config skipped: {e} (pip install transformers==5.23.0)\n")
    if model_dir is None:
        print("no trained checkpoint found (runs/default/model, engine/default_model): skipping 2 and 3")
    else:
        if "completion" in sections:
            for name, table in bench_completion(model_dir, Path(args.corpus), args.requests, args.threads,
                                                args.compile).items():
                show(name, table)
        if memory is not None:
            show("memory", memory)
    print(f"total {time.perf_counter() - t0:.0f} s")
    write_result(args.out_json, "engine_latency", tables, model=str(model_dir), threads=args.threads,
                 requests=args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
