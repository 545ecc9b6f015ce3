"""The VS Code extension end to end without VS Code: node runs editors/vscode/extension.js with the
real vscode-languageclient (`npm install` in editors/vscode) and the real server, behind the
stand-in `vscode` module of tests/vscode_harness.js. The server's stdin is copied to a file
(tests/lsp_tee.py), so the settings are checked as the server received them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lsp_support import REPO
from lsp_tee import lsp_messages

HARNESS = Path(__file__).with_name("vscode_harness.js")
TEE = Path(__file__).with_name("lsp_tee.py")
EXTENSION = REPO / "editors" / "vscode"
PYTHON_TEXT = (
    "def area(width, height):\n    # multiply the width and the height\n    return \n"
)

pytestmark = pytest.mark.slow


def run_extension(tmp_path: Path, settings: dict, **job) -> tuple[dict, list[dict]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node binary: the VS Code extension test needs Node.js")
    if not (EXTENSION / "node_modules" / "vscode-languageclient").is_dir():
        pytest.skip(
            "vscode-languageclient is not installed: run `npm install` in editors/vscode"
        )
    wire = tmp_path / "server-stdin.bin"
    server = [sys.executable, "-m", "dgemma_ls", "--log-level", "INFO"]
    job = {
        "extension": str(EXTENSION / "extension.js"),
        "settings": {
            "dgemma.serverPath": sys.executable,
            "dgemma.serverArgs": [str(TEE), str(wire), *server],
            **settings,
        },
        "timeout_ms": 120_000,
        **job,
    }
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "HOME": str(tmp_path),
    }
    run = subprocess.run(
        [node, str(HARNESS), "run"],
        input=json.dumps(job),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.stdout, (
        f"the harness printed nothing (exit {run.returncode}):\n{run.stderr[-3000:]}"
    )
    report = json.loads(run.stdout)
    return report, lsp_messages(wire)


def settings_received(messages: list[dict]) -> list[dict]:
    """The `dgemma` section of initialize and of every didChangeConfiguration, in order."""
    sections = []
    for message in messages:
        if message.get("method") == "initialize":
            sections.append(message["params"]["initializationOptions"]["dgemma"])
        elif message.get("method") == "workspace/didChangeConfiguration":
            sections.append(message["params"]["settings"]["dgemma"])
    return sections


def test_ghost_text_provider_is_registered_and_false_and_unset_settings_reach_the_server(
    tiny_model_dir, tmp_path
):
    settings = {
        "dgemma.model": tiny_model_dir,
        "dgemma.device": "cpu",
        "dgemma.dtype": "auto",
        "dgemma.compile": False,
        "dgemma.steps": 2,
        "dgemma.entropyBound": None,
        "dgemma.maxMiddleTokens": 4,
        "dgemma.enabledLanguages": [],
        "editor.inlineSuggest.enabled": True,
    }
    report, messages = run_extension(
        tmp_path,
        settings,
        documents=[
            {
                "path": str(tmp_path / "area.py"),
                "languageId": "python",
                "text": PYTHON_TEXT,
            }
        ],
        change={
            "dgemma.steps": None
        },  # the user clears a setting: the server must get its default back
    )
    assert report.get("failure") is None, (
        f"{report['failure']}\noutput: {report['output'][-40:]}"
    )

    # ghost text: vscode-languageclient registered an inline completion provider (9.x did so only
    # after registerProposedFeatures()) and the provider returned the server's items
    assert "registerInlineCompletionItemProvider" in report["calls"], report["calls"]
    assert report["completions"] and report["completions"][0]["items"], report[
        "completions"
    ]
    # VS Code's InlineCompletionTriggerKind.Invoke (0) went out as LSP's Invoked (1); 9.x sent 0,
    # which the server rejects as invalid params
    requests = [
        m for m in messages if m.get("method") == "textDocument/inlineCompletion"
    ]
    assert [r["params"]["context"]["triggerKind"] for r in requests] == [1]

    sent = settings_received(messages)
    expected = {
        "model": tiny_model_dir,
        "device": "cpu",
        "dtype": "auto",
        "compile": False,
        "maxMiddleTokens": 4,
        "enabledLanguages": [],
    }
    assert sent[0] == {**expected, "steps": 2}  # initialize
    assert sent[1] == {
        **expected,
        "steps": 2,
    }  # the didChangeConfiguration sent at start-up
    assert sent[-1] == expected  # after dgemma.steps was cleared
    # one load, never compiled: the start-up didChangeConfiguration did not flip compile back on
    loads = [
        line for line in report["output"] if line.startswith("[info] dgemma: loading")
    ]
    assert len(loads) == 1 and "compiling" not in loads[0], loads
    assert report["popups"] == []


def test_a_missing_server_gives_one_popup(tmp_path):
    report, _ = run_extension(
        tmp_path,
        {
            "dgemma.serverPath": str(tmp_path / "no-such-dgemma-ls"),
            "dgemma.serverArgs": [],
        },
        expect_start_failure=True,
    )
    assert report.get("failure") is None, report["failure"]
    assert len(report["popups"]) == 1, report["popups"]
    assert "dgemma.serverPath" in report["popups"][0]["message"]
