"""Benchmark scripts, never timed tests, run from the repository root:

    python -m benchmarks.engine_latency   # the engine beside transformers: parity config, completion latency, memory
    python -m benchmarks.server_latency   # inline completions through the real server, as an editor sees them
    python -m benchmarks.kernel_ops       # each kernel against its torch reference
    python -m benchmarks.tables           # docs/ tables rendered from benchmarks/results/*.json

Each writes its tables as JSON (benchmarks.common.write_result: commit, dirty flag, command
line, machine) to benchmarks/results/ by default; docs/ quotes them only through tables.py.
Not part of the installed package.
"""
