"""The executor contract: ``ParallelExecutor`` and ``create_executor``.

``ParallelExecutor.map`` owns everything strategies have in common: validating input, cutting
items into chunks, waiting with a deadline and a cancel flag, putting results back in input
order, attaching the failing item's index to a user exception, falling back when the machinery
breaks, metrics and telemetry. A strategy only says how to start a pool, submit chunks, abort
running work and release the pool (the hooks at the end of the class).
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from dataclasses import dataclass
from operator import length_hint
from typing import Any, ClassVar

from . import telemetry
from .config import ParallelConfig
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    MapCancelledError,
    ParallelExecutionError,
    SerializationError,
    WorkerCrashedError,
)
from .heuristics import CHUNKS_PER_WORKER
from .metrics import ParallelMetrics
from .progress import Progress
from .resources import CpuBudget, Resources, cpu_budget
from .worker import ChunkJob, ChunkOutcome, WorkerSetup, call_with_rng, in_worker

#: How often (seconds) a waiting ``map`` wakes to check its deadline and the cancel flag; this
#: bounds how late a timeout or ``cancel()`` is noticed.
POLL_INTERVAL_S = 0.05
#: The serial loop runs items in blocks sized, from the measured cost, to take about this long:
#: a trivial function then runs in one or two blocks and costs what the plain loop costs, while
#: ``cancel()`` and timeouts are still noticed within about this long.
SERIAL_BLOCK_TARGET_S = 0.02


def _check_positive_int(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigurationError(
            f"{name}={value!r} is not accepted; expected an integer >= 1 or None"
        )


def _check_timeout(value: Any) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
    ):
        raise ConfigurationError(
            f"timeout={value!r} is not accepted; expected a number of seconds > 0 or None"
        )


def annotate_item_error(
    exc: BaseException, index: int, strategy: str, remote_tb: str | None
) -> None:
    """Attach the failing item's index to a user exception (3.11+: a note; 3.10: the message)."""
    exc.ce_parallel_item_index = index  # type: ignore[attr-defined]
    where = f"ce-parallel: raised by item {index} (strategy {strategy!r})"
    if hasattr(exc, "add_note"):
        exc.add_note(where)
        if remote_tb:
            exc.add_note("worker traceback:\n" + remote_tb.rstrip())
    elif exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]} [{where}]", *exc.args[1:])
    else:
        exc.args = (*exc.args, where)


def spawn_seeds(seed: Any, n: int) -> list[Any]:
    """One independent ``SeedSequence`` per item, the same for every strategy and worker count."""
    try:
        import numpy as np
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError("map(seed=...) needs numpy; install numpy or drop seed") from exc
    return list(np.random.SeedSequence(seed).spawn(n))


@dataclass(frozen=True)
class MapCall:
    """What one ``map`` call asked for, apart from its items and seeds (which get sliced).

    ``limit`` is the timeout in seconds (for messages), ``deadline`` the ``time.monotonic()``
    by which the call must finish, ``bar`` its progress bar.
    """

    fn: Callable[..., Any]
    chunksize: int | None = None
    limit: float | None = None
    deadline: float | None = None
    bar: Progress | None = None


class ParallelExecutor(ABC):
    """Runs ``fn`` over items exactly as the serial loop would, on some pool of workers.

    ``map(fn, items)`` returns ``[fn(x) for x in items]``: the same values, in input order, each
    item run once. A user exception propagates with its own type and the failing item's index;
    only failures of the machinery (a pool that cannot start, a dead worker, something that
    cannot be pickled) fall back to running the unfinished chunks serially, and each fallback is
    recorded. Pools start on first use and are reused until ``shutdown()``.
    """

    #: Strategy name, as ``ParallelConfig.strategy`` spells it.
    name: ClassVar[str] = ""
    #: Whether work crosses a process boundary (so exceptions must be picklable).
    crosses_processes: ClassVar[bool] = False
    #: The strategy that runs the map when this one's pool cannot start (``fallback="serial"``):
    #: each step of the chain (processes -> threads -> sequential) emits one fallback record.
    start_fallback: ClassVar[str] = "sequential"

    def __init__(
        self,
        config: ParallelConfig | None = None,
        *,
        max_workers: int | None = None,
        resources: Resources | None = None,
    ) -> None:
        if config is not None and not isinstance(config, ParallelConfig):
            raise ConfigurationError(
                f"config={config!r} is not accepted; expected a ce_parallel.ParallelConfig or None"
            )
        _check_positive_int("max_workers", max_workers)
        self.config = config if config is not None else ParallelConfig()
        cap = max_workers if max_workers is not None else self.config.max_workers
        self.budget = _capped_budget(resources.budget if resources else None, cap)
        self.resources = resources
        self.workers = self._effective_workers(self.budget)
        self.metrics = ParallelMetrics(max_workers=self.workers)
        self._map_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._cancel_event = threading.Event()
        self._closed = False
        self._token = uuid.uuid4().hex

    # -- the public contract ----------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., Any],
        items: Iterable[Any],
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        progress: bool = False,
        seed: Any = None,
    ) -> list[Any]:
        """Return ``[fn(x) for x in items]``, computed on this executor's workers.

        ``chunksize`` items travel to a worker together (default: about ``CHUNKS_PER_WORKER``
        chunks per worker). ``timeout`` bounds the whole call in seconds and raises
        ``TimeoutError``. ``progress=True`` shows completed items. ``seed=S`` calls
        ``fn(x, rng=...)`` with a per-item ``numpy.random.Generator`` spawned from ``S``, so
        results do not depend on the strategy or the worker count.
        """
        if not callable(fn):
            raise TypeError(f"map() needs a callable as fn; got {type(fn).__name__}: {fn!r}")
        _check_positive_int("chunksize", chunksize)
        _check_timeout(timeout)
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} has been shut down; create a new one")
        work = items if isinstance(items, list) else list(items)
        if not work:
            return []
        limit = timeout if timeout is not None else self.config.timeout
        deadline = None if limit is None else time.monotonic() + limit
        seeds = spawn_seeds(seed, len(work)) if seed is not None else None
        bar = Progress(len(work), f"ce-parallel {self.name}") if progress else None
        call = MapCall(fn, chunksize, limit, deadline, bar)
        with self._map_lock:
            self._cancel_event.clear()
            try:
                if self.name != "sequential" and in_worker():
                    self._emit("nested", {"items": len(work), "reason": "nested_worker"})
                    return self._run_serially(call, work, seeds)
                return self._map(call, work, seeds)
            finally:
                if bar is not None:
                    bar.close()

    def cancel(self) -> None:
        """Stop the running ``map`` (from another thread): it raises ``MapCancelledError``."""
        self._cancel_event.set()

    def shutdown(self, cancel: bool = False) -> None:
        """Release every worker this executor started; waits for them unless ``cancel``.

        After it returns no worker process, thread or pipe of ours is left.
        """
        if cancel:
            self._cancel_event.set()
        self._closed = True
        self._release_pool(kill=cancel)

    def __enter__(self) -> ParallelExecutor:
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} has been shut down; create a new one")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.shutdown(cancel=exc_type is not None)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(workers={self.workers}, budget={self.budget.count} "
            f"limited_by={self.budget.limited_by!r})"
        )

    # -- the common machinery -----------------------------------------------------------------

    def _effective_workers(self, budget: CpuBudget) -> int:
        return budget.count

    def plan_chunks(self, n: int, chunksize: int | None) -> list[tuple[int, int]]:
        """Cut ``n`` items into ``(start, stop)`` ranges."""
        size = chunksize or self.config.instance_chunk_size or default_chunksize(n, self.workers)
        return [(start, min(start + size, n)) for start in range(0, n, size)]

    def _map(self, call: MapCall, work: list[Any], seeds: list[Any] | None) -> list[Any]:
        started = time.perf_counter()
        chunks = self.plan_chunks(len(work), call.chunksize)
        fallbacks = 0
        error: BaseException | None = None
        self.metrics.add(tasks_submitted=len(work), chunks=len(chunks), maps=1)
        outcomes: list[list[Any] | None] = [None] * len(chunks)
        busy = 0.0
        try:
            try:
                self._start_pool()
            except Exception as start_error:
                fallbacks = 1
                done = self._start_failed(start_error, call, work, seeds)
                self.metrics.add(tasks_completed=len(done))
                return done
            failures: dict[int, BaseException]
            try:
                jobs = [self._job(call.fn, work, seeds, a, b) for a, b in chunks]
                futures = self._submit_chunks(jobs)
            except Exception as exc:
                # the pool refused the work: nothing ran, all is unfinished
                failures = {i: exc for i in range(len(chunks))}
            else:
                busy, failures = self._collect(futures, chunks, outcomes, call)
            if failures:
                fallbacks = 1
                self._fall_back(call, work, seeds, chunks, outcomes, failures)
        except BaseException as exc:
            error = exc
            raise
        finally:
            wall = time.perf_counter() - started
            self.metrics.add(total_duration=wall, busy_time=busy)
            self._emit(
                "run",
                telemetry.run_record(
                    strategy=self.name,
                    items=len(work),
                    chunks=len(chunks),
                    workers=self.workers,
                    wall_time_s=wall,
                    busy_time_s=busy,
                    fallbacks=fallbacks,
                    error=error,
                ),
            )
        results: list[Any] = []
        for part in outcomes:
            assert part is not None
            results.extend(part)
        self.metrics.add(tasks_completed=len(results))
        return results

    def _start_failed(
        self, exc: Exception, call: MapCall, work: list[Any], seeds: list[Any] | None
    ) -> list[Any]:
        """The pool could not start: run the whole map on the next strategy of the chain.

        With ``fallback="raise"`` this raises ``BackendUnavailableError`` (or the more specific
        error the cause shows) listing every item. Otherwise one fallback record names this
        step; the substitute executor lives for this map only, so the next map tries this
        strategy's pool again, and its own start failure is the next step of the chain.
        """
        # whatever the message says, no worker ran: the backend is what is unavailable
        error_type: type[ParallelExecutionError] = BackendUnavailableError
        if isinstance(exc, ParallelExecutionError):
            error_type = type(exc)
        recover = self.config.fallback_to_serial
        following = self.start_fallback if recover else "raise"
        self._record_fallback(
            error_type,
            exc,
            action="serial" if following == "sequential" else following,
            items=len(work),
            stage="start",
        )
        if not recover:
            raise error_type(
                f"strategy {self.name!r} could not start its pool: {type(exc).__name__}: {exc}",
                incomplete=range(len(work)),
            ) from exc
        if following == "sequential" or following == self.name:
            return self._run_serially(call, work, seeds)
        from .strategies import strategy_class

        substitute = strategy_class(following)(
            self.config, max_workers=self.workers, resources=self.resources
        )
        # the caller's cancel() must reach the substitute's wait loop
        substitute._cancel_event = self._cancel_event
        try:
            return substitute._map(call, work, seeds)
        finally:
            substitute.shutdown()

    def _job(
        self, fn: Callable[..., Any], work: list[Any], seeds: list[Any] | None, a: int, b: int
    ) -> ChunkJob:
        return ChunkJob(
            fn=fn,
            start=a,
            items=work[a:b],
            seeds=None if seeds is None else seeds[a:b],
            setup=self._worker_setup(),
            check_pickle=self.crosses_processes,
        )

    def _worker_setup(self) -> WorkerSetup:
        from .resources import threads_per_worker

        return WorkerSetup(
            token=self._token,
            per_thread=not self.crosses_processes,
            blas_threads=(
                threads_per_worker(self.budget.count, self.workers)
                if self.crosses_processes
                else None
            ),
            initializer=self.config.worker_initializer,
            init_args=tuple(self.config.worker_init_args or ()),
            parent_pid=os.getpid(),
        )

    def _collect(
        self,
        futures: Sequence[Future[ChunkOutcome]],
        chunks: list[tuple[int, int]],
        outcomes: list[list[Any] | None],
        call: MapCall,
    ) -> tuple[float, dict[int, BaseException]]:
        """Wait for every chunk; return busy seconds and the chunks the machinery lost.

        On the first user error the chunks not yet running are cancelled; running chunks before
        it are awaited so that the error raised is the one the serial loop would raise.
        """
        deadline, bar = call.deadline, call.bar
        index_of = {fut: i for i, fut in enumerate(futures)}
        pending = set(futures)
        failures: dict[int, BaseException] = {}
        user_errors: dict[int, ChunkOutcome] = {}
        busy = 0.0
        try:
            while pending:
                timeout = POLL_INTERVAL_S
                if deadline is not None:
                    timeout = max(0.0, min(timeout, deadline - time.monotonic()))
                done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = index_of[fut]
                    try:
                        outcome = fut.result()
                    except CancelledError:
                        continue
                    except Exception as exc:
                        failures[i] = exc
                        continue
                    busy += outcome.busy_seconds
                    if outcome.fork_hooks is not None:
                        ran, failed = outcome.fork_hooks
                        self._emit(
                            "fork_hooks",
                            {
                                "strategy": self.name,
                                "pid": outcome.pid,
                                "hooks": ran,
                                "failed": failed,
                            },
                        )
                    if outcome.error is not None:
                        user_errors[i] = outcome
                    else:
                        outcomes[i] = outcome.take_results()
                        if bar is not None:
                            bar.update(chunks[i][1] - chunks[i][0])
                if user_errors:
                    first = min(user_errors)
                    dropped = {f for f in pending if f.cancel() or index_of[f] > first}
                    if dropped:
                        pending -= dropped
                        self._abort(dropped, kill=False)
                if self._cancel_event.is_set():
                    self.metrics.add(cancellations=1)
                    raise MapCancelledError("map() was cancelled by cancel()")
                if pending and deadline is not None and time.monotonic() >= deadline:
                    self.metrics.add(timeouts=1)
                    finished = sum(
                        b - a for i, (a, b) in enumerate(chunks) if outcomes[i] is not None
                    )
                    raise TimeoutError(
                        f"map() did not finish within timeout={call.limit} s on strategy "
                        f"{self.name!r} ({finished} of {chunks[-1][1]} items finished)"
                    )
        except BaseException:
            # KeyboardInterrupt, timeout, cancel: leave no work running behind the caller
            self._abort(pending, kill=True)
            raise
        if user_errors:
            self.metrics.add(failures=1)
            outcome = user_errors[min(user_errors)]
            error = outcome.error
            assert error is not None
            if outcome.error_index is None:
                if hasattr(error, "add_note"):
                    error.add_note("ce-parallel: raised by ParallelConfig.worker_initializer")
            else:
                annotate_item_error(error, outcome.error_index, self.name, outcome.remote_traceback)
            raise error
        return busy, failures

    def _fall_back(
        self,
        call: MapCall,
        work: list[Any],
        seeds: list[Any] | None,
        chunks: list[tuple[int, int]],
        outcomes: list[list[Any] | None],
        failures: dict[int, BaseException],
    ) -> None:
        """The machinery lost some chunks: re-run exactly those serially, or raise."""
        first = failures[min(failures)]
        error_type = classify_failure(first)
        unfinished = [i for i, part in enumerate(outcomes) if part is None]
        items = [k for i in unfinished for k in range(*chunks[i])]
        self._release_pool(kill=True)  # a broken pool is replaced on the next map
        recover = self.config.fallback_to_serial
        self._record_fallback(
            error_type,
            first,
            action="serial" if recover else "raise",
            items=len(items),
            chunks=unfinished,
        )
        if not recover:
            raise error_type(
                f"strategy {self.name!r} failed: {type(first).__name__}: {first}", incomplete=items
            ) from first
        if self.config.force_serial_on_failure:
            warnings.warn(
                f"ce-parallel: strategy {self.name!r} failed ({type(first).__name__}: {first}); "
                f"re-running {len(items)} unfinished items serially",
                UserWarning,
                stacklevel=4,
            )
        for i in unfinished:
            a, b = chunks[i]
            outcomes[i] = self._run_serially(
                call, work[a:b], None if seeds is None else seeds[a:b], offset=a
            )

    def _run_serially(
        self,
        call: MapCall,
        work: Sequence[Any],
        seeds: Sequence[Any] | None,
        offset: int = 0,
        per_item_s: float | None = None,
    ) -> list[Any]:
        """The serial loop, in the calling thread, in blocks of about ``SERIAL_BLOCK_TARGET_S``.

        The first block is one item, or sized from ``per_item_s`` when the cost of an item is
        already known; each next block is sized from the measured cost, so a trivial function
        costs what the plain loop costs while ``cancel()`` and ``timeout`` are still noticed
        between blocks.
        """
        fn, deadline, bar = call.fn, call.deadline, call.bar
        out: list[Any] = []
        n, pos = len(work), 0
        block = 1 if not per_item_s else max(1, int(SERIAL_BLOCK_TARGET_S / per_item_s))
        while pos < n:
            if self._cancel_event.is_set():
                self.metrics.add(cancellations=1)
                raise MapCancelledError("map() was cancelled by cancel()")
            if deadline is not None and time.monotonic() >= deadline:
                self.metrics.add(timeouts=1)
                raise TimeoutError(
                    f"map() did not finish within its timeout on strategy {self.name!r} "
                    f"({offset + pos} items finished)"
                )
            size = min(block, n - pos)
            if size == n - pos and isinstance(work, list):
                # the last block: iterate the list itself from pos instead of copying a slice
                rest = iter(work)
                rest.__setstate__(pos)  # type: ignore[attr-defined]
            else:
                rest = iter(work[pos : pos + size])
            tick = time.perf_counter()
            try:
                # a comprehension, not map(): Python-to-Python calls are cheaper from bytecode
                if seeds is None:
                    part = [fn(item) for item in rest]
                else:
                    part = [
                        call_with_rng(fn, item, seed)
                        for item, seed in zip(rest, seeds[pos : pos + size], strict=True)
                    ]
            except Exception as exc:
                self.metrics.add(failures=1)
                # the iterator has already given up the failing item
                index = offset + pos + size - length_hint(rest) - 1
                annotate_item_error(exc, index, self.name, None)
                raise
            took = time.perf_counter() - tick
            if len(part) > len(out):
                # prepend the short head rather than copy the long tail onto it
                part[:0] = out
                out = part
            else:
                out += part
            pos += size
            if bar is not None:
                bar.update(size)
            # size the next block from the measured cost so that it takes about the target
            if took > 0:
                block = max(1, int(SERIAL_BLOCK_TARGET_S * size / took))
            else:
                block *= 2
        return out

    def _record_fallback(
        self,
        error_type: type[ParallelExecutionError],
        failure: BaseException,
        *,
        action: str,
        items: int,
        chunks: list[int] | None = None,
        stage: str = "run",
    ) -> None:
        """Count one fallback and emit its record (every fallback is recorded, whatever next)."""
        self.metrics.add(fallbacks=1)
        self._emit(
            "fallback",
            telemetry.fallback_record(
                strategy=self.name,
                cause=error_type.__name__,
                failure=failure,
                action=action,
                items=items,
                chunks=chunks,
                stage=stage,
            ),
        )

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        telemetry.emit(
            event, payload, callback=self.config.telemetry, path=self.config.telemetry_path
        )

    # -- strategy hooks ---------------------------------------------------------------------

    @abstractmethod
    def _start_pool(self) -> None:
        """Create the pool if there is none (idempotent). Raise if it cannot start."""

    @abstractmethod
    def _submit_chunks(self, jobs: list[ChunkJob]) -> list[Future[ChunkOutcome]]:
        """Send every job to the pool; one future per job, in the same order."""

    def _abort(self, pending: Iterable[Future[ChunkOutcome]], kill: bool) -> None:
        """Stop work that is still queued or running (after an error, timeout or cancel).

        Queued chunks are cancelled. With ``kill``, a strategy whose workers are processes
        releases its pool at once: a busy worker process cannot be interrupted politely, and
        the next map starts a fresh pool. (Its futures are left to the killed pool, which fails
        them itself: cancelling them first makes loky's manager thread trip over their state.)
        A thread cannot be killed: its current chunk finishes and its result is discarded.
        """
        if kill and self.crosses_processes:
            self._release_pool(kill=True)
            return
        for fut in pending:
            fut.cancel()

    @abstractmethod
    def _release_pool(self, kill: bool) -> None:
        """Release the pool and every worker it started (idempotent); ``kill`` does not wait."""


def _capped_budget(budget: CpuBudget | None, cap: int | None) -> CpuBudget:
    if budget is None:
        return cpu_budget(max_workers=cap)
    if cap is not None and cap <= budget.count:
        return CpuBudget(cap, "max_workers", {**budget.sources, "max_workers": cap})
    return budget


def default_chunksize(n: int, workers: int) -> int:
    """``ceil(n / (workers x CHUNKS_PER_WORKER))``: see ``heuristics.CHUNKS_PER_WORKER``."""
    return max(1, math.ceil(n / (max(1, workers) * CHUNKS_PER_WORKER)))


def classify_failure(exc: BaseException) -> type[ParallelExecutionError]:
    """Map an infrastructure exception to the typed error that describes it."""
    from concurrent.futures import BrokenExecutor

    if isinstance(exc, ParallelExecutionError):
        return type(exc)
    if isinstance(exc, ImportError):
        return BackendUnavailableError
    text = f"{type(exc).__name__} {exc}".lower()
    if "pickl" in text or "serializ" in text:
        return SerializationError
    if isinstance(exc, BrokenExecutor) or "terminated" in text or "worker" in text:
        return WorkerCrashedError
    return ParallelExecutionError


def create_executor(
    config: ParallelConfig | None = None,
    *,
    max_workers: int | None = None,
    resources: Resources | None = None,
) -> ParallelExecutor:
    """Return the executor that ``config.strategy`` names (``auto`` picks per workload)."""
    from .strategies import strategy_class

    cfg = config if config is not None else ParallelConfig()
    cls = strategy_class(cfg.strategy)
    return cls(cfg, max_workers=max_workers, resources=resources)


__all__ = ["ParallelExecutor", "classify_failure", "create_executor", "default_chunksize"]
