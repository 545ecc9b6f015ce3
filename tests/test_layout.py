"""The layout's promises, checked in fresh interpreters: the runtime (server, engine, kernels)
never imports the offline tooling, `dgemma --help` lists every command without importing torch,
and loading a model sets neither TRITON_INTERPRET nor torch's threads (the entry points do)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_runtime_never_imports_the_tooling(tiny_model_dir):
    code = """
import json, os, sys
import torch
threads = torch.get_num_threads()
import dgemma_ls.server, kernels
from engine import Engine
engine = Engine.load(sys.argv[1])
engine.infill("def f(x):\\n    return ", "\\n", max_middle_tokens=4, steps=2)
print(json.dumps({"tooling": sorted(m for m in sys.modules if m.startswith("engine.training")),
                  "threads_kept": torch.get_num_threads() == threads,
                  "triton_interpret": os.environ.get("TRITON_INTERPRET")}))
"""
    run = python(code, tiny_model_dir)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"tooling": [], "threads_kept": True, "triton_interpret": None}


def test_dgemma_help_lists_every_command_without_importing_torch():
    from engine.cli import COMMANDS

    code = "import sys\nfrom engine.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n" \
           "print('torch imported' if 'torch' in sys.modules else 'no torch')"
    run = python(code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("no torch")
    for name in COMMANDS:
        assert f"\n    {name}" in run.stdout, name


def test_a_tooling_command_without_numpy_names_the_train_extra(tmp_path):
    """The runtime needs no NumPy; the corpus tooling does, and says how to get it."""
    code = ("import sys\nsys.modules['numpy'] = None  # as if not installed\nfrom engine.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    run = python(code, "corpus", "--out", str(tmp_path / "corpus"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "needs the numpy module" in run.stderr and "dgemma-ls[train]" in run.stderr
    assert not (tmp_path / "corpus").exists()


def test_threads_must_be_positive():
    from engine.cli import main

    assert main(["--threads", "0", "generate", "--prompt", "x"]) == 2


def test_every_package_is_in_the_wheel_and_benchmarks_are_not():
    tomllib = __import__("pytest").importorskip("tomllib")
    from setuptools import find_packages

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(find_packages(str(REPO), exclude=["tests*", "benchmarks*", "editors*", "build*"]))
    assert listed == found
