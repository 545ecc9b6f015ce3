"""A short run of benchmarks/lsp_fuzz.py against the real server over stdio (issue 16): a few
hundred generated messages (malformed and mistyped requests, bad settings, binary and deeply
nested documents, big tables, stale versions), then inline completions typed keystroke by
keystroke with 20 % cancelled. Every request is answered, nothing crashes, no traceback or
error popup reaches the client, no edit is stale."""

import asyncio

import pytest

from benchmarks import lsp_fuzz

pytestmark = pytest.mark.slow


def test_a_short_fuzz_and_soak_answers_every_request(tmp_path, tiny_model_dir):
    args = lsp_fuzz.parse_args([
        "--model", tiny_model_dir, "--messages", "300", "--completions", "40", "--load-completions", "0",
        "--huge-mb", "0.3", "--no-framing", "--drain", "120",
        "--out", str(tmp_path / "lsp_fuzz.json"), "--logs", str(tmp_path),
    ])
    report = asyncio.run(lsp_fuzz.main(args))
    totals = {key: value for key, value in report["totals"].items() if key != "messages_sent"}
    assert totals == {
        "unanswered": 0,
        "crashes": 0,
        "show_message_errors": 0,
        "tracebacks_to_client": 0,
        "stale_edits": 0,
        "malformed_replies": 0,
        "responses_without_request": 0,
    }, (report["show_message_errors_top"], report["tracebacks_sample"], report["stale_sample"],
        report["responses_without_request_sample"], report["fuzz"]["unanswered_by_method"])
    assert report["fuzz"]["requests_with_id"] > 100
    assert report["soak"]["outcomes"].get("cancelled", 0) > 0
    assert report["exit"] == {"alive_before_shutdown": True, "shutdown_answered": True, "exit_code": 0}
