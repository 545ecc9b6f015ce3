"""Benchmark each op, Triton against its torch reference, at DiffusionGemma shapes.

    python -m benchmarks.kernel_ops [--shape small|26b|all] [--ops denoise_sample,moe_experts] [--repeat N]
        [--threads N] [--out-json PATH]

Reports ms, GB/s (the bytes a fused kernel must move: inputs read once, outputs written
once) and TFLOP/s for the ops that do matmul work. Without a CUDA GPU the Triton rows are
skipped, said so, and the torch reference is timed on the CPU. Writes the rows to
benchmarks/results/kernel_ops.json (benchmarks/tables.py renders them).
"""

from __future__ import annotations


import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import kernels
from benchmarks.common import RESULTS, write_result
from kernels import reference


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    vocab: int
    canvas: int
    experts: int
    top_k: int
    moe_inter: int
    heads: int
    kv_heads: int
    head_dim: int
    global_kv_heads: int
    global_head_dim: int
    window: int
    prompt: int  # cached tokens in front of the canvas
    batch: int = 1


SHAPES = {
    "small": Shape("small", hidden=256, vocab=8192, canvas=128, experts=8, top_k=2, moe_inter=256,
                   heads=4, kv_heads=2, head_dim=64, global_kv_heads=1, global_head_dim=128,
                   window=256, prompt=512),
    "26b": Shape("26b", hidden=2816, vocab=262144, canvas=256, experts=128, top_k=8, moe_inter=704,
                 heads=16, kv_heads=8, head_dim=256, global_kv_heads=2, global_head_dim=512,
                 window=1024, prompt=2048),
}


@dataclass
class Case:
    op: str  # the public op, also the name in kernels.reference
    label: str
    args: tuple
    bytes: int  # minimum traffic of a fused kernel
    flops: int  # 0 for bandwidth-bound ops


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def cases(s: Shape, device: torch.device, dtype: torch.dtype) -> list[Case]:
    g = torch.Generator(device=device).manual_seed(0)
    rows = s.batch * s.canvas

    def randn(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dt)

    logits = randn(rows, s.vocab, scale=4.0, dt=torch.float32)  # the lm head returns fp32
    hidden = randn(rows, s.hidden)
    embedding = randn(s.vocab, s.hidden, scale=s.hidden**-0.5)
    sampler_out = rows * (8 + 8 + 4)  # sample, argmax int64; entropy fp32
    entropy = torch.rand(s.batch, s.canvas, generator=g, device=device)
    canvas = [torch.randint(0, s.vocab, (s.batch, s.canvas), generator=g, device=device) for _ in range(3)]
    clamped = torch.rand(s.batch, s.canvas, generator=g, device=device) < 0.1
    x = randn(rows, s.hidden)
    gate_up = randn(s.experts, 2 * s.moe_inter, s.hidden, scale=s.hidden**-0.5)
    down = randn(s.experts, s.hidden, s.moe_inter, scale=s.moe_inter**-0.5)
    index = torch.rand(rows, s.experts, generator=g, device=device).topk(s.top_k, dim=-1).indices
    weights = torch.rand(rows, s.top_k, generator=g, device=device)
    hit = int(index.unique().numel())
    out = [
        Case("denoise_sample", "logits (R,V) fp32", (logits, 0.6, 1, 0, 30.0), _nbytes(logits) + sampler_out, 0),
        Case("denoise_sample_from_hidden", "hidden @ tied emb", (hidden, embedding, 0.6, 1, 0, 30.0),
             _nbytes(hidden, embedding) + sampler_out, 2 * rows * s.vocab * s.hidden),
        Case("entropy_accept", "canvas", (entropy, canvas[0], canvas[1], clamped, 0.1, canvas[2]),
             _nbytes(entropy, clamped, *canvas) + _nbytes(canvas[0]) + s.batch * s.canvas, 0),
        Case("soft_embedding", "softmax @ emb", (logits.to(dtype), embedding, s.hidden**0.5),
             _nbytes(logits.to(dtype), embedding) + rows * s.hidden * embedding.element_size(),
             2 * rows * s.vocab * s.hidden),
        Case("moe_experts", f"T={rows} top-{s.top_k}/{s.experts}", (x, index, weights, gate_up, down),
             _nbytes(x, index, weights) + hit * _nbytes(gate_up[0], down[0]) + _nbytes(x),
             2 * rows * s.top_k * 3 * s.moe_inter * s.hidden),
    ]
    for label, kv_heads, dim, window in (
        (f"sliding D={s.head_dim}", s.kv_heads, s.head_dim, s.window),
        (f"global D={s.global_head_dim}", s.global_kv_heads, s.global_head_dim, None),
    ):
        length = s.prompt + s.canvas
        q = randn(s.batch, s.heads, s.canvas, dim)
        k = randn(s.batch, kv_heads, length, dim)
        v = randn(s.batch, kv_heads, length, dim)
        seen = length if window is None else s.canvas + min(s.prompt, window - 1)
        traffic = _nbytes(q, q) + 2 * s.batch * kv_heads * seen * dim * q.element_size()  # q, out; visible k, v
        out.append(Case("decoder_attention", label, (q, k, v, s.prompt, window, dim**-0.5), traffic,
                        4 * s.batch * s.heads * s.canvas * seen * dim))
    return out


def time_ms(fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    """Median wall time of `repeat` calls after one warm-up call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def run(shape: Shape, ops: set[str] | None, repeat: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu_triton = device.type == "cuda" and kernels.HAS_TRITON
    providers = ["triton", "torch"] if gpu_triton else ["torch"]
    title = f"shape {shape.name} on {device.type} ({torch.get_num_threads()} threads), bf16 weights"
    print(f"\n== {title} ==")
    note = None
    if not gpu_triton:
        note = "Triton GPU benchmark skipped: no CUDA GPU (the interpreter is a correctness tool, not timed)"
        print(f"   {note}")
    rows = []
    print(f"{'op':<28}{'case':<24}{'provider':<9}{'ms':>10}{'GB/s':>9}{'TFLOP/s':>9}")
    for case in cases(shape, device, torch.bfloat16):
        if ops and case.op not in ops:
            continue
        for provider in providers:
            fn = getattr(kernels if provider == "triton" else reference, case.op)
            with kernels.force(provider):
                ms = time_ms(lambda: fn(*case.args), repeat, device)
            gbs = case.bytes / ms / 1e6
            tflops = f"{case.flops / ms / 1e9:9.3f}" if case.flops else f"{'-':>9}"
            print(f"{case.op:<28}{case.label:<24}{provider:<9}{ms:10.2f}{gbs:9.2f}{tflops}", flush=True)
            rows.append([case.op, case.label, provider, f"{ms:.2f}", f"{gbs:.2f}", tflops.strip()])
    if device.type == "cuda":
        title += f", {torch.cuda.get_device_name()}"
    return {"title": title, "header": ["op", "case", "provider", "ms", "GB/s", "TFLOP/s"], "rows": rows,
            **({"note": note} if note else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="small")
    parser.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's choice); on a busy machine 1 avoids "
                             "OpenMP barrier stalls that cost ~8 ms per elementwise op")
    parser.add_argument("--out-json", default=str(RESULTS / "kernel_ops.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ops = {op for op in args.ops.split(",") if op} or None
    tables = {name: run(SHAPES[name], ops, args.repeat) for name in (SHAPES if args.shape == "all" else [args.shape])}
    write_result(args.out_json, "kernel_ops", tables, repeat=args.repeat)


if __name__ == "__main__":
    main()
