"""Inline-completion latency through the real server, as an editor sees it. A script, never a
timed test, run from the repository root; writes benchmarks/results/server_latency.json:

    python -m benchmarks.server_latency [--model DIR] [--corpus DIR] [--requests 30] [--no-compile]
        [--steps N] [--debounce-ms N] [--quantize int8|int4] [--out-json PATH]

Starts `python -m dgemma_ls` on stdio with the server's default settings (debounce included,
so the time is what a user waits), then for each FIM spot cut from held-out corpus files
(`benchmarks.common.fim_requests`, the engine benchmark's requests) opens the file, asks for an
automatic `textDocument/inlineCompletion` at the cursor (ghost text: one candidate), types one
character with an incremental `didChange` and asks again: the keystroke case, where the prompt's
KV cache is reused, or the completion cache answers outright when the typed character matches
the suggestion. The server's $/logTrace says which: model calls and cache answers are timed and
counted apart. Times request to response on the client, prints p50 / p95 / mean per case. With
the server's default `dgemma.compile`, the timing starts once the background compile has finished.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from benchmarks.common import RESULTS, fim_requests, markdown, pct, write_result

READY, COMPILED = "model ready", "compile finished"


def position(text: str, offset: int) -> types.Position:
    """Held-out python is mostly ASCII; count UTF-16 code units to be exact anyway."""
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    return types.Position(line, len(text[start:offset].encode("utf-16-le")) // 2)


CACHE_ANSWER = "answered from the cache"


async def run(args) -> tuple[dict[str, list[float]], str]:
    client = LanguageClient("dgemma-bench", "0")
    logs: list[str] = []
    traces: list[str] = []

    @client.feature(types.LOG_TRACE)
    def log_trace(params: types.LogTraceParams) -> None:
        traces.append(params.message)

    @client.feature(types.WINDOW_LOG_MESSAGE)
    def log_message(params: types.LogMessageParams) -> None:
        logs.append(params.message)

    @client.feature(types.WINDOW_SHOW_MESSAGE)
    def show_message(params: types.ShowMessageParams) -> None:
        logs.append(params.message)

    settings = {"compile": not args.no_compile}  # every other setting: the server's default
    if args.steps is not None:
        settings["steps"] = args.steps
    if args.debounce_ms is not None:
        settings["debounceMs"] = args.debounce_ms
    if args.quantize is not None:
        settings["quantize"] = args.quantize
    command = [sys.executable, "-m", "dgemma_ls", "--log-level", args.log_level]
    command += ["--model", args.model] if args.model else []
    await client.start_io(*command, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    capabilities = types.ClientCapabilities(
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities(),
            synchronization=types.TextDocumentSyncClientCapabilities(),
        )
    )
    await client.initialize_async(types.InitializeParams(
        capabilities=capabilities, initialization_options={"dgemma": settings}))
    client.initialized(types.InitializedParams())
    client.set_trace(types.SetTraceParams(types.TraceValue.Messages))  # pygls reads $/setTrace, not initialize
    t0 = time.perf_counter()
    while not any(READY in m for m in logs):
        if any("could not load" in m for m in logs) or time.perf_counter() - t0 > 600:
            raise SystemExit(f"the model did not load: {logs}")
        await asyncio.sleep(0.05)
    load_s = time.perf_counter() - t0
    ready = next(m for m in logs if READY in m)
    while not args.no_compile and not any(COMPILED in m for m in logs):
        if time.perf_counter() - t0 > 600:
            raise SystemExit(f"the compile did not finish: {logs}")
        await asyncio.sleep(0.05)
    if not args.no_compile:
        ready += f" ({next(m for m in logs if COMPILED in m)}, {time.perf_counter() - t0:.1f} s after start)"

    async def ask(uri: str, text: str, offset: int) -> tuple[float, bool]:
        """Milliseconds to the answer, and whether the completion cache gave it (no model call)."""
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri), position=position(text, offset),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))
        seen = len(traces)
        t = time.perf_counter()
        await client.text_document_inline_completion_async(params)
        ms = (time.perf_counter() - t) * 1000
        await asyncio.sleep(0.01)  # a trace sent just before the response is read after it
        return ms, any(CACHE_ANSWER in m and uri in m for m in traces[seen:])

    times: dict[str, list[float]] = {}
    requests = fim_requests(args.corpus, args.requests + args.warmup)
    for n, (prefix, suffix, _) in enumerate(requests):
        uri = Path(f"/tmp/dgemma-bench-{n}.py").as_uri()
        text, offset = prefix + suffix, len(prefix)
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri, "python", 1, text)))
        first = await ask(uri, text, offset)
        char = suffix[:1] if suffix[:1].strip() else "x"
        edit = types.TextDocumentContentChangePartial(
            range=types.Range(position(text, offset), position(text, offset)), text=char)
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(version=2, uri=uri), [edit]))
        text, offset = text[:offset] + char + text[offset:], offset + 1
        typed = await ask(uri, text, offset)
        client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
        if n >= args.warmup:
            for case, (ms, cached) in (("open file, first request", first), ("after one typed character", typed)):
                times.setdefault(f"{case}, {'completion cache' if cached else 'model call'}", []).append(ms)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    if not any("model started" in m for m in traces):
        raise SystemExit("the server sent no $/logTrace: model calls and cache answers cannot be told apart")
    return times, f"server ready in {load_s:.1f} s: {ready}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the embedded model)")
    parser.add_argument("--corpus", default="data/corpus", help="the corpus whose held-out files give the requests")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first")
    parser.add_argument("--steps", type=int, default=None, help="the dgemma.steps setting (default: the model's)")
    parser.add_argument("--debounce-ms", type=int, default=None,
                        help="the dgemma.debounceMs setting (default: the server's; 0 times the server alone)")
    parser.add_argument("--no-compile", action="store_true", help="dgemma.compile false (default: the server's true)")
    parser.add_argument("--quantize", default=None, choices=["none", "int8", "int4"],
                        help="the dgemma.quantize setting (docs/quantization.md; default: none)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server (default 1)")
    parser.add_argument("--log-level", default="WARNING", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="the server's --log-level (its log goes to stderr)")
    parser.add_argument("--out-json", default=str(RESULTS / "server_latency.json"))
    args = parser.parse_args(argv)

    times, ready = asyncio.run(run(args))
    steps = args.steps if args.steps is not None else "model default"
    debounce = f"{args.debounce_ms} ms" if args.debounce_ms is not None else "server default"
    table = {"title": (f"Inline completion through the server (steps: {steps}; debounce: {debounce}; compile: "
                       f"{not args.no_compile}; weights {args.quantize or 'none'}; {args.threads} thread(s); "
                       f"load average {os.getloadavg()[0]:.1f})"),
             "header": ["case", "requests", "ms p50", "ms p95", "ms mean"],
             "rows": [[case, len(ms), f"{statistics.median(ms):.0f}", f"{pct(ms, 0.95):.0f}",
                       f"{statistics.fmean(ms):.0f}"] for case, ms in sorted(times.items())],
             "note": ready}
    print(f"### {table['title']}\n\n{markdown(table)}\n")
    write_result(args.out_json, "server_latency", {"inline": table}, model=args.model, threads=args.threads,
                 requests=args.requests, settings={"steps": args.steps, "debounceMs": args.debounce_ms,
                                                   "compile": not args.no_compile, "quantize": args.quantize})
    return 0


if __name__ == "__main__":
    sys.exit(main())
