"""Shared pytest fixtures. Sections are owned by the module they serve; append, don't clobber."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Triton decides interpreted vs compiled when it is first imported: on a machine without a GPU
# the kernel tests run it on CPU tensors through the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).parent))  # test helper modules (hf_reference, lsp_support)


# --- server fixtures (dgemma_ls/server.py; helpers in tests/lsp_support.py) ------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A real random-weight checkpoint the engine loads: what every server test runs."""
    from engine.training.tiny import write_tiny_checkpoint

    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-model") / "checkpoint", seed=0))
