"""The executors a facade runs on, and the pools facades share process-wide.

A library typically writes ``with ParallelFacade(config) as facade: ...`` inside the function it
parallelises, so a facade lives for one call. Starting a process pool on every call would cost
more than most calls save; so pooled executors are shared by every facade of the same
configuration in the process. A facade that closes releases its hold: the pool stays up, idle,
for the next facade that asks for it, until ``release_shared_pools()`` or interpreter exit. At
most ``MAX_IDLE_SHARED`` idle pools are kept (the least recently used go first), so facades of
ever-new configurations do not accumulate pools.

A facade given its own ``metrics`` (an adapter counting for its caller) or a configuration
that cannot be compared (unhashable ``worker_init_args``) gets pools of its own, shut down when
it closes.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from .config import ParallelConfig
from .decision import ParallelDecision
from .metrics import ParallelMetrics
from .resources import Resources
from .telemetry import emit, run_record, wanted

#: Idle shared pools kept for reuse (least recently used are shut down beyond this).
MAX_IDLE_SHARED = 4


@dataclass
class _Shared:
    executor: Any
    holders: int = 0
    ran: bool = False


_lock = threading.Lock()
_shared: OrderedDict[Hashable, _Shared] = OrderedDict()
#: Changes whenever a pool becomes warm anywhere in the process (see ``warm_generation``).
_warmed = 0


def warm_generation() -> int:
    """A number that changes whenever some pool in this process becomes warm: a serial
    decision that weighed a cold pool's start-up may be reused while it stays the same."""
    return _warmed


def _share_key(
    config: ParallelConfig, strategy: str, workers: int, resources: Resources
) -> Hashable | None:
    """What two facades must agree on to run on one pool; None when it cannot be compared."""
    key = (
        strategy,
        workers,
        resources.budget.count,
        resources.budget.limited_by,
        config.instance_chunk_size,
        config.task_size_hint_bytes,
        config.force_serial_on_failure,
        config.fallback,
        config.timeout,
        config.telemetry_path,
        config.dask_address,
        # callables by identity: records and set-up must go where this config says
        id(config.telemetry) if config.telemetry is not None else None,
        id(config.worker_initializer) if config.worker_initializer is not None else None,
        config.worker_init_args,
    )
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _trim_idle() -> list[Any]:
    """Drop idle shared pools beyond ``MAX_IDLE_SHARED`` (under ``_lock``); return them."""
    idle = [k for k, entry in _shared.items() if entry.holders == 0]
    stale = idle[: max(0, len(idle) - MAX_IDLE_SHARED)]
    return [_shared.pop(k).executor for k in stale]


def release_shared_pools() -> None:
    """Shut down every idle shared pool (pools a live facade still holds are left alone)."""
    with _lock:
        idle = [k for k, entry in _shared.items() if entry.holders == 0]
        executors = [_shared.pop(k).executor for k in idle]
    for executor in executors:
        executor.shutdown()


def shared_pool_count() -> int:
    """How many shared pools are up (held or idle)."""
    with _lock:
        return len(_shared)


atexit.register(release_shared_pools)


class FacadePools:
    """One facade's executors: its serial executor and its pooled executors by strategy."""

    def __init__(
        self,
        config: ParallelConfig,
        resources: Resources,
        metrics: ParallelMetrics | None = None,
        share: bool = True,
    ) -> None:
        self._config = config
        self._resources = resources
        self._metrics = metrics
        self._share = share and metrics is None
        self._lock = threading.Lock()
        self._own: dict[str, Any] = {}
        self._held: dict[str, Hashable] = {}  # strategy -> key of a shared pool we hold
        self._ran: set[str] = set()
        self._serial: Any | None = None
        self._closed = False
        self._running = 0  # maps of this facade running on pools right now

    def pooled(self, strategy: str, workers: int) -> Any:
        """The executor of ``strategy`` for ``workers`` workers (created or shared on first use)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this ParallelFacade has been closed; create a new one")
            held = self._held.get(strategy)
            if held is not None:
                with _lock:
                    entry = _shared.get(held)
                if entry is not None and not entry.executor.closed:
                    return entry.executor
            mine = self._own.get(strategy)
            if mine is not None and not mine.closed:
                return mine
            config = self._config.replace(strategy=strategy, enabled=True)
            key = _share_key(config, strategy, workers, self._resources) if self._share else None
            if key is None:
                self._own[strategy] = executor = self._create(config, workers)
                return executor
            with _lock:
                entry = _shared.get(key)
                if entry is None or entry.executor.closed:
                    entry = _shared[key] = _Shared(self._create(config, workers))
                entry.holders += 1
                _shared.move_to_end(key)
            self._held[strategy] = key
            return entry.executor

    def run(
        self,
        decision: ParallelDecision,
        given: Any | None,
        fn: Callable[..., Any],
        work: list[Any],
        seeds: list[Any] | None,
        chunksize: int | None,
        timeout: float | None,
        progress: bool,
    ) -> list[Any]:
        """Run ``work`` as ``decision`` says: serially, on ``given`` (a caller's executor), or
        on this facade's pooled executor of the decided strategy.

        The serial path records one run record here (a pooled executor records its own). The
        first map on a new pool measures its start-up for later decisions.
        """
        from .callers import is_ours, run_on_callers_executor
        from .executor import MapCall, SpawnedSeeds

        if not work:
            return []
        seed = None if seeds is None else SpawnedSeeds(seeds)
        if not decision.use_parallel:
            serial = self.serial()
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                if progress or timeout is not None:
                    return list(serial.map(fn, work, progress=progress, timeout=timeout, seed=seed))
                # the fast path: the decision is made and the arguments checked; the call is
                # tracked, so that closing the facade from another thread stops it
                call = MapCall(fn, per_item_s=decision.per_item_s)
                with serial.tracking(call.cancelled):
                    return serial.execute(call, work, seeds)  # a new list: no copy
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._record_serial_run(len(work), time.perf_counter() - started, error)
        if given is not None and not is_ours(given):
            return run_on_callers_executor(
                given, decision, fn, work, seeds, self._config, self.serial()
            )
        executor = given if given is not None else self.pooled(decision.strategy, decision.workers)
        cold = given is None and not self.warm(decision.strategy)
        before = executor.metrics.snapshot()
        with self._lock:
            self._running += 1
        try:
            results: list[Any] = executor.map(
                fn, work, chunksize=chunksize, timeout=timeout, progress=progress, seed=seed
            )
        finally:
            with self._lock:
                self._running -= 1
        if given is None:
            self.ran(decision.strategy)
            if cold:
                _measure_start(decision.strategy, executor, before)
        return results

    def _record_serial_run(self, items: int, wall: float, error: BaseException | None) -> None:
        config = self._config
        if not wanted(config.telemetry, config.telemetry_path):
            return
        record = run_record(
            strategy="sequential",
            items=items,
            chunks=None,
            workers=1,
            wall_time_s=wall,
            busy_time_s=wall,
            error=error,
            serial=True,
        )
        emit("run", record, callback=config.telemetry, path=config.telemetry_path)

    def _create(self, config: ParallelConfig, workers: int) -> Any:
        from .executor import create_executor

        executor = create_executor(config, max_workers=workers, resources=self._resources)
        if self._metrics is not None:
            executor.metrics = self._metrics
        return executor

    def serial(self) -> Any:
        """This facade's serial executor (created on first use)."""
        made = self._serial
        if made is not None:
            # no lock once made: a repeated serial map asks here on every call (a facade closed
            # meanwhile hands out its shut-down executor, which refuses the map)
            return made
        from .strategies.serial import SerialExecutor

        with self._lock:
            if self._serial is None:
                config = self._config.replace(strategy="sequential")
                self._serial = SerialExecutor(config, resources=self._resources)
                if self._metrics is not None:
                    self._serial.metrics = self._metrics
            return self._serial

    def warm(self, strategy: str) -> bool:
        """Whether ``strategy``'s pool is up and has run a map (so starting it costs nothing)."""
        with self._lock:
            held = self._held.get(strategy)
            mine = self._own.get(strategy)
            ran = strategy in self._ran
        if held is None and mine is None and self._share:
            # a new facade (one per library call) finds the pool an earlier one warmed
            budget = self._resources.budget.count
            workers = self._config.explicit_workers(budget) or budget
            held = _share_key(self._config, strategy, workers, self._resources)
        if held is not None:
            with _lock:
                entry = _shared.get(held)
            return entry is not None and entry.ran and not entry.executor.closed
        return mine is not None and ran and not mine.closed

    def ran(self, strategy: str) -> None:
        """Note that ``strategy``'s pool has run a map."""
        with self._lock:
            self._ran.add(strategy)
            held = self._held.get(strategy)
        global _warmed
        with _lock:
            _warmed += 1
            entry = None if held is None else _shared.get(held)
            if entry is not None:
                entry.ran = True

    def executors(self) -> dict[str, Any]:
        """The executors this facade runs on, by strategy (``"sequential"`` for the serial one)."""
        with self._lock:
            owned = dict(self._own)
            held = dict(self._held)
            serial = self._serial
        with _lock:
            for strategy, key in held.items():
                entry = _shared.get(key)
                if entry is not None:
                    owned[strategy] = entry.executor
        if serial is not None:
            owned["sequential"] = serial
        return owned

    def close(self, cancel: bool = False) -> None:
        """Shut down this facade's own executors and release its hold on shared pools.

        With ``cancel`` shared pools this facade holds are shut down too (their work is
        stopped), as are its own."""
        with self._lock:
            self._closed = True
            # a map of this facade still running is stopped with its pool when no other
            # facade holds that pool (others' maps on a shared pool are left to run)
            cancel = cancel or self._running > 0
            own = list(self._own.values())
            held = list(self._held.values())
            if self._serial is not None:
                own.append(self._serial)
            self._own.clear()
            self._held.clear()
            self._ran.clear()
            self._serial = None
        stop: list[Any] = []
        with _lock:
            for key in held:
                entry = _shared.get(key)
                if entry is None:
                    continue
                entry.holders -= 1
                if cancel and entry.holders <= 0:
                    stop.append(_shared.pop(key).executor)
            stop += _trim_idle()
        for executor in own:
            executor.shutdown(cancel=cancel)
        for executor in stop:
            executor.shutdown(cancel=cancel)


def _measure_start(strategy: str, pool: Any, before: dict[str, Any]) -> None:
    """Remember what the first map of a new pool spent beyond its items: the start-up."""
    from .costs import MEMORY

    after = pool.metrics.snapshot()
    wall = after["total_duration"] - before["total_duration"]
    busy = after["busy_time"] - before["busy_time"]
    chunks = max(1, after["chunks"] - before["chunks"])
    if wall <= 0 or after["fallbacks"] > before["fallbacks"]:
        return
    MEMORY.record_start(strategy, wall - busy / min(pool.workers, chunks))


__all__ = ["MAX_IDLE_SHARED", "FacadePools", "release_shared_pools", "shared_pool_count"]
