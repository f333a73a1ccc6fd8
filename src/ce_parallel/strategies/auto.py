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
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from .. import costing, telemetry
from ..answers import Answers
from ..asking import nested_in
from ..config import operator_switch
from ..costs import Measurement
from ..decision import ParallelDecision
from ..executor import (
    MapCall,
    ParallelExecutor,
    annotate_item_error,
    create_executor,
    shift_item_index,
)
from ..gate import Ground, Question, decide
from ..registry import strategy_record
from ..resources import Resources
from ..selection import Selection, WorkloadProfile, explain_selection, selectable
from ..serial_loop import check_call

#: How many selections (and gate decisions) an executor remembers (cleared when full).
SELECTION_CACHE_SIZE = 256


def _starts_in_background(strategy: str) -> bool:
    # a pool of child processes is worth starting while the caller keeps running items
    return strategy_record(strategy).separate_processes


def _noop(_: Any) -> None:
    return None


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
        self._selections: Answers[tuple[Any, ...], Selection] = Answers(SELECTION_CACHE_SIZE)
        self._decisions: Answers[tuple[Question, int], ParallelDecision] = Answers(
            SELECTION_CACHE_SIZE
        )
        # the operator's kill switch holds on this front door too (read once, as the facade does)
        self._ground = Ground(
            self.config, self._snapshot, operator_switch() is False, front_door="executor"
        )
        #: The strategy and reason of the last map (what ran the items after the pilot).
        self.last_decision: ParallelDecision | None = None
        self.last_strategy: str | None = None
        self.last_reason: str | None = None
        self.last_selection: Selection | None = None

    # -- the selection ----------------------------------------------------------------------

    def executor_for(self, strategy: str) -> ParallelExecutor:
        """The executor of ``strategy`` this one hands work to (created once, then reused, and
        shut down with this one)."""
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
            warmup = _Warmup(self.executor_for(strategy))
            self._warmups[strategy] = warmup
        return warmup

    def _measure(
        self, fn: Callable[..., Any], work: list[Any], seeds: list[Any] | None
    ) -> costing.Costing:
        """Recall what an earlier map of ``fn`` measured (nothing runs), or run the pilot."""
        known = costing.recall(fn)
        if known is not None and known.measurement is not None:
            enough = len(work) * known.measurement.per_item_s
            if known.measurement.holds_gil is not None or enough < _min_parallel_work():
                return known
        try:
            return costing.measure(fn, work, seeds, probe_threads=min(2, self.workers))
        except costing.PilotError as failure:
            self.metrics.add(failures=1)
            annotate_item_error(failure.error, failure.index, self.name, None)
            raise failure.error from None

    def _select(self, n: int, measured: Measurement | None, assume_warm: bool = False) -> Selection:
        warm = frozenset(selectable()) if assume_warm else self._warm_pools()
        # a selection depends only on these and on what the executor fixed at construction, and
        # a repeated map asks the same question again: answer it from memory
        key = (n, measured, warm)
        known = self._selections.get(key)
        if known is None:
            known = self._selections.put(key, self._new_selection(n, measured, warm))
        return known

    def _new_selection(
        self, n: int, measured: Measurement | None, warm: frozenset[str]
    ) -> Selection:
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
                per_item_seconds=measured.per_item_s,
                holds_gil=measured.holds_gil,
                cpu_ratio=measured.cpu_ratio,
                thread_scaling=measured.thread_scaling,
                item_bytes=measured.item_bytes,
                warm_pools=warm,
                observed=measured.observed,
            )
        return explain_selection(profile, self._snapshot)

    # -- the map ----------------------------------------------------------------------------

    def execute(self, call: MapCall, work: list[Any], seeds: list[Any] | None) -> list[Any]:
        """Pilot the first items (or recall their measurements), choose, run the rest there."""
        fn, bar = call.fn, call.bar
        # a call cancelled (shutdown) before it got here runs nothing, not even its pilot
        check_call(call, self.name, self.metrics, 0)
        started = time.perf_counter()
        cost: costing.Costing | None = None
        if self.config.worker_initializer is None:
            cost = self._measure(fn, work, seeds)
        head = cost.head if cost is not None else []
        measured = cost.measurement if cost is not None else None
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
            and len(work) * measured.per_item_s >= _min_parallel_work()
        ):
            # A pool that would pay off on a repeat of the whole map starts now, for next time:
            # on a first map if it pays off even cold; on a repeat (the measurements were
            # remembered, so this function comes back) if it pays off once warm.
            whole = self._select(len(work), measured, assume_warm=not done)
            if whole.strategy != "sequential" and _starts_in_background(whole.strategy):
                self._warm_in_background(whole.strategy)
        decision = self._gate(selection, measured, cost, len(work), len(work) - done)
        strategy = decision.strategy
        self.last_selection = selection
        self.last_decision = decision
        self.last_strategy = strategy
        self.last_reason = selection.reason if strategy == selection.strategy else decision.detail
        rest = work[done:] if done else work
        rest_seeds = seeds[done:] if seeds is not None and done else seeds
        # a pool that was cold before this run starts during it: such a run is not typical of
        # the strategy, and must not correct what is remembered about fn
        typical = strategy == "sequential" or strategy in self._warm_pools()
        run_started = time.perf_counter()
        try:
            if not rest:
                tail: list[Any] = []
            elif strategy == "sequential" and measured is not None:
                # the pilot ran here already: the rest runs here too, in blocks sized from it
                per_item = measured.per_item_s
                tail = self.run_serially(call, rest, rest_seeds, offset=done, per_item_s=per_item)
            else:
                tail = self._run_pooled(strategy, call, rest, rest_seeds, done)
        finally:
            wall = time.perf_counter() - started
            self.metrics.add(maps=1, tasks_submitted=len(work), total_duration=wall)
        if cost is not None and rest and typical:
            # a run far from its estimate, or slower than a pool of the other kind was
            # estimated at, corrects what is remembered about fn
            costing.check_run(
                cost,
                strategy,
                len(rest),
                time.perf_counter() - run_started,
                selection.estimates.get(strategy),
                serial_s=selection.estimates.get("sequential"),
                runner_up_s=selection.other_kind_s(strategy),
            )
        self.metrics.add(tasks_completed=len(work))
        if not head:
            return tail
        tail[:0] = head
        return tail

    def _gate(
        self,
        selection: Selection,
        measured: Measurement | None,
        cost: costing.Costing | None,
        n_instances: int,
        n_items: int,
    ) -> ParallelDecision:
        """The gate's decision on the selection: the same table, record and reasons as the
        facade's (operator switch, nesting, budget, payload; the choice itself is the cost
        rule's verdict)."""
        question = Question(
            n_instances=n_instances,
            n_items=n_items,
            per_item_s=None if measured is None else measured.per_item_s,
            cost_source="assumed" if cost is None else cost.source,  # type: ignore[arg-type]
            spread=0.0 if measured is None else measured.spread,
            holds_gil=None if measured is None else measured.holds_gil,
            requested=selection.strategy,
            warm=selection.strategy in self._warm_pools(),
            nested=nested_in(False),
            cost_verdict=selection.reason if selection.strategy == "sequential" else None,
        )
        key = (question, self.config.revision)
        decision = self._decisions.get(key)
        if decision is None:
            # the same question (a repeated map) gets the same answer without the rules again
            decision = self._decisions.put(key, decide(question, self._ground))
        if telemetry.wanted(self.config.telemetry, self.config.telemetry_path):
            payload = decision.as_dict()
            payload.update(
                source="auto",
                chosen=selection.strategy,
                choice=selection.reason,
                estimates=selection.estimates,
            )
            self._emit("decision", payload)
        return decision

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
            return head + self.executor_for(strategy).execute(call, rest, seeds)
        except BaseException as exc:
            shift_item_index(exc, offset, strategy)
            raise

    def start_pools(
        self, strategies: Iterable[str] | None = None, *, timeout: float | None = None
    ) -> dict[str, ParallelExecutor]:
        """Start the pools this executor may choose (default: every one ``selection`` may
        return), wait for each to have run a first task, and return them by strategy.

        A long-running service that maps the same work again and again has its pool warm after
        the first maps; this gets it there before the first. A started pool counts as warm for
        every later choice. ``timeout`` bounds the wait for each pool (seconds); a pool that
        fails to start is left to the map's own fallback.
        """
        self._check_open()
        wanted = tuple(selectable() if strategies is None else strategies)
        for name in wanted:
            strategy_record(name)  # an unknown name is refused, naming what is accepted
        started = {}
        for name in wanted:
            if name == "sequential":
                continue
            if _starts_in_background(name):
                self._warm_in_background(name).ready.wait(timeout)
            started[name] = self.executor_for(name)
        return started

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


__all__ = ["AutoExecutor"]
