"""What produced a result: the commit (and whether the tree was dirty), the exact command line,
the date and the library versions. Every benchmark and evaluation JSON carries it, so a table
in docs/ names the code it was measured on."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]  # a git checkout in an editable install; else no commit


def git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=CHECKOUT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: `dgemma eval-infilling ...`, `python -m benchmarks.engine_latency ...`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = sys.argv[0]
    if spec is not None and spec.name and spec.name != "__main__":
        head = ["python", "-m", spec.name.removesuffix(".__main__")]
    elif program.endswith(".py"):
        head = ["python", program]
    else:
        head = [Path(program).name]
    return shlex.join([*head, *(sys.argv[1:] if argv is None else argv)])


def stamp(command: str | None = None) -> dict:
    """`command`: the command line when the caller knows it (dgemma passes its own); else sys.argv's."""
    import torch

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "commit": commit,
        "dirty": bool(status) if status is not None else None,
        "command": command or command_line(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
