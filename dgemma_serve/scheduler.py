"""The one thread that runs the engine for every HTTP client, and the bounded queue in front of it.

Infill jobs waiting when the thread comes free are denoised together as one batch (up to
`max_batch` holes, engine.batch); generation jobs run one at a time. A job whose client went away
is dropped from the queue, and a running batch stops once all of its jobs are cancelled. Knows
the engine and threads, not HTTP.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from engine import Cancelled, Engine
from engine.batch import Hole, PromptCaches, infill_batch

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More jobs waiting than the queue holds: the client should retry later."""


@dataclass
class Job:
    """Work for the engine thread. `run` is None for infill jobs (batched by the thread itself)."""

    hole: Hole | None = None
    run: Callable[[Engine, Callable[[], bool]], Any] | None = None
    steps: int | None = None
    on_step: Callable[[int, int, str], None] | None = None  # (step, max_steps, draft), on the engine thread
    deadline: float | None = None  # time.monotonic(): past it, the job lets its batch stop early
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        self.cancelled.set()

    def finished_waiting(self) -> bool:
        return self.cancelled.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)


@dataclass
class InfillOutcome:
    text: str
    tokens: int
    score: float
    prompt_tokens: int
    encoded_tokens: int
    truncated: bool
    batch_size: int
    ms: float
    prefill_ms: float = 0.0
    timed_out: bool = False  # t_max_predict_ms ran out: the text is the draft of the last step


class Scheduler:
    def __init__(self, engine: Engine, *, max_queue: int = 32, max_batch: int = 8, cache_clients: int = 8,
                 steps: int | None = None, seed: int = 0):
        self.engine = engine
        self.steps, self.seed = steps, seed  # defaults: a job's own steps win
        self.max_queue, self.max_batch = max_queue, max_batch
        self.caches = PromptCaches(cache_clients)
        self._queue: list[Job] = []
        self._ready = threading.Condition()
        self._closing = False
        self.batches = 0  # batches run, and holes in them: /health reports both
        self.batched_holes = 0
        self.cancelled = 0  # jobs that ended because their client went away
        self._thread = threading.Thread(target=self._loop, name="dgemma-serve-engine", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        with self._ready:
            return len(self._queue)

    def submit(self, *jobs: Job) -> None:
        """Queue jobs together (several candidates of one request land in one batch), or none of them."""
        with self._ready:
            self._queue = [j for j in self._queue if not j.cancelled.is_set()]
            if self._closing:
                raise QueueFull("the server is shutting down")
            if len(self._queue) + len(jobs) > self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting (the queue holds {self.max_queue})")
            self._queue.extend(jobs)
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closing = True
            for job in self._queue:
                job.cancel()
            self._ready.notify()
        self._thread.join(timeout=30)

    def _take(self) -> list[Job]:
        """The next job, with the infill jobs of the same step count waiting behind it (a batch)."""
        with self._ready:
            while True:
                self._queue = [j for j in self._queue if not j.cancelled.is_set()]
                if self._queue or self._closing:
                    break
                self._ready.wait()
            if not self._queue:
                return []
            first = self._queue.pop(0)
            if first.hole is None:
                return [first]
            batch = [first]
            for job in list(self._queue):
                if len(batch) >= self.max_batch:
                    break
                if job.hole is not None and job.steps == first.steps:
                    self._queue.remove(job)
                    batch.append(job)
            return batch

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                return
            if jobs[0].hole is None:
                self._run_one(jobs[0])
            else:
                self._run_batch(jobs)

    def _run_one(self, job: Job) -> None:
        try:
            _settle(job.future, job.run(self.engine, job.cancelled.is_set))
        except Cancelled as error:
            self.cancelled += 1
            _settle(job.future, error=error)
        except BaseException as error:  # noqa: BLE001 (the caller gets it; the thread lives on)
            _settle(job.future, error=error)

    def _run_batch(self, jobs: list[Job]) -> None:
        def should_stop() -> bool:
            return all(j.finished_waiting() for j in jobs)

        latest: list[str | None] = [None] * len(jobs)  # each hole's draft after the last step

        def on_step(step: int, max_steps: int, drafts: list[str]) -> None:
            latest[:] = drafts
            for job, draft in zip(jobs, drafts, strict=True):
                if job.on_step is not None and not job.cancelled.is_set():
                    job.on_step(step, max_steps, draft)

        t0 = time.perf_counter()
        try:
            results, stats = infill_batch(self.engine, [j.hole for j in jobs], self.caches,
                                          steps=jobs[0].steps or self.steps, seed=self.seed,
                                          should_stop=should_stop, on_step=on_step)
        except Cancelled as error:
            # every job is cancelled or out of time; one out of time gets the draft it has (a diffusion
            # draft is a whole middle at every step, less refined), or nothing before the first step
            self.cancelled += sum(j.cancelled.is_set() for j in jobs)
            for job, draft in zip(jobs, latest, strict=True):
                if job.cancelled.is_set():
                    _settle(job.future, error=error)
                else:
                    _settle(job.future, InfillOutcome(draft or "", 0, float("nan"), 0, 0, False, len(jobs),
                                                        (time.perf_counter() - t0) * 1000, timed_out=True))
            return
        except BaseException as error:  # every caller gets it; the thread lives on
            log.exception("a batch of %d holes failed", len(jobs))
            for job in jobs:
                _settle(job.future, error=error)
            return
        ms = (time.perf_counter() - t0) * 1000
        self.batches += 1
        self.batched_holes += len(jobs)
        for i, (job, result) in enumerate(zip(jobs, results, strict=True)):
            _settle(job.future, InfillOutcome(result.text, result.tokens, result.score, stats.prompt_tokens[i],
                                                stats.encoded_tokens[i], stats.truncated[i], len(jobs), ms,
                                                stats.prefill_ms))


def _settle(future: Future, result: Any = None, *, error: BaseException | None = None) -> None:
    """Resolve a job's future unless its caller already cancelled it (the client went away)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
