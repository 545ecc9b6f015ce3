"""Infilling evaluation: fill HumanEval-infilling tasks, run the programs, report pass@1.

Owns task reading, the fixed post-processing applied to every model's middles, the sandboxed
runner (one subprocess per program: isolated interpreter, throwaway cwd, no proxy settings,
bounded memory/CPU/file size, wall-clock timeout) and exact match on held-out corpus holes.
Reads the benchmark files where they lie (`--benchmarks DIR`, default `$DGEMMA_BENCHMARKS`, else
../shared/benchmarks from the working directory); never copies them.

    dgemma eval-infilling --benchmark single-line --limit 100 --model runs/default/model
    dgemma infill-batch --tasks tasks.jsonl.gz --out completions.jsonl
"""

from __future__ import annotations

import difflib
import gzip
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import EngineError
from .provenance import stamp

CORPUS_DIR = Path("data/corpus")  # relative to the working directory, as every output under runs/
EVAL_DIR = Path("runs/eval")
BENCHMARKS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
# task_id prefix -> how the hole is cut; decides the post-processing
TASK_KINDS = {"SingleLineInfilling/": "single-line", "MultiLineInfilling/": "multi-line"}

TIMEOUT_S = 5.0
MEMORY_BYTES = 1 << 30
MAX_OUTPUT_BYTES = 16 << 20
WORKERS = 2


# ---------------------------------------------------------------------------- tasks and middles

def read_tasks(path: str | Path) -> list[dict]:
    """HumanEval-infilling layout (task_id, prompt = prefix, suffix, ...), .jsonl or .jsonl.gz."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"{path}: no such tasks file")
    opener = gzip.open if path.suffix == ".gz" else open
    tasks = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                task = json.loads(line)
            except json.JSONDecodeError as e:
                raise EngineError(f"{path}:{n}: not JSON ({e})") from None
            missing = {"task_id", "prompt", "suffix"} - task.keys()
            if missing:
                raise EngineError(f"{path}:{n}: missing {', '.join(sorted(missing))}")
            tasks.append(task)
    return tasks


def stride_subset(tasks: list, limit: int | None) -> list:
    """`limit` tasks at a fixed stride (task i * len // limit): spread over every problem,
    where the first N would cover only the first few HumanEval problems."""
    if limit is None or limit >= len(tasks):
        return list(tasks)
    if limit < 1:
        raise EngineError(f"--limit must be >= 1, got {limit}")
    return [tasks[i * len(tasks) // limit] for i in range(limit)]


def task_kind(task_id: str) -> str:
    return next((kind for prefix, kind in TASK_KINDS.items() if task_id.startswith(prefix)), "span")


def postprocess(middle: str, kind: str) -> str:
    """The same light clean-up for every model. In line tasks the prefix ends at a line start and
    the suffix starts at the next one, so a middle is whole lines ending in a newline:
    single-line keeps the first line (+ "\\n"), multi-line gets a missing final "\\n".
    Random spans cut anywhere and are left as they are. An empty middle stays empty."""
    if not middle or kind == "span":
        return middle
    if kind == "single-line":
        return middle.split("\n", 1)[0] + "\n"
    return middle if middle.endswith("\n") else middle + "\n"


@dataclass
class Filled:
    task_id: str
    completion: str  # post-processed
    raw: str  # the engine's best middle
    tokens: int
    tokens_per_forward: float
    ms: float


def _one_at_a_time(engine, prefix: str, *, reserve: int, max_middle_tokens: int, one_line: bool, stops: set[int],
                   next_token) -> tuple[list[int], int]:
    """bos + prefix (cut to leave `reserve` positions) encoded into a fresh cache, then a middle one
    token at a time: `next_token(cache, hidden)` (hidden: the last encode's output) picks it and it is
    encoded into the cache, until a stop id, a newline (`one_line`) or `max_middle_tokens`.
    Returns the middle and how many tokens were picked (the stop included)."""
    import torch

    from ..model import KVCache

    tok, model = engine.tokenizer, engine.model
    ids = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(prefix)
    ids = engine.fit_prompt(ids, engine.config.max_position_embeddings - reserve)
    cache = KVCache(engine.config, 1, model.dtype, model.device)
    hidden = model.encode(torch.tensor([ids], device=model.device), cache)
    out: list[int] = []
    picks = 0
    while len(out) < max_middle_tokens:
        token = next_token(cache, hidden)
        picks += 1
        if token in stops:
            break
        out.append(token)
        if one_line and "\n" in tok.decode(out):
            break
        hidden = model.encode(torch.tensor([[token]], device=model.device), cache)
    return out, picks


class CausalBaseline:
    """The same checkpoint decoded left to right by its causal encoder (trained with the next-token
    loss beside the diffusion loss): greedy from the prefix alone, the suffix unseen, until a
    newline (`one_line`), end of text or `max_middle_tokens`. The autoregressive baseline of equal
    size and compute that the comparison needs (it is the same weights), with the engine's
    `infill` signature so `fill` and `eval_infilling` score it unchanged. Evaluation only."""

    def __init__(self, engine, *, one_line: bool):
        self.engine, self.one_line = engine, one_line
        self.root, self.generation = engine.root, engine.generation

    def infill(self, prefix: str, suffix: str, *, max_middle_tokens: int = 48, steps=None, one_line=None):
        import torch

        with torch.no_grad():
            return self._greedy(prefix, max_middle_tokens)

    def _greedy(self, prefix: str, max_middle_tokens: int):
        from ..api import Infill

        t0 = time.perf_counter()
        tok, model = self.engine.tokenizer, self.engine.model
        stops = set(tok.eos_ids) | ({tok.pad_id} if tok.pad_id is not None else set())
        out, _ = _one_at_a_time(self.engine, prefix, reserve=max_middle_tokens, max_middle_tokens=max_middle_tokens,
                                one_line=self.one_line, stops=stops,
                                next_token=lambda cache, hidden: int(model.logits(hidden[:, -1]).argmax(-1)))
        text = tok.decode(out)
        return [Infill(text, len(out), len(out), 1.0 if out else 0.0, (time.perf_counter() - t0) * 1000, 0.0, 0)]


class CommitDecoder:
    """The engine's committing infilling (GenerationConfig.commit_hole, Engine._infill_committing)
    with the hole and suffix head given here, whatever the checkpoint's generation config says:
    each pass a canvas of `hole` noise positions after the cache, then the suffix's first `head`
    tokens clamped; the first position's argmax is committed; one line for single-line tasks. hole
    1, head 0 (the default): one-position canvases, the suffix unseen, the decoder's left neighbour
    always in the KV cache (what `--point-holes` trains). `blind`: also the one-position canvas, the
    two views' log-probabilities summed (GenerationConfig.commit_blind). The noise token is never picked."""

    def __init__(self, engine, *, one_line: bool, seed: int = 0, hole: int = 1, head: int = 0, blind: bool = False):
        self.engine, self.one_line, self.seed, self.hole, self.head = engine, one_line, seed, hole, head
        self.blind = blind
        self.root, self.generation = engine.root, engine.generation

    def infill(self, prefix: str, suffix: str, *, max_middle_tokens: int = 48, steps=None, one_line=None,
               num_candidates: int = 1):
        gen = self.engine.generation
        saved = gen.commit_hole, gen.commit_head, gen.commit_blind, gen.ignore_noise_tokens
        gen.commit_hole, gen.commit_head, gen.commit_blind = self.hole, self.head, self.blind
        gen.ignore_noise_tokens = True
        try:
            return self.engine.infill(prefix, suffix, max_middle_tokens=max_middle_tokens, seed=self.seed,
                                      one_line=self.one_line, num_candidates=num_candidates)
        finally:
            gen.commit_hole, gen.commit_head, gen.commit_blind, gen.ignore_noise_tokens = saved


BASELINES = {"causal": CausalBaseline, "commit": CommitDecoder}  # eval-infilling --decoder, beside "diffusion"


def syntax_pick(task: dict, candidates: list, kind: str):
    """What dgemma-ls would insert from several candidates (its fill action's rule): the first, in
    the order the engine gives them, that does not leave the program with more tree-sitter syntax
    errors than the empty middle does; the first when none qualifies."""
    from dgemma_ls.syntax import SyntaxTree

    def errors(middle: str) -> int:
        return SyntaxTree(task["prompt"] + middle + task["suffix"], "python").error_count()

    baseline = errors("")
    return next((c for c in candidates if errors(postprocess(c.text, kind)) <= baseline), candidates[0])


def fill(engine, tasks: list[dict], *, steps: int | None, max_middle_tokens: int, kind: str | None = None,
         label: str = "infill", one_line: bool = False, candidates: int = 1) -> Iterator[Filled]:
    """Best middle per task, post-processed as `kind` (default: from the task id); progress
    (n/N, ms/task) on stderr. `one_line`: a committing engine may stop at the end of its first
    line (single-line tasks; the baselines keep their own setting). `candidates` > 1: that many
    asked for, the middle picked as the language server would (syntax_pick)."""
    total, spent = len(tasks), 0.0
    every = 1 if sys.stderr.isatty() else max(1, total // 20)
    for n, task in enumerate(tasks, 1):
        t0 = time.perf_counter()
        try:
            found = engine.infill(task["prompt"], task["suffix"], max_middle_tokens=max_middle_tokens, steps=steps,
                                  one_line=one_line, **({"num_candidates": candidates} if candidates > 1 else {}))
            best = syntax_pick(task, found, kind or task_kind(task["task_id"])) if candidates > 1 else found[0]
            raw, tokens, tpf = best.text, best.tokens, best.tokens_per_forward
        except EngineError as e:  # one bad task must not sink a long run; it scores as empty
            print(f"\n{label}: {task['task_id']}: {e}", file=sys.stderr)
            raw, tokens, tpf = "", 0, 0.0
        ms = (time.perf_counter() - t0) * 1000
        spent += ms
        yield Filled(task["task_id"], postprocess(raw, kind or task_kind(task["task_id"])), raw, tokens, tpf, ms)
        if n % every == 0 or n == total:
            end = "\r" if sys.stderr.isatty() and n < total else "\n"
            sys.stderr.write(f"{label} {n}/{total}  {ms:.0f} ms/task (mean {spent / n:.0f}){end}")
            sys.stderr.flush()


def infill_batch(engine, tasks_path, out_path, *, steps: int | None = None, max_middle_tokens: int = 48) -> int:
    """Write one {"task_id", "completion"} line per task, in task order, flushed as it goes."""
    tasks = read_tasks(tasks_path)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as out:
        for filled in fill(engine, tasks, steps=steps, max_middle_tokens=max_middle_tokens):
            out.write(json.dumps({"task_id": filled.task_id, "completion": filled.completion}) + "\n")
            out.flush()
    return len(tasks)


# ------------------------------------------------------------------------------------- running

def program(task: dict, completion: str) -> str:
    return (task["prompt"] + completion + task["suffix"] + "\n" + task["test"]
            + f"\ncheck({task['entry_point']})\n")


@dataclass
class Outcome:
    status: str  # "passed" | "failed" | "timeout"
    detail: str = ""  # last line of stderr when the program failed

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _sandbox_env(home: str) -> dict[str, str]:
    """A fresh environment: no proxy variables (so no way out through one), no PYTHON* paths."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "TMPDIR": home,
            "LANG": "C.UTF-8", "no_proxy": "*", "NO_PROXY": "*", "OMP_NUM_THREADS": "1"}


def _limits(timeout: float, memory: int):
    cpu = int(timeout) + 2

    def apply():  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_OUTPUT_BYTES, MAX_OUTPUT_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


class _Run:
    """One program in its own session, in a throwaway directory that goes away with it."""

    def __init__(self, source: str, timeout: float, memory: int):
        self.dir = tempfile.TemporaryDirectory(prefix="dgemma-eval-")
        root = Path(self.dir.name)
        (root / "program.py").write_text(source, encoding="utf-8")
        self.stderr = open(root / "stderr", "w+b")
        self.deadline = time.monotonic() + timeout
        # the runner starts no Python threads, so preexec_fn is safe here; a new session lets a
        # timeout kill the program's children too
        self.proc = subprocess.Popen([sys.executable, "-I", "program.py"], cwd=root, env=_sandbox_env(str(root)),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
                                     preexec_fn=_limits(timeout, memory), start_new_session=True)

    def poll(self) -> Outcome | None:
        code = self.proc.poll()
        if code is None and time.monotonic() < self.deadline:
            return None
        if code is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            outcome = Outcome("timeout")
        else:
            self.stderr.seek(0)
            lines = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
            outcome = Outcome("passed") if code == 0 else Outcome("failed", lines[-1] if lines else f"exit {code}")
            try:  # a program that forked and exited must not leave its children behind
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stderr.close()
        self.dir.cleanup()
        return outcome


def run_programs(sources: list[str], *, workers: int = WORKERS, timeout: float = TIMEOUT_S,
                 memory: int = MEMORY_BYTES) -> list[Outcome]:
    """Run each program in its own sandboxed subprocess, at most `workers` at a time."""
    outcomes: list[Outcome | None] = [None] * len(sources)
    pending = list(enumerate(sources))[::-1]
    running: dict[int, _Run] = {}
    while pending or running:
        while pending and len(running) < workers:
            i, source = pending.pop()
            running[i] = _Run(source, timeout, memory)
        for i, run in list(running.items()):
            outcome = run.poll()
            if outcome is not None:
                outcomes[i] = outcome
                del running[i]
        if running:
            time.sleep(0.005)
    return outcomes


# ----------------------------------------------------------------------------- held-out holes

def heldout_holes(corpus: str | Path, n: int, *, seed: int = 0, window: int = 1500,
                  max_line_chars: int = 160, lines: int = 1) -> list[dict]:
    """`n` holes of `lines` consecutive non-blank lines (together at most `max_line_chars`; longer
    would not fit a hole) from held-out python files: documents in a seeded random order, one
    seeded random spot each, with up to `window` characters of prefix before it and suffix after it."""
    from .corpus import iter_documents

    docs = [d["text"] for d in iter_documents(str(corpus), "heldout") if d.get("language") == "python"]
    rng = random.Random(seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    holes = []
    for index in order:
        if len(holes) == n:
            break
        text_lines = docs[index].splitlines(keepends=True)
        starts = [0]
        for line in text_lines:
            starts.append(starts[-1] + len(line))
        candidates = [i for i in range(len(text_lines) - lines + 1)
                      if all(line.strip() for line in text_lines[i:i + lines])
                      and starts[i + lines] - starts[i] <= max_line_chars]
        if not candidates:
            continue
        i = rng.choice(candidates)
        text = docs[index]
        holes.append({"task_id": f"heldout/{index}/L{i}", "prompt": text[max(0, starts[i] - window):starts[i]],
                      "middle": "".join(text_lines[i:i + lines]),
                      "suffix": text[starts[i + lines]:starts[i + lines] + window]})
    return holes


def eval_heldout(engine, n: int, *, steps: int | None, max_middle_tokens: int,
                 corpus: str | Path = CORPUS_DIR) -> dict:
    """Exact match and edit similarity (both with trailing whitespace stripped) on single-line
    held-out holes. Edit similarity is difflib's ratio, 2·matches / (len(a) + len(b)) in [0, 1]
    (CodeXGLUE's line-completion "Edit Sim" on characters): graded where exact match and pass@1
    sit at the floor."""
    holes = heldout_holes(corpus, n)
    hits, similarity, ms, tpf = 0, [], [], []
    for hole, filled in zip(holes, fill(engine, holes, steps=steps, max_middle_tokens=max_middle_tokens,
                                        kind="single-line", label="heldout", one_line=True)):
        got, want = filled.completion.rstrip(), hole["middle"].rstrip()
        hits += got == want
        similarity.append(difflib.SequenceMatcher(None, got, want, autojunk=False).ratio())
        ms.append(filled.ms)
        tpf.append(filled.tokens_per_forward)
    return {"holes": len(holes), "exact_match": hits / max(len(holes), 1),
            "edit_similarity": statistics.fmean(similarity) if similarity else None, **_speed(ms, tpf)}


# ---------------------------------------------------------------------------------- reporting

def benchmarks_root() -> Path:
    """The folder holding humaneval-infilling/: $DGEMMA_BENCHMARKS, else ../shared/benchmarks
    from the working directory (the benchmark files live beside a checkout, never in it)."""
    return Path(os.environ.get("DGEMMA_BENCHMARKS") or Path("..") / "shared" / "benchmarks")


def _speed(ms: list[float], tpf: list[float]) -> dict:
    if not ms:
        return {"tokens_per_forward": None, "ms_p50": None, "ms_mean": None}
    return {"tokens_per_forward": statistics.fmean(tpf), "ms_p50": statistics.median(ms),
            "ms_mean": statistics.fmean(ms)}


def _checkpoint_step(root: Path | None) -> int | None:
    """The training step when the model sits in a run directory (runs/NAME/model)."""
    state = root.parent / "train_state.json" if root is not None else None
    if state is None or not state.is_file():
        return None
    try:
        return json.loads(state.read_text()).get("step")
    except (json.JSONDecodeError, OSError):
        return None


def _fmt(x, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def markdown(summary: dict) -> str:
    s = summary
    rows = ["| benchmark | tasks | pass@1 | empty-completion pass@1 | timeouts | tokens/forward | ms/task p50 | ms/task mean |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            (f"| {s['benchmark']} | {s['tasks']} | {s['pass@1']:.3f} | {s['baseline_pass@1']:.3f} | {s['timeouts']} | "
             f"{_fmt(s['tokens_per_forward'], '.2f')} | {_fmt(s['ms_p50'], '.0f')} | {_fmt(s['ms_mean'], '.0f')} |")]
    held = s.get("heldout")
    if held:
        rows += ["", ("| held-out corpus holes | holes | exact match | edit similarity | tokens/forward "
                      "| ms/task p50 | ms/task mean |"),
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
                 (f"| single line, python | {held['holes']} | {held['exact_match']:.3f} | "
                  f"{_fmt(held.get('edit_similarity'), '.3f')} | "
                  f"{_fmt(held['tokens_per_forward'], '.2f')} | {_fmt(held['ms_p50'], '.0f')} | "
                  f"{_fmt(held['ms_mean'], '.0f')} |")]
    return "\n".join(rows)


def eval_infilling(engine, benchmark: str, limit: int | None, benchmarks_dir=None, *, steps: int | None = None,
                   max_middle_tokens: int = 48, heldout=None, out_json=None, workers: int = WORKERS,
                   timeout: float = TIMEOUT_S, decoder: str = "diffusion", corpus: str | Path = CORPUS_DIR,
                   command: str | None = None, decoder_options: dict | None = None,
                   candidates: int = 1) -> dict:
    """pass@1 of `engine` (None: the empty completion) on a HumanEval-infilling benchmark, beside
    the empty-completion baseline from the same run. `decoder="causal"` scores the same checkpoint's
    left-to-right baseline (CausalBaseline) instead; `candidates` > 1 scores the middle dgemma-ls
    would pick from that many (syntax_pick). Prints a Markdown table; writes the summary to
    `out_json` (default runs/eval/<benchmark>[.baseline].json, stamped with the commit and command
    line) with completions beside it; `corpus` holds the held-out split for `heldout`."""
    if benchmark not in BENCHMARKS:
        raise EngineError(f"unknown benchmark {benchmark!r}; use one of {', '.join(BENCHMARKS)}")
    path = Path(benchmarks_dir or benchmarks_root() / "humaneval-infilling") / BENCHMARKS[benchmark]
    if not path.is_file():
        raise EngineError(f"{path}: no such benchmark file (pass --benchmarks DIR, the folder holding "
                          f"humaneval-infilling/, or set DGEMMA_BENCHMARKS)")
    every_task = read_tasks(path)
    tasks = stride_subset(every_task, limit)
    model_engine = engine
    if engine is None:
        filled = [Filled(t["task_id"], "", "", 0, 0.0, 0.0) for t in tasks]
    else:
        if decoder in BASELINES:
            engine = BASELINES[decoder](engine, one_line=benchmark == "single-line", **(decoder_options or {}))
        engine.infill("def f(x):\n", "\n", max_middle_tokens=4, steps=2)  # first-call set-up, not timed
        if candidates > 1 and decoder == "causal":
            raise EngineError("--candidates needs a decoder that gives several (diffusion or commit)")
        filled = list(fill(engine, tasks, steps=steps, max_middle_tokens=max_middle_tokens,
                           one_line=benchmark == "single-line", candidates=candidates))
    t0 = time.perf_counter()
    sources = [program(t, f.completion) for t, f in zip(tasks, filled)]
    if engine is not None:  # the empty-completion baseline, scored beside the model in the same run
        sources += [program(t, "") for t in tasks]
    outcomes = run_programs(sources, workers=workers, timeout=timeout)
    model_outcomes, baseline_outcomes = outcomes[:len(tasks)], outcomes[-len(tasks):] if tasks else []
    print(f"scored {len(outcomes)} programs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    root = Path(engine.root) if engine is not None else None
    summary = {
        "benchmark": benchmark, "file": str(path), "model": str(root) if root else None,
        "checkpoint_step": _checkpoint_step(root), "tasks": len(tasks), "limit": limit,
        "subset": "all" if len(tasks) == len(every_task) else f"stride {len(every_task)}/{len(tasks)}",
        "steps": steps if steps is not None else (engine.generation.max_denoising_steps if engine else None),
        "max_middle_tokens": max_middle_tokens, "decoder": decoder, **({"decoder_options": decoder_options}
                                                                       if decoder_options else {}),
        **({"candidates": candidates, "pick": "dgemma-ls syntax check"} if candidates > 1 else {}),
        "pass@1": sum(o.passed for o in model_outcomes) / max(len(tasks), 1),
        "baseline_pass@1": sum(o.passed for o in baseline_outcomes) / max(len(tasks), 1),
        "timeouts": sum(o.status == "timeout" for o in model_outcomes),
        **(_speed([f.ms for f in filled], [f.tokens_per_forward for f in filled]) if engine is not None
           else _speed([], [])),
        "heldout": None,
    }
    if heldout and engine is not None:
        held = BASELINES[decoder](model_engine, one_line=True, **(decoder_options or {})) if decoder in BASELINES \
            else engine
        summary["heldout"] = eval_heldout(held, int(heldout), steps=steps, max_middle_tokens=max_middle_tokens,
                                          corpus=corpus)
    print(markdown(summary))

    out_json = Path(out_json) if out_json else EVAL_DIR / f"{benchmark}{'.baseline' if engine is None else ''}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({**stamp(command), "kind": "eval-infilling", **summary}, indent=2) + "\n")
    with open(out_json.with_suffix(".completions.jsonl"), "w", encoding="utf-8") as f:
        for fl, outcome in zip(filled, model_outcomes):
            f.write(json.dumps({**asdict(fl), **asdict(outcome)}) + "\n")
    print(f"summary: {out_json}", file=sys.stderr)
    return summary
