"""Inline-completion latency through the real server, as an editor sees it. A script, never a timed test:

    python -m dgemma_ls.bench [--model DIR] [--requests 30] [--no-compile] [--steps N]

Starts `python -m dgemma_ls` on stdio, then for each FIM spot cut from held-out corpus files
(`engine.bench.fim_requests`, the engine benchmark's requests) opens the file, asks for an
automatic `textDocument/inlineCompletion` at the cursor (ghost text: one candidate; debounce 0,
so the time is the server's, not a deliberate wait), types one character with an incremental
`didChange` and asks again: the keystroke case, where the prompt's KV cache is reused. Times
request to response on the client, prints p50 / p95 / mean per case. With the server's default
`dgemma.compile`, the timing starts once the background compile has finished.
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

READY, COMPILED = "model ready", "compile finished"


def position(text: str, offset: int) -> types.Position:
    """Held-out python is mostly ASCII; count UTF-16 code units to be exact anyway."""
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    return types.Position(line, len(text[start:offset].encode("utf-16-le")) // 2)


async def run(args) -> dict[str, list[float]]:
    from engine.bench import fim_requests

    client = LanguageClient("dgemma-bench", "0")
    logs: list[str] = []

    @client.feature(types.WINDOW_LOG_MESSAGE)
    def log_message(params: types.LogMessageParams) -> None:
        logs.append(params.message)

    @client.feature(types.WINDOW_SHOW_MESSAGE)
    def show_message(params: types.ShowMessageParams) -> None:
        logs.append(params.message)

    settings = {"debounceMs": 0, "compile": not args.no_compile}
    if args.steps is not None:
        settings["steps"] = args.steps
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

    async def ask(uri: str, text: str, offset: int) -> float:
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri), position=position(text, offset),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))
        t = time.perf_counter()
        await client.text_document_inline_completion_async(params)
        return (time.perf_counter() - t) * 1000

    times: dict[str, list[float]] = {"open file, first request": [], "after one typed character": []}
    requests = fim_requests(args.requests + args.warmup)
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
            times["open file, first request"].append(first)
            times["after one typed character"].append(typed)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    print(f"server ready in {load_s:.1f} s: {ready}\n")
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the embedded model)")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first")
    parser.add_argument("--steps", type=int, default=None, help="the dgemma.steps setting (default: the model's)")
    parser.add_argument("--no-compile", action="store_true", help="dgemma.compile false (default: the server's true)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server (default 1)")
    parser.add_argument("--log-level", default="WARNING", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="the server's --log-level (its log goes to stderr)")
    args = parser.parse_args(argv)
    from engine.bench import pct

    times = asyncio.run(run(args))
    steps = args.steps if args.steps is not None else "model default"
    print(f"| case | requests | ms p50 | ms p95 | ms mean |  (steps: {steps}; compile: {not args.no_compile}; "
          f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f})")
    print("| --- | ---: | ---: | ---: | ---: |")
    for case, ms in times.items():
        print(f"| {case} | {len(ms)} | {statistics.median(ms):.0f} | {pct(ms, 0.95):.0f} | {statistics.fmean(ms):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
