"""Errors the engine raises; their messages are shown to users as they are."""


class EngineError(Exception):
    """A user-facing engine failure (bad checkpoint, bad settings)."""


class CheckpointError(EngineError):
    """A checkpoint directory that cannot be loaded; the message names the file or tensor."""


class Cancelled(EngineError):
    """Raised inside generation when the caller's `should_stop()` returned True."""
