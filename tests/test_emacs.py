"""Emacs end to end: `emacs --batch` with Debian's Eglot loads editors/emacs/dgemma-eglot.el as its
README says (settings set after `require`), runs the real server on a tiny model and
tests/emacs_driver.el completes in a Python buffer, then applies "Repair JSON" in a JSON buffer
opened after it. The server's stdin is copied (tests/lsp_tee.py), so the settings are checked as
the server received them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lsp_support import REPO, server_env
from lsp_tee import lsp_messages

DRIVER = Path(__file__).with_name("emacs_driver.el")
TEE = Path(__file__).with_name("lsp_tee.py")
PYTHON_TEXT = "def area(width, height):\n    # multiply the width and the \n    return width * height\n"
BROKEN_JSON = '{"name": "dgemma", "tags": ["a", "b",], "size": 3,}\n'

pytestmark = pytest.mark.slow


def emacs_with_eglot() -> str | None:
    emacs = shutil.which("emacs")
    if emacs is None:
        return None
    probe = subprocess.run(
        [
            emacs,
            "--batch",
            "--eval",
            # the test also drives markdown-mode's own keys (Debian: elpa-markdown-mode)
            '(princ (if (and (require \'eglot nil t) (require \'markdown-mode nil t)) "eglot" "none"))',
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return emacs if probe.stdout.strip().endswith("eglot") else None


def dgemma_sections(messages: list[dict]) -> list[dict]:
    """Every `dgemma` section the server received: initializationOptions, didChangeConfiguration
    pushes that carry one, and the client's answers to workspace/configuration."""
    asked = {m["id"] for m in messages if m.get("method") == "workspace/configuration"}
    sections = []
    for message in messages:
        if message.get("method") == "initialize":
            sections.append(message["params"]["initializationOptions"]["dgemma"])
        elif message.get("method") == "workspace/didChangeConfiguration":
            settings = message["params"]["settings"] or {}
            if "dgemma" in settings:
                sections.append(settings["dgemma"])
        elif "result" in message and message.get("id") in asked:
            sections.extend(message["result"])
    return sections


def test_eglot_completes_repairs_json_and_keeps_settings_set_after_require(
    tiny_model_dir, tmp_path
):
    emacs = emacs_with_eglot()
    if emacs is None:
        pytest.skip("no emacs with Eglot and markdown-mode: apt-get install emacs-nox elpa-eglot elpa-markdown-mode")
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    wire = tmp_path / "server-stdin.bin"
    settings = {
        "model": tiny_model_dir,
        "device": "cpu",
        "compile": False,
        "steps": 4,
        "maxMiddleTokens": 4,
        "debounceMs": 0,
    }
    job = {
        "config_dir": str(REPO / "editors" / "emacs"),
        "cmd": [
            sys.executable,
            str(TEE),
            str(wire),
            sys.executable,
            "-m",
            "dgemma_ls",
            "--log-level",
            "INFO",
        ],
        "settings": json.dumps(settings),
        "python_file": str(project / "area.py"),
        "python_text": PYTHON_TEXT,
        "python_line": 1,
        "json_file": str(project / "broken.json"),
        "json_text": BROKEN_JSON,
        "markdown_file": str(project / "notes.md"),
        "other_markdown_file": str(elsewhere / "other.md"),
        "result": str(tmp_path / "result.json"),
    }
    env = {**server_env(), "DGEMMA_EMACS_JOB": json.dumps(job), "HOME": str(tmp_path)}
    run = subprocess.run(
        [emacs, "--batch", "-l", str(DRIVER)],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    result = tmp_path / "result.json"
    assert result.exists(), (
        f"emacs exited {run.returncode} without a result:\n{run.stderr[-3000:]}"
    )
    report = json.loads(result.read_text())
    assert report["failure"] is None, f"{report['failure']}\n{run.stderr[-3000:]}"

    assert report["completions"] and all(c.strip() for c in report["completions"]), (
        report["completions"]
    )
    assert any(title.startswith("Repair JSON") for title in report["json_actions"]), (
        report["json_actions"]
    )
    assert json.loads(report["json_after"]) == {
        "name": "dgemma",
        "tags": ["a", "b"],
        "size": 3,
    }

    # the settings set after `require` are what the server got, every time, until
    # dgemma-eglot-apply-settings sent the changed ones
    sections = dgemma_sections(lsp_messages(wire))
    assert sections[0] == settings, sections
    assert sections[-1] == {**settings, "steps": 2}, sections
    assert all(
        section in (settings, {**settings, "steps": 2}) for section in sections
    ), sections

    # C-c . runs the code actions where dgemma-ls manages the buffer; C-c C-a stays markdown-mode's
    assert report["python_keys"] == report["json_keys"] == "eglot-code-actions"
    assert report["other_markdown_managed"] is False
    assert report["other_markdown_c_c_dot"] != "eglot-code-actions"
    assert (
        "eglot" not in report["managed_markdown_c_c_c_a"]
        and "eglot" not in report["other_markdown_c_c_c_a"]
    )
