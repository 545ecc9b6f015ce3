"""Speed of the converted Gemma 3 270M in our engine: the trimmed 32,768-token code vocabulary
against the full 262,144 (issue 12 item 2), measured alternately in the same run so machine
load hits both alike. A script, never a timed test; run from the repository root:

    dgemma convert <gemma-3-270m .gguf> runs/gemma3-full                                    # full vocabulary
    dgemma convert <gemma-3-270m .gguf> runs/gemma3-32k --vocab engine/embedded_model      # trimmed
    python -m benchmarks.gemma3_speed --full runs/gemma3-full --trimmed runs/gemma3-32k [--repeat 7]

Per checkpoint, bf16, the process's torch threads (1 unless --threads): prefill of a 512-token
prompt, one decoder step on a 48-token canvas (with and without the self-conditioning input, whose
soft embedding is a vocabulary-wide matmul), and the LM head alone on 48 positions. Medians (ms).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.common import RESULTS, markdown, ms_of, write_result


def timers(path: str) -> dict:
    from engine.checkpoint import load_model
    from engine.model import KVCache

    model, config, _, _ = load_model(path, dtype="bfloat16")
    model.eval()
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, config.vocab_size, (1, 512), generator=g)
    canvas = torch.randint(3, config.vocab_size, (1, 48), generator=g)
    cache = KVCache(config, 1, model.dtype, "cpu")
    model.encode(prompt, cache)
    context = model.decoder_context(cache, 1)
    logits = model.decoder_logits(canvas, context, cache.length, None)
    hidden = torch.randn(48, config.hidden_size, generator=g).to(model.dtype)

    def prefill():
        c = KVCache(config, 1, model.dtype, "cpu")
        model.encode(prompt, c)

    return {
        "vocabulary": config.vocab_size,
        "prefill 512 tokens": prefill,
        "decoder step, 48-token canvas (first step)": lambda: model.decoder_logits(canvas, context, cache.length, None),
        "decoder step, 48-token canvas (self-conditioned)": lambda: model.decoder_logits(
            canvas, context, cache.length, model.soft_embedding(logits)),
        "LM head, 48 positions": lambda: model.logits(hidden),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", required=True, help="the converted checkpoint with the full vocabulary")
    p.add_argument("--trimmed", required=True, help="the converted checkpoint with the code vocabulary")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-json", default=str(RESULTS / "gemma3_speed.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with torch.no_grad():
        runs = {"full": timers(args.full), "trimmed": timers(args.trimmed)}
        names = [k for k in runs["full"] if k != "vocabulary"]
        times = {(which, name): [] for which in runs for name in names}
        for _ in range(args.repeat):  # alternate, so load changes hit both alike
            for name in names:
                for which in runs:
                    times[which, name] += ms_of(runs[which][name], 1)
    rows = []
    for name in names:
        full, trimmed = statistics.median(times["full", name]), statistics.median(times["trimmed", name])
        rows.append([name, f"{full:.0f}", f"{trimmed:.0f}", f"{full / trimmed:.1f}x"])
    table = {"title": "Gemma 3 270M in our engine, bf16: full vs trimmed vocabulary (median ms)",
             "header": ["operation", f"vocabulary {runs['full']['vocabulary']:,}",
                        f"vocabulary {runs['trimmed']['vocabulary']:,}", "speed-up"],
             "rows": rows, "note": f"{args.repeat} alternating repeats, {args.threads} torch thread(s)"}
    print(markdown(table))
    write_result(args.out_json, "gemma3_speed", {"vocabulary": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
