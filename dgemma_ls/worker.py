"""The one thread that owns the Engine: it loads the model and runs every model call.

The Engine is not thread-safe, so nothing else runs it (only its stateless tokenizer is shared,
for counting tokens). Callers get concurrent futures and pass a `should_stop` predicate that
the engine polls every denoising step. Knows nothing about LSP or documents.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

from engine import Cancelled, Engine, EngineError

T = TypeVar("T")


class ModelUnavailable(Exception):
    """No model to run: still loading, or the last load failed (the message says which)."""


class ModelWorker:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgemma-model")
        self._closing = threading.Event()
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

    def load(self, path: str | None, device: str, dtype: str, compile: bool = False,
             on_compiled: Callable[[str], None] | None = None) -> Future[str]:
        """Replace the engine; resolves to its one-line description or raises EngineError.

        With `compile`, the engine serves eager at once while its denoising step compiles on a
        background thread (Engine.compile: ~10-40 s of one core, at low priority); the compiled
        step takes over from the next request on, and `on_compiled(description)` reports the
        outcome (called on that thread), unless a newer load superseded this one."""
        self._load_generation += 1
        generation = self._load_generation
        self.engine = None
        self.description = ""
        self.unavailable_reason = "the model is loading"

        def task() -> str:
            if generation != self._load_generation or self._closing.is_set():
                raise Cancelled("a newer model load superseded this one")
            try:
                engine = Engine.load(path, device=device, dtype=dtype)
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
            if compile:
                threading.Thread(target=self._compile, args=(engine, generation, on_compiled),
                                 name="dgemma-compile", daemon=True).start()
            return self.description

        return self._pool.submit(task)

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
        self, job: Callable[[Engine | None], T], should_stop: Callable[[], bool], *, needs_engine: bool = True
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

        return self._pool.submit(task)

    def close(self) -> None:
        self._closing.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
