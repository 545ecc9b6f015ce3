"""DiffusionGemma block-diffusion engine: checkpoints, model, sampler, generation, infilling, training."""

from .api import DEFAULT_MODEL, Completion, Engine, Infill
from .errors import Cancelled, CheckpointError, EngineError

__all__ = ["DEFAULT_MODEL", "Cancelled", "CheckpointError", "Completion", "Engine", "EngineError", "Infill"]
