"""DiffusionGemma block-diffusion engine: checkpoints, model, sampler, generation, infilling, training."""

import warnings

# torch warns at import when NumPy is absent; nothing here uses NumPy, and a plain install has none
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

# after the filter: importing torch warns
from .api import DEFAULT_MODEL, Completion, Engine, Infill
from .errors import Cancelled, CheckpointError, EngineError

__all__ = ["DEFAULT_MODEL", "Cancelled", "CheckpointError", "Completion", "Engine", "EngineError", "Infill"]
