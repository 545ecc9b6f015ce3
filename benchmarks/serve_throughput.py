"""`dgemma serve` under concurrent editors: throughput and latency at 1, 2, 4, 8 clients, batched
(holes waiting together share a decoder pass) beside sequential serving (--max-batch 1: one hole
per pass, the same server otherwise), both measured in this run on the same requests.

Each client is one editor typing: it sends its holes one after another (llama.vim-shaped
/infill requests, its own X-Dgemma-Client so its prompt cache is its own). Holes are cut from
this repository's own Python files at fixed spots (seeded). Prints a table and writes JSON with
the commit and the command line.

    nice -n 10 python benchmarks/serve_throughput.py [--model DIR] [--requests 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]


def holes(count: int, seed: int) -> list[dict]:
    """`count` cursor spots inside non-blank lines of the repo's Python sources, as /infill bodies."""
    rng = random.Random(seed)
    files = sorted((REPO / "dgemma_ls").glob("*.py")) + sorted((REPO / "engine").glob("*.py"))
    out = []
    while len(out) < count:
        text = rng.choice(files).read_text()
        lines = text.split("\n")
        row = rng.randrange(len(lines))
        line = lines[row]
        if len(line.strip()) < 8:
            continue
        col = rng.randrange(len(line) - len(line.lstrip()), len(line))
        out.append({"input_prefix": "\n".join(lines[:row]) + "\n", "prompt": line[:col],
                    "input_suffix": line[col:] + "\n" + "\n".join(lines[row + 1:]),
                    "input_extra": [], "n_predict": 24, "cache_prompt": True, "stream": False,
                    "samplers": ["top_k", "top_p", "infill"], "t_max_predict_ms": 60000})
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


async def run_level(url: str, bodies: list[dict], clients: int) -> dict:
    """`clients` editors, each sending its share of `bodies` back to back."""
    latencies: list[float] = []
    batches: list[int] = []
    tokens = 0

    async def editor(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal tokens
        for body in bodies[i::clients]:
            t0 = time.perf_counter()
            async with session.post(f"{url}/infill", json=body, headers={"X-Dgemma-Client": f"editor-{i}"}) as r:
                reply = await r.json()
                if r.status != 200:
                    raise SystemExit(f"HTTP {r.status}: {reply}")
            latencies.append((time.perf_counter() - t0) * 1000)
            batches.append(reply["dgemma"]["batch"])
            tokens += reply["tokens_predicted"]

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        # warm-up: one request per client fills its prompt cache (as an editor's first keystroke would)
        await asyncio.gather(*(session.post(f"{url}/infill", json=dict(bodies[i], n_predict=0),
                                            headers={"X-Dgemma-Client": f"editor-{i}"}) for i in range(clients)))
        t0 = time.perf_counter()
        await asyncio.gather(*(editor(i, session) for i in range(clients)))
        seconds = time.perf_counter() - t0
    latencies.sort()
    return {"clients": clients, "requests": len(bodies), "seconds": round(seconds, 3),
            "requests_per_s": round(len(bodies) / seconds, 2), "middle_tokens_per_s": round(tokens / seconds, 1),
            "p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1),
            "mean_batch": round(statistics.fmean(batches), 2)}


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return head + ("-dirty" if dirty else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    parser.add_argument("--requests", type=int, default=32, help="holes per level (default: 32)")
    parser.add_argument("--clients", default="1,2,4,8", help="concurrency levels (default: 1,2,4,8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    bodies = holes(args.requests, args.seed)
    results = []
    for mode, max_batch in (("sequential", 1), ("batched", 8)):
        process, url = start(args.model, max_batch)
        try:
            for clients in levels:
                row = {"mode": mode, **asyncio.run(run_level(url, bodies, clients))}
                results.append(row)
                print(json.dumps(row), file=sys.stderr)
        finally:
            process.terminate()
            process.wait()
    report = {"benchmark": "serve_throughput", "commit": commit(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "results": results}
    print(f"{'clients':>7} {'mode':>10} {'req/s':>7} {'tok/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'batch':>6}")
    for r in results:
        print(f"{r['clients']:>7} {r['mode']:>10} {r['requests_per_s']:>7} {r['middle_tokens_per_s']:>7} "
              f"{r['p50_ms']:>8} {r['p95_ms']:>8} {r['mean_batch']:>6}")
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
