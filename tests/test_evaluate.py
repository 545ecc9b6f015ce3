"""The infilling evaluator on synthetic tasks: program scoring in a sandbox, batch infilling
with a real tiny checkpoint, the fixed post-processing and the deterministic subset."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import torch

from engine.api import Engine
from engine.errors import EngineError
from engine.training.evaluate import (
    eval_infilling,
    infill_batch,
    postprocess,
    program,
    read_tasks,
    run_programs,
    stride_subset,
)
from engine.training.provenance import git
from engine.training.tiny import write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]

ADD = {"task_id": "SingleLineInfilling/Add/L0", "prompt": "def add(a, b):\n", "suffix": "",
       "canonical_solution": "    return a + b\n", "entry_point": "add",
       "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"}


def run(completion: str, task: dict = ADD, **kw):
    return run_programs([program(task, completion)], **kw)[0]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """A tiny model gains nothing from a second thread, and on a busy 2-core machine every op
    waits on a starved OpenMP thread (docs/benchmarks.md): 2 s per infill instead of 20 ms."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine.load(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny")))


def write_tasks(path: Path, tasks: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for t in tasks:
            f.write(json.dumps(t) + "\n")
    return path


def test_correct_completion_passes():
    assert run("    return a + b\n").passed


def test_wrong_completion_fails_with_the_error():
    outcome = run("    return a - b\n")
    assert outcome.status == "failed" and "AssertionError" in outcome.detail


def test_syntax_error_fails():
    assert run("    return a +\n").status == "failed"


def test_infinite_loop_times_out_and_fails():
    outcome = run("    while True:\n        pass\n", timeout=1.0)
    assert outcome.status == "timeout" and not outcome.passed


def test_program_runs_in_a_throwaway_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    places = (str(REPO.resolve()), str(tmp_path.resolve()))
    writes = (f"    import os\n    assert os.path.realpath(os.getcwd()) not in {places!r}\n"
              "    open('canary.txt', 'w').write('x')\n    return a + b\n")
    assert run(writes).passed
    assert not (REPO / "canary.txt").exists() and not (tmp_path / "canary.txt").exists()


def test_program_sees_no_proxy_settings(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("PYTHONPATH", "/nowhere")
    checks = "    import os\n    assert not {'HTTPS_PROXY', 'PYTHONPATH'} & set(os.environ)\n    return a + b\n"
    assert run(checks).passed


def test_memory_is_bounded():
    assert run("    x = bytearray(4 << 30)\n    return a + b\n").status == "failed"


def test_outcomes_keep_task_order_with_parallel_workers():
    completions = ["    return a + b\n", "    return 0\n"] * 3
    assert [o.passed for o in run_programs([program(ADD, c) for c in completions], workers=2)] == [True, False] * 3


@pytest.mark.parametrize("middle, kind, expected", [
    ("    return a + b\n    print(1)\n", "single-line", "    return a + b\n"),
    ("    return a + b", "single-line", "    return a + b\n"),
    ("", "single-line", ""),
    ("    x = 1\n    y = 2", "multi-line", "    x = 1\n    y = 2\n"),
    ("    x = 1\n", "multi-line", "    x = 1\n"),
    (" + b)\n    return", "span", " + b)\n    return"),
])
def test_postprocess(middle, kind, expected):
    assert postprocess(middle, kind) == expected


def test_stride_subset_is_deterministic_and_spread():
    tasks = list(range(100))
    assert stride_subset(tasks, 4) == [0, 25, 50, 75]
    assert stride_subset(tasks, None) == tasks and stride_subset(tasks, 500) == tasks


@pytest.mark.parametrize("name", ["tasks.jsonl", "tasks.jsonl.gz"])
def test_infill_batch_writes_one_line_per_task_in_order(engine, tmp_path, name):
    ids = ["SingleLineInfilling/B/L0", "MultiLineInfilling/A/L0_L1", "RandomSpanInfilling/C/0"]
    tasks = write_tasks(tmp_path / name, [{**ADD, "task_id": i} for i in ids])
    out = tmp_path / "out" / "completions.jsonl"
    assert infill_batch(engine, tasks, out, steps=2, max_middle_tokens=4) == 3
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["task_id"] for x in lines] == ids
    assert all(set(x) == {"task_id", "completion"} and isinstance(x["completion"], str) for x in lines)
    assert lines[0]["completion"].count("\n") <= 1


def test_read_tasks_names_the_bad_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(ADD) + "\n" + json.dumps({"task_id": "x"}) + "\n")
    with pytest.raises(Exception, match=r"t.jsonl:2: missing prompt, suffix"):
        read_tasks(path)


def test_eval_infilling_reports_model_and_empty_baseline(engine, tmp_path):
    """A benchmark folder of synthetic tasks: one the empty middle solves, one it cannot."""
    trivial = {**ADD, "task_id": "SingleLineInfilling/Pass/L0", "prompt": "def add(a, b):\n    return a + b\n",
               "suffix": ""}
    write_tasks(tmp_path / "HumanEval-SingleLineInfilling.jsonl.gz", [ADD, trivial])
    summary = eval_infilling(engine, "single-line", None, tmp_path, steps=2, max_middle_tokens=4,
                             heldout=None, out_json=tmp_path / "eval.json")
    assert summary["tasks"] == 2 and summary["baseline_pass@1"] == 0.5
    assert 0.0 <= summary["pass@1"] <= 1.0 and summary["tokens_per_forward"] is not None
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["tasks"] == 2 and written["kind"] == "eval-infilling"
    assert written["commit"] == git("rev-parse", "HEAD") and written["command"]
    assert len((tmp_path / "eval.completions.jsonl").read_text().splitlines()) == 2
    baseline = eval_infilling(None, "single-line", 1, tmp_path, steps=None, max_middle_tokens=4, heldout=None,
                              out_json=tmp_path / "baseline.json")
    assert baseline["tasks"] == 1 and baseline["pass@1"] == baseline["baseline_pass@1"] == 0.0
    assert os.path.exists(tmp_path / "baseline.json")


def test_eval_infilling_scores_the_causal_baseline_of_the_same_checkpoint(engine, tmp_path):
    write_tasks(tmp_path / "HumanEval-SingleLineInfilling.jsonl.gz", [ADD])
    summary = eval_infilling(engine, "single-line", None, tmp_path, steps=2, max_middle_tokens=4, heldout=None,
                             out_json=tmp_path / "causal.json", decoder="causal")
    assert summary["decoder"] == "causal" and summary["tasks"] == 1 and summary["tokens_per_forward"] in (0.0, 1.0)
    completion = json.loads((tmp_path / "causal.completions.jsonl").read_text())["completion"]
    assert completion.count("\n") <= 1  # one line at most: the single-line baseline stops at a newline


def test_the_benchmark_folder_comes_from_the_environment_else_beside_the_working_directory(tmp_path, monkeypatch):
    """Never a path inside the package: --benchmarks DIR, $DGEMMA_BENCHMARKS, ../shared/benchmarks."""
    tasks = tmp_path / "bench" / "humaneval-infilling"
    tasks.mkdir(parents=True)
    write_tasks(tasks / "HumanEval-SingleLineInfilling.jsonl.gz", [ADD])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DGEMMA_BENCHMARKS", raising=False)
    with pytest.raises(EngineError, match=r"shared/benchmarks/humaneval-infilling/.*DGEMMA_BENCHMARKS"):
        eval_infilling(None, "single-line", 1, None, out_json=tmp_path / "none.json")
    monkeypatch.setenv("DGEMMA_BENCHMARKS", str(tmp_path / "bench"))
    summary = eval_infilling(None, "single-line", 1, None)
    assert summary["tasks"] == 1 and (tmp_path / "runs/eval/single-line.baseline.json").is_file()


@pytest.mark.parametrize("hole, head, blind", [(1, 0, False), (3, 4, False), (3, 4, True)])
def test_commit_decoder_commits_the_decoders_first_position_argmax_token_by_token(engine, tmp_path, hole, head,
                                                                                   blind):
    """--decoder commit: each middle token is the argmax (never the noise token itself) of the
    engine's decoder at the first position of a canvas of `hole` noise tokens + the suffix's first
    `head` tokens (+ end of text when the suffix fits), attached after prompt + the middle so far,
    recomputed here from a fresh cache for every token; with `blind`, the argmax of that canvas's
    log-probabilities plus a one-position canvas's (its noise drawn after the hole's); eval-infilling
    scores it like the others."""
    from engine.model import KVCache
    from engine.training.evaluate import CommitDecoder

    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    decoder = CommitDecoder(engine, one_line=False, seed=3, hole=hole, head=head, blind=blind)
    middle = decoder.infill(prefix, suffix, max_middle_tokens=5)[0]
    tok, model = engine.tokenizer, engine.model
    prompt = [tok.bos_id] + tok.encode(prefix)
    suffix_ids = tok.encode(suffix)
    clamped = (suffix_ids[:head] + ([tok.eos_ids[0]] if len(suffix_ids) <= head else [])) if head else []
    noise = torch.Generator().manual_seed(3)
    stops = set(tok.eos_ids) | {t for t in (tok.pad_id, tok.filler_id) if t is not None}
    want: list[int] = []
    with torch.no_grad():
        while len(want) < 5:
            cache = KVCache(engine.config, 1, model.dtype, model.device)
            model.encode(torch.tensor([prompt + want]), cache)
            noisy = torch.randint(0, model.config.vocab_size, (1, hole), generator=noise)
            canvas = torch.cat([noisy, torch.tensor([clamped], dtype=torch.long)], 1)
            logits = model.decoder_logits(canvas, model.decoder_context(cache, 1), cache.length)[0, 0]
            logits[noisy[0, 0]] = float("-inf")
            if blind:
                alone = torch.randint(0, model.config.vocab_size, (1, 1), generator=noise)
                other = model.decoder_logits(alone, model.decoder_context(cache, 1), cache.length)[0, 0]
                other[alone[0, 0]] = float("-inf")
                logits = torch.log_softmax(logits, -1) + torch.log_softmax(other, -1)
            if int(logits.argmax()) in stops:
                break
            want.append(int(logits.argmax()))
    assert len(want) >= 2  # the cache-append path is exercised
    assert middle.text == tok.decode(want) and middle.tokens == len(want)

    write_tasks(tmp_path / "HumanEval-SingleLineInfilling.jsonl.gz", [ADD])
    summary = eval_infilling(engine, "single-line", None, tmp_path, steps=2, max_middle_tokens=4, heldout=None,
                             out_json=tmp_path / "commit.json", decoder="commit",
                             decoder_options={"hole": hole, "head": head, "blind": blind})
    assert summary["decoder"] == "commit" and summary["decoder_options"] == {"hole": hole, "head": head, "blind": blind}


def test_syntax_pick_takes_the_best_candidate_that_adds_no_syntax_error():
    """--candidates: the middle dgemma-ls would insert: the first (best score first) that leaves the
    program with no more tree-sitter errors than the empty middle; the first when none does."""
    from engine.api import Infill
    from engine.training.evaluate import syntax_pick

    task = {**ADD, "prompt": "def add(a, b):\n", "suffix": "\nprint(add(1, 2))\n"}

    def cands(*texts):
        return [Infill(t, 1, 1, 1.0, 0.0, -i, 1) for i, t in enumerate(texts)]

    assert syntax_pick(task, cands("    return (a +", "    return a + b"), "single-line").text == "    return a + b"
    assert syntax_pick(task, cands("    return a - b", "    return a + b"), "single-line").text == "    return a - b"
    assert syntax_pick(task, cands("    return (a", "    return [b"), "single-line").text == "    return (a"


def test_eval_infilling_scores_the_picked_candidate_and_says_so(engine, tmp_path):
    write_tasks(tmp_path / "HumanEval-SingleLineInfilling.jsonl.gz", [ADD])
    summary = eval_infilling(engine, "single-line", None, tmp_path, steps=2, max_middle_tokens=4, heldout=None,
                             out_json=tmp_path / "picked.json", candidates=3)
    assert summary["candidates"] == 3 and summary["pick"] == "dgemma-ls syntax check"
    with pytest.raises(EngineError, match="--candidates needs"):
        eval_infilling(engine, "single-line", None, tmp_path, max_middle_tokens=4, heldout=None,
                       out_json=tmp_path / "causal.json", decoder="causal", candidates=3)
