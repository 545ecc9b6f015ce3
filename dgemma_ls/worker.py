"""The one thread that owns the Engine: it loads the model and runs every model call.

The Engine is not thread-safe, so nothing else runs it (only its stateless tokenizer is shared,
for counting tokens). Jobs wait in a priority queue: interactive work (ghost text) is taken
before the model calls of long actions, which arrive one call at a time through
`lane_backend`, so a repair of a big table never holds typing hostage. Callers get concurrent
futures and pass a `should_stop` predicate that the engine polls every denoising step. Knows
nothing about LSP or documents.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

from dgemma_ls.backends import BackendConfig, HttpBackend, make_backend
from engine import Cancelled, Engine, EngineError

T = TypeVar("T")

INTERACTIVE, ACTION = 0, 1  # priorities: lower runs first; equal priorities run in order


class ModelUnavailable(Exception):
    """No model to run: still loading, or the last load failed (the message says which)."""


class ModelWorker:
    def __init__(self) -> None:
        # (priority, arrival, future, work); arrival is unique, so futures are never compared
        self._queue: queue.PriorityQueue[tuple[int, int, Future | None, Callable[[], Any] | None]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dgemma-model", daemon=True)
        self._thread.start()
        self._load_generation = 0  # bumped per load(); a superseded load never installs its engine
        self.engine: Engine | None = None
        self.description: str = ""  # engine.describe() of the installed engine
        self.unavailable_reason: str = "the model has not been loaded yet"

    @property
    def ready(self) -> bool:
        return self.engine is not None

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def _serve(self) -> None:
        while not self._closing.is_set():
            # One call per job, so that nothing of it outlives its return: a job left in a local
            # of this loop lived until the next job came, and with it the closure's document text
            # and syntax tree (a 1.7 M-character file kept ~100 MB of native tree-sitter memory
            # after its close, several hundred MB in all; docs/reliability.md).
            self._run_one(*self._queue.get()[2:])
        while not self._queue.empty():  # closing: nobody waits forever on a job that never runs
            _, _, future, _ = self._queue.get_nowait()
            if future is not None:
                future.cancel()

    @staticmethod
    def _run_one(future: Future | None, work: Callable[[], Any] | None) -> None:
        if future is None or not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(work())
        except BaseException as error:  # the caller's future carries it; the thread lives on
            future.set_exception(error)

    def _submit(self, priority: int, work: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((priority, next(self._order), future, work))
        if self._closing.is_set():  # the thread may have drained the queue already
            future.cancel()
        return future

    def load(self, path: str | None, device: str, dtype: str, compile: bool = False, quantize: str = "none",
             on_compiled: Callable[[str], None] | None = None, remote: BackendConfig | None = None,
             on_progress: Callable[[str], None] | None = None) -> Future[str]:
        """Replace the engine; resolves to its one-line description or raises EngineError.

        With `compile`, the engine serves eager at once while its denoising step compiles on a
        background thread (Engine.compile: ~10-40 s of one core, at low priority); the compiled
        step takes over from the next request on, and `on_compiled(description)` reports the
        outcome (called on that thread), unless a newer load superseded this one.

        With `remote`, a remote backend (dgemma_ls.backends) takes the engine's place: nothing is
        loaded or compiled here, and every job gets the backend instead. `on_progress(message)`
        hears the embedded model's first-use build (about half a minute; called on the model thread)."""
        self._load_generation += 1
        generation = self._load_generation
        replaced, self.engine = self.engine, None
        self.description = ""
        self.unavailable_reason = "the model is loading"

        def task() -> str:
            if isinstance(replaced, HttpBackend):  # close its connections (on this thread: no job is using it)
                replaced.close()
            if generation != self._load_generation or self._closing.is_set():
                raise Cancelled("a newer model load superseded this one")
            try:
                engine = make_backend(remote) if remote else Engine.load(path, device=device, dtype=dtype,
                                                                         quantize=quantize, progress=on_progress)
            except EngineError as error:
                if generation == self._load_generation:
                    self.unavailable_reason = f"the model failed to load: {error}"
                raise
            except Exception as error:  # a broken checkpoint must not look like a server bug
                if generation == self._load_generation:
                    self.unavailable_reason = f"the model failed to load: {error!r}"
                raise EngineError(f"loading {path or 'the embedded model'} failed: {error!r}") from error
            if generation != self._load_generation:
                raise Cancelled("a newer model load superseded this one")
            self.engine = engine
            self.description = engine.describe()
            if compile and remote is None:
                threading.Thread(target=self._compile, args=(engine, generation, on_compiled),
                                 name="dgemma-compile", daemon=True).start()
            return self.description

        return self._submit(INTERACTIVE, task)

    def _compile(self, engine: Engine, generation: int, on_compiled: Callable[[str], None] | None) -> None:
        """Engine.compile off the model thread. Safe beside requests: it only reads the weights and
        installs the step when done (a request reads it once, at its start); it never raises."""
        with contextlib.suppress(OSError, AttributeError):  # below the model thread (Linux: per thread)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        engine.compile()
        if generation == self._load_generation and not self._closing.is_set():
            self.description = engine.describe()
            if on_compiled is not None:
                with contextlib.suppress(RuntimeError):  # the server's event loop closed meanwhile
                    on_compiled(self.description)

    def run(
        self,
        job: Callable[[Engine | None], T],
        should_stop: Callable[[], bool],
        *,
        needs_engine: bool = True,
        priority: int = INTERACTIVE,
    ) -> Future[T]:
        """Queue `job(engine)`; it is skipped (Cancelled) if `should_stop()` is already true.

        Without an engine the job fails with ModelUnavailable, unless `needs_engine` is False:
        then it runs with `engine=None` (the repairs still work without a model).
        """

        def task() -> T:
            if should_stop() or self._closing.is_set():
                raise Cancelled("superseded before it started")
            engine = self.engine
            if engine is None and needs_engine:
                raise ModelUnavailable(self.unavailable_reason)
            return job(engine)

        return self._submit(priority, task)

    def lane_backend(self, should_stop: Callable[[], bool], priority: int = ACTION) -> LaneBackend | None:
        """A backend for a long action running on another thread: each of its model calls is
        queued here at `priority` and waited for, so interactive jobs go between them. None
        without an engine."""
        engine = self.engine
        return None if engine is None else LaneBackend(self, engine, should_stop, priority)

    def close(self) -> None:
        self._closing.set()
        self._queue.put((-1, -1, None, None))  # wakes the thread, which then cancels what is queued
        if isinstance(self.engine, HttpBackend):
            self.engine.close()


class LaneBackend:
    """`actions.Backend` for a thread other than the model's: `infill` queues one model call on
    the worker and blocks until it is done (Cancelled once `should_stop()` is true)."""

    def __init__(self, worker: ModelWorker, engine: Engine, should_stop: Callable[[], bool], priority: int):
        self._worker, self._should_stop, self._priority = worker, should_stop, priority
        self.tokenizer = engine.tokenizer  # stateless: counting tokens is safe from any thread

    def infill(self, prefix: str, suffix: str, **options: Any) -> list[Any]:
        future = self._worker.run(
            lambda engine: engine.infill(prefix, suffix, **options), self._should_stop, priority=self._priority
        )
        return future.result()
