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


# --- dgemma serve fixtures (dgemma_serve/; tests/test_serve*.py, tests/test_backends*.py) -----


@pytest.fixture(scope="session")
def start_serve():
    """Start the real `dgemma serve` as a subprocess on a free loopback port: start_serve(*args) ->
    (process, base URL). Every server started is stopped at the end of the session."""
    import re
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    started = []

    def start(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
        environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), environment.get("PYTHONPATH")]))
        process = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--port", "0", "--device", "cpu",
                                    *args], cwd=repo, env=environment, stdout=subprocess.PIPE, text=True)
        started.append(process)
        line = process.stdout.readline()
        match = re.search(r"listening on (http://\S+)", line)
        if not match:
            process.kill()
            raise RuntimeError(f"dgemma serve did not start: {line!r} (exit {process.wait()})")
        return process, match.group(1)

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
