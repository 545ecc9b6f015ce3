"""DiffusionGemma block-diffusion engine: checkpoints, model, sampler, generation, infilling.

The offline tooling (corpus, tokenizer training, training, evaluation) lives in engine.training,
which nothing here imports. Names below load engine.api (and torch) on first use, so the
`dgemma` CLI can list its commands without importing torch.
"""

from .errors import Cancelled, CheckpointError, EngineError

_API = ("DEFAULT_MODEL", "Completion", "Engine", "Infill")

__all__ = ["DEFAULT_MODEL", "Cancelled", "CheckpointError", "Completion", "Engine", "EngineError", "Infill"]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
