"""Ghost-text latency while a long action runs, through the completion service (no LSP). A script,
never a timed test:

    python -m benchmarks.ghost_during_repair [--model DIR] [--requests 10] [--rows 16]

Automatic inline completions at the end of a `return ` line, each on a new version of the
document (so the type-through cache never answers): idle; while Fill empty table cells (model) fills
`--rows` empty cells the way the server runs it (on the action lane, one model call at a time at
low priority); and while the same repair runs as one job on the model thread (the design before
the lanes: ghost text waited for the whole repair).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time

from benchmarks.common import RESULTS, markdown, pct, write_result
from dgemma_ls import actions
from dgemma_ls.service import FILL_TABLE_CELLS, Change, CompletionService

CODE = "def area(width, height):\n    return \n"
CURSOR = (1, len("    return "))


def sparse_table(rows: int) -> str:
    return "| name | count | note |\n| --- | --- | --- |\n" + "".join(f"| item {i} | {i} |   |\n" for i in range(rows))


async def run(args) -> dict:
    service = CompletionService(cli_model=args.model)
    service.apply_settings({"compile": False})
    await service.load_model(service.next_load(), service.settings, lambda *progress: None)
    service.open("file:///bench/code.py", "python", 1, CODE)
    service.open("file:///bench/table.md", "markdown", 1, sparse_table(args.rows))
    version = 1

    async def ghost() -> float:
        nonlocal version
        version += 1
        service.change("file:///bench/code.py", version, [Change(CODE)])
        started = time.perf_counter()
        await service.complete("file:///bench/code.py", CURSOR, automatic=True)
        return (time.perf_counter() - started) * 1000

    async def during(repair: asyncio.Future) -> list[float]:
        times = []
        while not repair.done() and len(times) < args.requests:
            times.append(await ghost())
        await repair
        return times

    cases = {"idle": [await ghost() for _ in range(args.requests)]}
    cases["during a repair on the action lane"] = await during(
        asyncio.ensure_future(service.execute(FILL_TABLE_CELLS, [{"uri": "file:///bench/table.md"}]))
    )
    whole = functools.partial(actions.repair_markdown_text, text=sparse_table(args.rows), start=None, end=None,
                              settings=service.settings, should_stop=lambda: False, fill_cells=True)
    cases["during a repair as one model-thread job"] = await during(
        asyncio.wrap_future(service.worker.run(whole, lambda: False, needs_engine=False))
    )
    service.close()
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint (default: the embedded model)")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--rows", type=int, default=16, help="empty cells the repair fills (at most 16 are filled)")
    parser.add_argument("--out-json", default=str(RESULTS / "ghost_during_repair.json"))
    args = parser.parse_args()
    cases = asyncio.run(run(args))
    table = {
        "title": "Automatic inline completion through the service while Fill empty table cells (model) "
        f"fills {args.rows} cells",
        "header": ["case", "requests", "ms p50", "ms p95"],
        "rows": [[name, len(ms), f"{pct(ms, 0.5):.0f}", f"{pct(ms, 0.95):.0f}"] for name, ms in cases.items()],
    }
    print(markdown(table))
    write_result(args.out_json, "ghost_during_repair", {"ghost": table}, requests=args.requests, rows=args.rows)


if __name__ == "__main__":
    main()
