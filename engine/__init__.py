"""DiffusionGemma block-diffusion engine: checkpoints, model, sampler, generation, infilling.

The offline tooling (corpus, tokenizer training, training, evaluation) lives in engine.training,
which nothing here imports. Names below load engine.api (and torch) on first use, so the
`dgemma` CLI can list its commands without importing torch.
"""

from .errors import Cancelled, CheckpointError, EngineError

_API = ("SMALL_MODEL", "Continuation", "Engine", "Infill")

__all__ = ["SMALL_MODEL", "Cancelled", "CheckpointError", "Continuation", "Engine", "EngineError", "Infill",
           "set_threads"]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def set_threads(threads: int) -> None:
    """torch's CPU threads for the whole process. Only entry points call it (`dgemma --threads`,
    `dgemma-ls --threads`, the dgemma.threads setting); loading an engine leaves threads alone.
    A decoder step is many small ops, each a barrier for every thread: on a machine whose cores are
    busy, 1 thread beats 2 by far (136 ms vs 20 s measured on 2 busy cores, docs/benchmarks.md)."""
    if threads < 1:
        raise EngineError(f"threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
