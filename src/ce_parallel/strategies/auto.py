"""``AutoExecutor``: measures the first items of each map, then runs the rest on the best pool.

Per ``map`` it runs a short pilot on the first items in the calling thread (and, when needed, a
few more on two threads to see whether they hold the GIL), keeps their results, asks
``selection.explain_selection`` for a strategy and hands the remaining items to a pooled executor
of that strategy. Measurements are remembered per function, so a repeated map skips the pilot.
The executors it hands work to are kept and reused across maps and released by ``shutdown``.

A process pool is never waited for: while it starts in the background the calling thread keeps
running items, and the pool takes over whatever is left once it is up. When the measurements say
a pool would pay off on a repeat of this map but not on what is left of it, the pool is started
in the background for the next call.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import Any

from .. import telemetry
from ..executor import MapCall, ParallelExecutor, annotate_item_error, create_executor
from ..pilot import PilotError, pickled_size, pilot
from ..registry import strategy_record
from ..resources import Resources
from ..selection import Selection, WorkloadProfile, explain_selection, selectable

#: How many functions' measurements an executor remembers (least recently used are dropped).
PROFILE_CACHE_SIZE = 32
#: How many selections an executor remembers (cleared when full).
SELECTION_CACHE_SIZE = 256


def _starts_in_background(strategy: str) -> bool:
    # a pool of child processes is worth starting while the caller keeps running items
    return strategy_record(strategy).separate_processes


def _noop(_: Any) -> None:
    return None


@dataclass(frozen=True)
class _Measured:
    per_item_seconds: float
    holds_gil: bool | None
    cpu_ratio: float
    thread_scaling: float | None
    item_bytes: int | None


class _Warmup:
    """A pool started in a background thread; ``ready`` is set when it has run a first task."""

    def __init__(self, executor: ParallelExecutor) -> None:
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(executor,), name="ce-parallel-auto-warmup", daemon=True
        )
        self.thread.start()

    def _run(self, executor: ParallelExecutor) -> None:
        try:
            executor.map(_noop, [None])
        except BaseException as exc:  # the real map falls back on its own; just stop waiting
            self.error = exc
        finally:
            self.ready.set()


class AutoExecutor(ParallelExecutor):
    """Picks sequential, threads or processes per map from measurements of the first items."""

    name = "auto"

    def __init__(
        self,
        config: Any = None,
        *,
        max_workers: int | None = None,
        resources: Resources | None = None,
    ) -> None:
        super().__init__(config, max_workers=max_workers, resources=resources)
        base = resources if resources is not None else Resources(budget=self.budget)
        self._snapshot = replace(base, budget=self.budget)
        self._executors: dict[str, ParallelExecutor] = {}
        self._warmups: dict[str, _Warmup] = {}
        self._profiles: OrderedDict[Hashable, _Measured] = OrderedDict()
        self._selections: dict[tuple[Any, ...], Selection] = {}
        #: The strategy and reason of the last map (what ran the items after the pilot).
        self.last_strategy: str | None = None
        self.last_reason: str | None = None
        self.last_selection: Selection | None = None

    def _forget(self, key: Any) -> None:
        self._profiles.pop(key, None)

    # -- the selection ----------------------------------------------------------------------

    def _executor(self, strategy: str) -> ParallelExecutor:
        """The executor of ``strategy`` this one hands work to (created once, then reused)."""
        with self._pool_lock:
            executor = self._executors.get(strategy)
            if executor is None:
                executor = create_executor(
                    self.config.replace(strategy=strategy), resources=self._snapshot
                )
                self._executors[strategy] = executor
            return executor

    def _warm_pools(self) -> frozenset[str]:
        warm = {s for s, w in self._warmups.items() if w.ready.is_set() and w.error is None}
        # a thread pool that exists is as good as warm: it starts in about a millisecond
        warm |= {
            s for s in self._executors if strategy_record(s).start_cost in ("none", "thread_pool")
        }
        return frozenset(warm)

    def _warm_in_background(self, strategy: str) -> _Warmup:
        warmup = self._warmups.get(strategy)
        if warmup is None or warmup.error is not None:
            warmup = _Warmup(self._executor(strategy))
            self._warmups[strategy] = warmup
        return warmup

    def _measure(
        self,
        fn: Callable[..., Any],
        work: list[Any],
        seeds: list[Any] | None,
        key: Hashable | None,
    ) -> tuple[list[Any], _Measured]:
        """Run the pilot, or reuse what an earlier map of ``fn`` measured (then nothing runs)."""
        known = self._profiles.get(key) if key is not None else None
        if known is not None:
            enough = len(work) * known.per_item_seconds
            if known.holds_gil is not None or enough < _min_parallel_work():
                self._profiles.move_to_end(key)
                return [], known
        try:
            result = pilot(fn, work, seeds, threads=min(2, self.workers))
        except PilotError as failure:
            self.metrics.add(failures=1)
            annotate_item_error(failure.error, failure.index, self.name, None)
            raise failure.error from None
        measured = _Measured(
            result.per_item_seconds,
            result.holds_gil,
            result.cpu_ratio,
            result.thread_scaling,
            pickled_size(work[0]) if result.holds_gil else None,
        )
        if key is not None:
            self._profiles[key] = measured
            self._profiles.move_to_end(key)
            while len(self._profiles) > PROFILE_CACHE_SIZE:
                self._profiles.popitem(last=False)
        return result.results, measured

    def _select(self, n: int, measured: _Measured | None, assume_warm: bool = False) -> Selection:
        warm = frozenset(selectable()) if assume_warm else self._warm_pools()
        # a selection depends only on these and on what the executor fixed at construction, and
        # a repeated map asks the same question again: answer it from memory
        key = (n, measured, warm)
        known = self._selections.get(key)
        if known is None:
            if len(self._selections) >= SELECTION_CACHE_SIZE:
                self._selections.clear()
            known = self._selections[key] = self._new_selection(n, measured, warm)
        return known

    def _new_selection(self, n: int, measured: _Measured | None, warm: frozenset[str]) -> Selection:
        if measured is None:
            profile = WorkloadProfile(
                n_items=n,
                task_size_hint_bytes=self.config.task_size_hint_bytes,
                warm_pools=warm,
            )
        else:
            profile = WorkloadProfile(
                n_items=n,
                task_size_hint_bytes=self.config.task_size_hint_bytes,
                per_item_seconds=measured.per_item_seconds,
                holds_gil=measured.holds_gil,
                cpu_ratio=measured.cpu_ratio,
                thread_scaling=measured.thread_scaling,
                item_bytes=measured.item_bytes,
                warm_pools=warm,
            )
        return explain_selection(profile, self._snapshot)

    # -- the map ----------------------------------------------------------------------------

    def execute(self, call: MapCall, work: list[Any], seeds: list[Any] | None) -> list[Any]:
        """Pilot the first items (or recall their measurements), choose, run the rest there."""
        fn, bar = call.fn, call.bar
        started = time.perf_counter()
        head: list[Any] = []
        measured: _Measured | None = None
        if self.config.worker_initializer is None:
            head, measured = self._measure(fn, work, seeds, _fn_key(fn, self._forget))
        # With a worker initializer nothing runs in the calling thread or on probe threads
        # (they are not workers); the choice rests on the caller's hints and every item goes
        # to one executor, so the initializer runs once per worker of that executor.
        done = len(head)
        if bar is not None and done:
            bar.update(done)
        selection = self._select(len(work) - done, measured)
        if (
            measured is not None
            and selection.strategy == "sequential"
            and len(work) * measured.per_item_seconds >= _min_parallel_work()
        ):
            # A pool that would pay off on a repeat of the whole map starts now, for next time:
            # on a first map if it pays off even cold; on a repeat (the measurements were
            # remembered, so this function comes back) if it pays off once warm.
            whole = self._select(len(work), measured, assume_warm=not done)
            if whole.strategy != "sequential" and _starts_in_background(whole.strategy):
                self._warm_in_background(whole.strategy)
        self.last_selection = selection
        self.last_strategy, self.last_reason = selection.strategy, selection.reason
        if telemetry.wanted(self.config.telemetry, self.config.telemetry_path):
            self._emit_decision(selection, measured, len(work), done)
        rest = work[done:] if done else work
        rest_seeds = seeds[done:] if seeds is not None and done else seeds
        try:
            if not rest:
                tail: list[Any] = []
            elif selection.strategy == "sequential" and measured is not None:
                tail = self.run_serially(
                    call, rest, rest_seeds, offset=done, per_item_s=measured.per_item_seconds
                )
            else:
                tail = self._run_pooled(selection.strategy, call, rest, rest_seeds, done)
        finally:
            wall = time.perf_counter() - started
            self.metrics.add(maps=1, tasks_submitted=len(work), total_duration=wall)
        self.metrics.add(tasks_completed=len(work))
        if not head:
            return tail
        tail[:0] = head
        return tail

    def _emit_decision(
        self, selection: Selection, measured: _Measured | None, items: int, done: int
    ) -> None:
        self._emit(
            "decision",
            {
                "source": "auto",
                "strategy": selection.strategy,
                "reason": selection.reason,
                "items": items,
                "pilot_items": done,
                "per_item_seconds": None if measured is None else measured.per_item_seconds,
                "holds_gil": None if measured is None else measured.holds_gil,
                "estimates": selection.estimates,
                "budget": self.budget.count,
                "limited_by": self.budget.limited_by,
            },
        )

    def _run_pooled(
        self,
        strategy: str,
        call: MapCall,
        rest: list[Any],
        seeds: list[Any] | None,
        offset: int,
    ) -> list[Any]:
        head: list[Any] = []
        if _starts_in_background(strategy) and self.config.worker_initializer is None:
            warmup = self._warm_in_background(strategy)
            # Run items here until the pool is up, instead of waiting idle for it.
            while rest and not warmup.ready.is_set():
                head += self.run_serially(
                    call, rest[:1], None if seeds is None else seeds[:1], offset=offset
                )
                rest, seeds, offset = rest[1:], None if seeds is None else seeds[1:], offset + 1
            if not rest:
                return head
        try:
            # the chosen executor watches this call's own cancel flag and deadline
            return head + self._executor(strategy).execute(call, rest, seeds)
        except BaseException as exc:
            _shift_item_index(exc, offset, strategy)
            raise

    # -- hooks and lifecycle ------------------------------------------------------------------

    def release_pool(self, kill: bool) -> None:
        """Shut down every executor this one handed work to (and their warm-ups)."""
        for warmup in list(self._warmups.values()):
            warmup.thread.join()
        self._warmups.clear()
        with self._pool_lock:
            executors, self._executors = dict(self._executors), {}
        for executor in executors.values():
            executor.shutdown(cancel=kill)


def _min_parallel_work() -> float:
    from ..heuristics import AUTO_MIN_PARALLEL_WORK_S

    return AUTO_MIN_PARALLEL_WORK_S


def _fn_key(fn: Callable[..., Any], forget: Callable[[Any], None]) -> Hashable | None:
    """A weak key under which ``fn``'s measurements are remembered; None if there can be none.

    The key never keeps ``fn`` (or a model it carries) alive: when ``fn`` is collected,
    ``forget`` drops its entry. A bound method is keyed by its object and function, so the
    same method of the same object finds its measurements again.
    """
    try:
        if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
            return weakref.WeakMethod(fn, forget)
        key = weakref.ref(fn, forget)
        hash(key)
    except TypeError:
        return None
    return key


def _shift_item_index(exc: BaseException, offset: int, strategy: str) -> None:
    """Make the failing item's index count from the start of the whole map, not the remainder."""
    index = getattr(exc, "ce_parallel_item_index", None)
    if index is None or offset == 0:
        return
    exc.ce_parallel_item_index = index + offset  # type: ignore[attr-defined]
    notes = getattr(exc, "__notes__", None)
    old = f"ce-parallel: raised by item {index} (strategy {strategy!r})"
    if isinstance(notes, list) and old in notes:
        notes[notes.index(old)] = (
            f"ce-parallel: raised by item {index + offset} (strategy 'auto' running {strategy!r})"
        )
    elif exc.args and isinstance(exc.args[0], str) and old in exc.args[0]:
        new = f"ce-parallel: raised by item {index + offset} (strategy 'auto' running {strategy!r})"
        exc.args = (exc.args[0].replace(old, new), *exc.args[1:])


__all__ = ["AutoExecutor"]
