"""The executor contract: ``ParallelExecutor`` and ``create_executor``.

``ParallelExecutor`` is small and shaped like ``concurrent.futures.Executor``: ``map``,
``cancel``, ``shutdown``, a context manager and ``metrics``. ``map`` validates the call, builds a
``MapCall`` and hands it to ``execute``, which each kind of executor implements: the pooled
engine (``engine.PooledExecutor``) for strategies that run chunks on a pool, the serial loop for
``sequential``, a choice per map for ``auto``. The facts about a strategy (does it pickle work,
are its workers child processes) come from its registry record, never from a list here.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from . import telemetry
from .checks import check_int, check_seconds, rejected
from .chunks import default_chunksize
from .config import ParallelConfig
from .errors import ConfigurationError, ExecutorClosedError, SerializationError
from .metrics import ParallelMetrics
from .progress import Progress
from .registry import StrategyRecord, strategy_class, strategy_records
from .resources import CpuBudget, Resources, cpu_budget
from .serial_loop import run_serially
from .worker import in_worker

if TYPE_CHECKING:
    from .futures import CeFuturesExecutor


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


def annotate_chunk_error(outcome: Any, strategy: str) -> BaseException:
    """The user error a chunk came back with (``ChunkOutcome.error``), annotated: the failing
    item's index and the worker's traceback, or, with no index, that the worker initializer
    raised it."""
    error: BaseException = outcome.error
    if outcome.error_index is None:
        if hasattr(error, "add_note"):
            error.add_note("ce-parallel: raised by ParallelConfig.worker_initializer")
    else:
        annotate_item_error(error, outcome.error_index, strategy, outcome.remote_traceback)
    return error


def shift_item_index(exc: BaseException, offset: int, strategy: str) -> None:
    """Count the failing item's index from the start of the whole map, not of its remainder.

    For a map whose first ``offset`` items ran elsewhere first (a pilot) and whose remainder
    failed on ``strategy``.
    """
    index = getattr(exc, "ce_parallel_item_index", None)
    if index is None or offset == 0:
        return
    exc.ce_parallel_item_index = index + offset  # type: ignore[attr-defined]
    old = f"ce-parallel: raised by item {index} (strategy {strategy!r})"
    new = f"ce-parallel: raised by item {index + offset} (strategy {strategy!r})"
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list) and old in notes:
        notes[notes.index(old)] = new
    elif exc.args and isinstance(exc.args[0], str) and old in exc.args[0]:
        exc.args = (exc.args[0].replace(old, new), *exc.args[1:])


class SpawnedSeeds(list[Any]):
    """One ``SeedSequence`` per item, already spawned (a slice of a larger map's seeds).

    Passed as ``map(seed=...)`` it is used as it is, so that the items of a map split across
    several runs (a pilot, then a pool) draw exactly what they would in one run.
    """


def spawn_seeds(seed: Any, n: int) -> list[Any]:
    """One independent ``SeedSequence`` per item, the same for every strategy and worker count."""
    if isinstance(seed, SpawnedSeeds):
        if len(seed) != n:
            raise ConfigurationError(f"map(seed=...) got {len(seed)} spawned seeds for {n} items")
        return list(seed)
    try:
        import numpy as np
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError("map(seed=...) needs numpy; install numpy or drop seed") from exc
    return list(np.random.SeedSequence(seed).spawn(n))


@dataclass(frozen=True)
class MapCall:
    """What one ``map`` call asked for, apart from its items and seeds (which get sliced).

    ``limit`` is the timeout in seconds (for messages), ``deadline`` the ``time.monotonic()``
    by which the call must finish, ``bar`` its progress bar. ``cancelled`` is this call's own
    flag: ``cancel()`` and ``shutdown()`` set it, and an executor that takes the call over (a
    fallback, auto's chosen executor) watches the same flag.
    """

    fn: Callable[..., Any]
    chunksize: int | None = None
    limit: float | None = None
    deadline: float | None = None
    bar: Progress | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: the known cost of one item, if any: sizes the serial loop's first block
    per_item_s: float | None = None


#: The record of an executor class that was never registered (used directly, in tests).
def _unregistered(name: str) -> StrategyRecord:
    return StrategyRecord(name or "unregistered", object)


class ParallelExecutor(ABC):
    """Runs ``fn`` over items exactly as the serial loop would, on some pool of workers.

    ``map(fn, items)`` returns ``[fn(x) for x in items]``: the same values, in input order, each
    item run once. A user exception propagates with its own type and the failing item's index;
    only failures of the machinery (a pool that cannot start, a dead worker, something that
    cannot be pickled) fall back to running the unfinished chunks serially, and each fallback is
    recorded. Pools start on first use and are reused until ``shutdown()``. One executor may be
    used from many threads at once, and from inside its own ``fn`` (that nested map runs
    serially in place); no lock is held while user code runs.
    """

    #: Strategy name, as registered (``ce_parallel.registry``) and as ``ParallelConfig`` spells it.
    name: ClassVar[str] = ""

    def __init__(
        self,
        config: ParallelConfig | None = None,
        *,
        max_workers: int | None = None,
        resources: Resources | None = None,
    ) -> None:
        if config is not None and not isinstance(config, ParallelConfig):
            raise rejected("config", config, "a ce_parallel.ParallelConfig or None")
        check_int("max_workers", max_workers, 1)
        self.config = (config if config is not None else ParallelConfig()).validate()
        #: What the registry says about this strategy (``pickles_work``, ``separate_processes``).
        self.record: StrategyRecord = strategy_records().get(self.name) or _unregistered(self.name)
        if max_workers is not None:
            cap: int | None = max_workers
        elif self.config.n_jobs is not None:
            machine = resources.budget if resources else cpu_budget()
            cap = self.config.explicit_workers(machine.count)
        else:
            cap = self.config.max_workers
        self.budget = _capped_budget(resources.budget if resources else None, cap)
        self.resources = resources
        # an explicit count is honoured even above the budget (I/O-bound work wants more
        # threads than CPUs); the budget is the default, not a ceiling
        self.workers = self._effective_workers(cap if cap is not None else self.budget.count)
        self.metrics = ParallelMetrics(max_workers=self.workers)
        self._pool_lock = threading.Lock()
        # held while a pool starts and while shutdown() marks the executor closed, so that a map
        # racing a shutdown either starts its pool before the shutdown releases it or sees the
        # executor closed and starts nothing; never held while user code runs
        self._life_lock = threading.Lock()
        self._calls_lock = threading.Lock()
        self._active: set[threading.Event] = set()
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
        check_int("chunksize", chunksize, 1)
        check_seconds("timeout", timeout)
        self.config.validate()
        self._check_open()
        work = items if isinstance(items, list) else list(items)
        if not work:
            return []
        limit = timeout if timeout is not None else self.config.timeout
        deadline = None if limit is None else time.monotonic() + limit
        seeds = spawn_seeds(seed, len(work)) if seed is not None else None
        bar = Progress(len(work), f"ce-parallel {self.name}") if progress else None
        call = MapCall(fn, chunksize, limit, deadline, bar)
        try:
            with self.tracking(call.cancelled):
                if in_worker() and self.workers > 1:
                    # inside one of our workers: no pool in a pool, never wait for ourselves
                    self._emit("nested", {"items": len(work), "reason": "nested_worker"})
                    return self.run_serially(call, work, seeds)
                return self.execute(call, work, seeds)
        finally:
            if bar is not None:
                bar.close()

    @contextlib.contextmanager
    def tracking(self, cancelled: threading.Event) -> Iterator[None]:
        """Count a running call (its cancel flag) as this executor's while the block runs.

        ``cancel()`` and ``shutdown()`` set the flag of every call being tracked; a shut-down
        executor refuses to track a new one. ``map`` tracks its own calls; streams and futures
        views track theirs with it.
        """
        with self._calls_lock:
            self._check_open()
            self._active.add(cancelled)
        try:
            yield
        finally:
            with self._calls_lock:
                self._active.discard(cancelled)

    @abstractmethod
    def execute(self, call: MapCall, work: list[Any], seeds: list[Any] | None) -> list[Any]:
        """Run a prepared call over ``work`` (a non-empty list) and return its results in order.

        This is what ``map`` calls after validating its arguments, and how one executor hands a
        call to another (a start-up fallback, auto's chosen strategy): the receiving executor
        watches ``call.cancelled`` and ``call.deadline`` as its own.
        """

    def run_serially(
        self,
        call: MapCall,
        work: Sequence[Any],
        seeds: Sequence[Any] | None,
        *,
        offset: int = 0,
        per_item_s: float | None = None,
        until: Callable[[], bool] | None = None,
    ) -> list[Any]:
        """The serial loop (``serial_loop.run_serially``) under this executor's name and metrics."""
        return run_serially(
            call,
            work,
            seeds,
            strategy=self.name,
            metrics=self.metrics,
            offset=offset,
            per_item_s=per_item_s,
            until=until,
        )

    def cancel(self) -> None:
        """Stop every running ``map`` of this executor (from another thread): each raises
        ``MapCancelledError``."""
        with self._calls_lock:
            active = list(self._active)
        for flag in active:
            flag.set()

    def shutdown(self, cancel: bool = False) -> None:
        """Release every worker this executor started; waits for them unless ``cancel``.

        Safe from any thread, also while maps run: those maps raise ``MapCancelledError``
        promptly (their thread workers take no new item), a map that arrives later raises
        ``ExecutorClosedError`` and starts nothing. Without ``cancel`` it waits for the
        workers to finish the item they are running; with ``cancel`` it does not wait. After it
        returns (without ``cancel``) no worker process, thread or pipe of ours is left.
        """
        with self._life_lock, self._calls_lock:
            self._closed = True
            active = list(self._active)
        for flag in active:
            flag.set()
        # the running maps' work is discarded: worker processes busy with it are not waited
        # for (a thread finishes its current item, then takes no new one)
        self.release_pool(kill=cancel or (bool(active) and self.record.separate_processes))

    def release_pool(self, kill: bool) -> None:  # noqa: B027 - a hook with nothing to release
        """Release the pool and every worker it started (idempotent); ``kill`` does not wait.

        Executors that start no workers keep this default, which does nothing.
        """

    @property
    def closed(self) -> bool:
        """Whether ``shutdown()`` was called."""
        return self._closed

    def __enter__(self) -> ParallelExecutor:
        self._check_open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.shutdown(cancel=exc_type is not None)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(workers={self.workers}, budget={self.budget.count} "
            f"limited_by={self.budget.limited_by!r})"
        )

    # -- shared by every kind of executor ---------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorClosedError(
                f"this {type(self).__name__} has been shut down; create a new one"
            )

    def __reduce__(self) -> Any:
        # An executor holds locks, a pool and its workers' state: it cannot travel to a
        # worker. A function that closes over one (often its own map's executor) is refused
        # here with a clear message; the pool reports the failure as a pickling error, so the
        # map falls back like for any work that cannot be pickled.
        raise SerializationError(
            f"a {type(self).__name__} cannot be pickled: the function or an item sent to "
            "workers refers to an executor (use it in the caller, or create one inside fn)"
        )

    def _effective_workers(self, requested: int) -> int:
        return requested

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        telemetry.emit(
            event, payload, callback=self.config.telemetry, path=self.config.telemetry_path
        )

    # -- the ecosystem's shapes (futures.py, streaming.py) ----------------------------------

    def as_executor(self) -> CeFuturesExecutor:
        """A ``concurrent.futures.Executor`` running on this executor (``futures``)."""
        from .futures import CeFuturesExecutor

        return CeFuturesExecutor(self)

    def imap(
        self,
        fn: Callable[..., Any],
        items: Iterable[Any],
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        progress: bool = False,
    ) -> Iterator[Any]:
        """Yield ``fn(x)`` for each ``x`` in input order, reading ``items`` lazily
        (``streaming.imap``)."""
        from .streaming import imap

        return imap(self, fn, items, chunksize=chunksize, timeout=timeout, progress=progress)

    def imap_unordered(
        self,
        fn: Callable[..., Any],
        items: Iterable[Any],
        *,
        chunksize: int | None = None,
        timeout: float | None = None,
        progress: bool = False,
    ) -> Iterator[Any]:
        """Yield ``fn(x)`` for each ``x`` as chunks finish (``streaming.imap_unordered``)."""
        from .streaming import imap_unordered

        return imap_unordered(
            self, fn, items, chunksize=chunksize, timeout=timeout, progress=progress
        )


def _capped_budget(budget: CpuBudget | None, cap: int | None) -> CpuBudget:
    if budget is None:
        return cpu_budget(max_workers=cap)
    if cap is not None and cap <= budget.count:
        return CpuBudget(cap, "max_workers", {**budget.sources, "max_workers": cap})
    return budget


def create_executor(
    config: ParallelConfig | None = None,
    *,
    max_workers: int | None = None,
    resources: Resources | None = None,
    n_jobs: int | None = None,
) -> ParallelExecutor:
    """Return the executor that ``config.strategy`` names, as the registry records it.

    ``n_jobs`` is the worker count as joblib spells it (``-1`` all of the CPU budget, ``-2``
    all but one, ``None`` the default; ``0`` is an error), an alternative to ``max_workers``.
    """
    cfg = (config if config is not None else ParallelConfig()).validate()
    if n_jobs is not None:
        from .njobs import resolve_n_jobs

        if max_workers is not None:
            raise ConfigurationError(
                f"create_executor(max_workers={max_workers!r}, n_jobs={n_jobs!r}): give one of "
                "them, not both"
            )
        budget = resources.budget if resources is not None else cpu_budget()
        max_workers = resolve_n_jobs(n_jobs, budget.count)
    cls = strategy_class(cfg.strategy)
    executor: ParallelExecutor = cls(cfg, max_workers=max_workers, resources=resources)
    return executor


__all__ = [
    "MapCall",
    "ParallelExecutor",
    "SpawnedSeeds",
    "annotate_chunk_error",
    "annotate_item_error",
    "create_executor",
    "default_chunksize",
    "shift_item_index",
    "spawn_seeds",
]
