"""Shared pytest fixtures. Sections are owned by the module they serve; append, don't clobber."""

from __future__ import annotations

import pytest


# --- server fixtures (dgemma_ls/server.py; helpers in tests/lsp_support.py) ------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A real random-weight checkpoint the engine loads: what every server test runs."""
    from engine.tiny import write_tiny_checkpoint

    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-model") / "checkpoint", seed=0))
