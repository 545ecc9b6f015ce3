"""`dgemma serve` under concurrent editors: throughput and latency at 1, 2, 4, 8 clients, batched
(holes waiting together share a decoder pass) beside sequential serving (--max-batch 1: one hole
per pass, the same server otherwise), both measured in this run on the same requests.

Each client is one editor typing through a line of this repository's own Python sources (a
seeded spot per client): one llama.vim-shaped /infill request per keystroke, back to back, with
its own X-Dgemma-Client so its prompt cache is its own. Both servers run at once and their runs
are interleaved (a busy moment of the machine falls on both modes alike); each (level, mode)
reports its median run. Writes benchmarks/results/serve_throughput.json (docs/serve.md renders
it with `python -m benchmarks.tables`):

    python -m benchmarks.serve_throughput [--model DIR] [--keystrokes 8] [--repeats 3] [--out-json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from benchmarks.common import RESULTS, markdown, write_result

REPO = Path(__file__).resolve().parents[1]


def typing(clients: int, per_client: int, seed: int) -> list[list[dict]]:
    """Each client types through a line of one of the repo's Python sources: its requests are the
    /infill bodies at successive cursor positions on that line (as llama.vim sends them while the
    user types), so its prompt cache is reused between its keystrokes. Spots are seeded."""
    rng = random.Random(seed)
    files = sorted((REPO / "dgemma_ls").glob("*.py")) + sorted((REPO / "engine").glob("*.py"))
    out = []
    while len(out) < clients:
        lines = rng.choice(files).read_text().split("\n")
        row = rng.randrange(len(lines))
        line = lines[row]
        indent = len(line) - len(line.lstrip())
        if len(line) - indent < per_client + 4:
            continue
        start = rng.randrange(indent, len(line) - per_client)
        out.append([{"input_prefix": "\n".join(lines[:row]) + "\n", "prompt": line[:col],
                     "input_suffix": line[col:] + "\n" + "\n".join(lines[row + 1:]),
                     "input_extra": [], "n_predict": 24, "n_indent": indent, "cache_prompt": True, "stream": False,
                     "samplers": ["top_k", "top_p", "infill"], "t_max_predict_ms": 60000}
                    for col in range(start, start + per_client)])
    return out


def start(model: str | None, max_batch: int) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "engine.cli", "serve", "--port", "0", "--device", "cpu",
               "--max-batch", str(max_batch), "--max-queue", "64", "--log-level", "warning"]
    if model:
        command += ["--model", model]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    match = re.search(r"listening on (http://\S+)", process.stdout.readline())
    if not match:
        process.kill()
        raise SystemExit("dgemma serve did not start")
    return process, match.group(1)


async def run_level(url: str, editors: list[list[dict]]) -> dict:
    """Every editor typing at once, each sending its requests back to back."""
    latencies: list[float] = []
    batches: list[int] = []
    encoded: list[int] = []
    tokens = 0

    async def editor(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal tokens
        for body in editors[i]:
            t0 = time.perf_counter()
            async with session.post(f"{url}/infill", json=body, headers={"X-Dgemma-Client": f"editor-{i}"}) as r:
                reply = await r.json()
                if r.status != 200:
                    raise SystemExit(f"HTTP {r.status}: {reply}")
            latencies.append((time.perf_counter() - t0) * 1000)
            batches.append(reply["dgemma"]["batch"])
            encoded.append(reply["timings"]["prompt_n"])
            tokens += reply["tokens_predicted"]

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        # warm-up: each editor's file is encoded once (opening it), as before the user types
        await asyncio.gather(*(session.post(f"{url}/infill", json=dict(e[0], n_predict=0),
                                            headers={"X-Dgemma-Client": f"editor-{i}"}) for i, e in enumerate(editors)))
        t0 = time.perf_counter()
        await asyncio.gather(*(editor(i, session) for i in range(len(editors))))
        seconds = time.perf_counter() - t0
    latencies.sort()
    requests = len(latencies)
    return {"clients": len(editors), "requests": requests, "seconds": round(seconds, 3),
            "requests_per_s": round(requests / seconds, 2), "middle_tokens_per_s": round(tokens / seconds, 1),
            "p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(latencies[min(requests - 1, int(0.95 * requests))], 1),
            "mean_batch": round(statistics.fmean(batches), 2),
            "mean_prompt_tokens_encoded": round(statistics.fmean(encoded), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--keystrokes", type=int, default=8, help="requests per client (default: 8)")
    parser.add_argument("--clients", default="1,2,4,8", help="concurrency levels (default: 1,2,4,8)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each (level, mode), interleaved; the median run is reported (default: 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-json", default=str(RESULTS / "serve_throughput.json"))
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    editors = typing(max(levels), args.keystrokes, args.seed)
    servers = {mode: start(args.model, max_batch) for mode, max_batch in (("sequential", 1), ("batched", 8))}
    rows, runs_kept = [], []
    try:
        for clients in levels:
            runs: dict[str, list[dict]] = {mode: [] for mode in servers}
            for _ in range(args.repeats):
                for mode, (_, url) in servers.items():
                    runs[mode].append(asyncio.run(run_level(url, editors[:clients])))
            for mode, measured in runs.items():
                measured.sort(key=lambda r: r["requests_per_s"])
                median = measured[len(measured) // 2]
                runs_kept.append({"mode": mode, **median,
                                  "requests_per_s_runs": [r["requests_per_s"] for r in measured]})
                rows.append([clients, mode, median["requests_per_s"], median["middle_tokens_per_s"], median["p50_ms"],
                             median["p95_ms"], median["mean_batch"], median["mean_prompt_tokens_encoded"]])
                print(rows[-1], file=sys.stderr)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait()
    table = {
        "title": "dgemma serve: editors typing at once, embedded model, CPU",
        "header": ["clients", "serving", "requests/s", "middle tokens/s", "p50 ms", "p95 ms", "holes per batch",
                   "prompt tokens encoded per request"],
        "rows": rows,
        "note": (f"{args.keystrokes} keystrokes per client, median of {args.repeats} interleaved runs; sequential = "
                 "`--max-batch 1` (one hole per decoder pass), batched = `--max-batch 8`."),
    }
    write_result(args.out_json, "serve_throughput", {"throughput": table}, runs=runs_kept)
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
