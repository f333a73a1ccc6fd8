"""``ParallelFacade``: the conservative front door.

Library code calls ``facade.map(fn, items)`` where it used to write ``if n > threshold:
pool.map(...) else: loop``. The facade learns what the items cost (a hint, a remembered
measurement, or a pilot of the first items whose results it keeps), asks the one gate
(``gate.decide``) whether a pool clearly pays, records the decision, and runs the rest of the
work on a pooled executor or serially; the results are always those of the serial loop.

Precedence of the settings, strongest first:

1. ``CE_PARALLEL=off``: the operator's kill switch. Nothing in code overrides it.
2. Per-call hints: ``executor=``, ``bytes_hint=``, ``seconds_per_item=``, ``n_features=``.
3. The ``CE_PARALLEL`` / ``CE_PARALLEL_FULL`` environment variables.
4. The ``ParallelConfig`` object (or the facade's ``executor=``).

The environment and the machine (``Resources``) are read once, when the facade is built.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from . import costing, heuristics
from ._warn import warn_at_caller
from .answers import Answers
from .asking import joblib_says_serial, nested_in
from .callers import (
    call_site,
    check_executor,
    describe_executor,
    type_name,
)
from .checks import check_int, rejected
from .config import ENV_FULL, ParallelConfig, operator_switch
from .decision import FullMatrixWarning, ParallelDecision
from .engine import caller_items_of_last_map, clear_last_map
from .executor import shift_item_index, spawn_seeds
from .gate import Ground, Question, decide
from .metrics import ParallelMetrics
from .pools import FacadePools
from .registry import conservative_strategies, strategy_records
from .repeats import repeat_key, repeatable
from .resources import Resources, detect_resources
from .serial_loop import run_one_block
from .telemetry import TelemetryCallback, emit, linked, wanted
from .worker import IN_WORKER_ENV

R = TypeVar("R")

#: Decisions the facade remembers for questions that repeat (hints, remembered costs, counts);
#: the memory is cleared when full. Deciding costs ~15 us, a remembered decision ~1 us, which
#: keeps the facade's serial path within a few percent of the plain loop on tiny work.
DECISION_CACHE_SIZE = 256


def full_matrix_strategies() -> tuple[str, ...]:
    """Strategies available only with the full matrix (``full_matrix=True`` or
    ``CE_PARALLEL_FULL=1``): every registered one outside the conservative subset."""
    return tuple(n for n, r in strategy_records().items() if not r.conservative)


class ParallelFacade:
    """The conservative front door: measure, decide, record, then run like the serial loop.

    ``config`` defaults to ``ParallelConfig()`` (serial); the ``CE_PARALLEL*`` variables are
    applied on top of it. ``executor`` is a caller's executor to run parallel work on: one of
    ours, or anything with ``map(fn, items)`` (a ``concurrent.futures`` executor,
    calibrated-explanations' executor, ...); its ``config.enabled`` flag, when it has one, is
    honoured, and the facade never shuts it down. ``telemetry`` is a callback
    ``telemetry(event, payload)`` that receives every record (it replaces ``config.telemetry``).
    ``resources`` and ``environ`` replace the machine and the process environment, for
    deterministic decisions in tests and reproducible runs. ``metrics``, when given, is shared
    by every executor the facade creates (one set of counters for an adapter's caller).

    Pooled executors are reused across ``map`` calls and, with ``share_pools`` (the default),
    shared with every other facade of the same configuration in the process (``pools``): a
    facade built inside a library function finds the pool its previous call started. ``close()``
    (or the end of a ``with`` block) releases the facade's hold; an idle shared pool is shut
    down by ``ce_parallel.release_shared_pools()`` or at exit. One facade may be used from many
    threads at once and from inside the functions it runs.
    """

    def __init__(
        self,
        config: ParallelConfig | None = None,
        *,
        executor: Any | None = None,
        telemetry: TelemetryCallback | None = None,
        resources: Resources | None = None,
        environ: Mapping[str, str] | None = None,
        metrics: ParallelMetrics | None = None,
        share_pools: bool = True,
    ) -> None:
        if config is not None and not isinstance(config, ParallelConfig):
            raise rejected("ParallelFacade(config)", config, "a ce_parallel.ParallelConfig or None")
        if executor is not None:
            check_executor("ParallelFacade(executor=...)", executor)
        if telemetry is not None and not callable(telemetry):
            raise rejected(
                "ParallelFacade(telemetry)", telemetry, "a callable telemetry(event, payload)"
            )
        env: Mapping[str, str] = os.environ if environ is None else environ
        merged = ParallelConfig.from_env(config, env)
        if telemetry is not None:
            merged = merged.replace(telemetry=telemetry)
        self.config: ParallelConfig = merged
        operator = operator_switch(env)
        self._operator_off = operator is False
        self._operator_forced = operator is True
        self._env_in_worker = env.get(IN_WORKER_ENV) == "1"
        self.resources: Resources = (
            resources
            if resources is not None
            else detect_resources(env, max_workers=merged.max_workers)
        )
        self._executor = executor
        self._pools = FacadePools(merged, self.resources, metrics, share_pools)
        self._lock = threading.Lock()
        self._warned_full_matrix = False
        self._decisions: Answers[tuple[Any, ...], ParallelDecision] = Answers(DECISION_CACHE_SIZE)
        #: serial decisions of repeated maps, run without asking again (``repeats.repeat_key``)
        self._repeats: Answers[tuple[Any, ...], tuple[ParallelDecision, costing.Costing | None]] = (
            Answers(DECISION_CACHE_SIZE)
        )
        self._closed = False
        self.last_decision: ParallelDecision | None = None

    @classmethod
    def from_env(
        cls,
        base: ParallelConfig | None = None,
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> ParallelFacade:
        """A facade for ``base`` (or the defaults) with ``CE_PARALLEL`` / ``CE_PARALLEL_FULL``
        applied. ``environ`` defaults to ``os.environ``; ``kwargs`` go to the constructor.
        """
        return cls(base, environ=environ, **kwargs)

    # -- deciding ------------------------------------------------------------------------------

    def decide_use_parallel(
        self,
        n_instances: int,
        n_features: int = 1,
        *,
        bytes_hint: int | None = None,
        executor: Any | None = None,
        seconds_per_item: float | None = None,
    ) -> ParallelDecision:
        """Decide whether ``n_instances`` items of ``n_features`` units each run in parallel.

        ``bytes_hint`` is the payload each task carries (default: ``task_size_hint_bytes``),
        ``executor`` a caller's executor for this call (default: the facade's),
        ``seconds_per_item`` the cost of one item. Without it nothing can be measured here, so
        the decision rests on the conservative assumption (``cost_source="assumed"``:
        ``n_features`` x ``FACADE_SECONDS_PER_WORK_ITEM`` per instance) and the count rules;
        ``map`` measures instead. Emits one ``decision`` record and returns it.
        """
        self._check_question(n_instances, n_features, bytes_hint, seconds_per_item, executor)
        cost = None if seconds_per_item is None else costing.hinted(seconds_per_item)
        decision, _ = self._decide(
            n_instances, n_features, bytes_hint, executor, cost, n_instances, call_site(2)
        )
        return decision

    def _check_question(
        self,
        n_instances: Any,
        n_features: Any,
        bytes_hint: Any,
        seconds_per_item: Any,
        executor: Any,
    ) -> None:
        check_int("n_instances", n_instances, 0, optional=False)
        check_int("n_features", n_features, 1, optional=False)
        check_int("bytes_hint", bytes_hint, 0)
        from .checks import check_seconds

        check_seconds("seconds_per_item", seconds_per_item)
        if executor is not None:
            check_executor("executor", executor)
        self.config.validate()

    def _decide(
        self,
        n_instances: int,
        n_features: int,
        bytes_hint: int | None,
        executor: Any | None,
        cost: costing.Costing | None,
        n_items: int,
        site: str,
        fn_bytes: int = 0,
    ) -> tuple[ParallelDecision, Any | None]:
        """The gate's decision (and the caller's executor to run on, when it decides so)."""
        chosen = executor if executor is not None else self._executor
        if chosen is None:
            requested, enabled, workers, executor_type = self.config.strategy, True, None, None
        else:
            requested, enabled, workers = describe_executor(chosen)
            executor_type = type_name(chosen)
        if self._gated(requested):
            self._warn_full_matrix(requested)
        nested = nested_in(self._env_in_worker)
        measurement = None if cost is None else cost.measurement
        target = heuristics.FULL_MATRIX_SUBSTITUTE if self._gated(requested) else requested
        observed = None if measurement is None else measurement.observed_for(target)
        if bytes_hint is None and measurement is not None and measurement.item_bytes:
            # no hint, but the pilot measured what one item costs to send
            bytes_hint = measurement.item_bytes
            record = strategy_records().get(target)
            if record is not None and record.shares_objects:
                bytes_hint = measurement.item_unshared_bytes or bytes_hint
        if measurement is not None and measurement.fn_bytes:
            fn_bytes = measurement.fn_bytes
        question = Question(
            library_serial=(
                joblib_says_serial(target, self.resources.budget.count) if chosen is None else None
            ),
            n_instances=n_instances,
            n_features=n_features,
            n_items=n_items,
            bytes_hint=bytes_hint,
            per_item_s=None if cost is None else cost.per_item_s,
            cost_source="assumed" if cost is None else cost.source,  # type: ignore[arg-type]
            spread=0.0 if measurement is None else measurement.spread,
            observed_s=observed,
            holds_gil=None if measurement is None else measurement.holds_gil,
            requested=requested,
            executor_type=executor_type,
            executor_enabled=enabled,
            executor_workers=workers,
            warm=chosen is not None or self._warm(target),
            nested=nested,
            fn_bytes=fn_bytes,
        )
        key = None
        if chosen is None and (cost is None or cost.source != "pilot"):
            key = (question, self.config.revision)
            known = self._decisions.get(key)
            if known is not None:
                return self._record(known, site), None
        ground = Ground(
            self.config, self.resources, self._operator_off, self._operator_forced, "facade"
        )
        decision = decide(question, ground)
        if key is not None:
            self._decisions.put(key, decision)
        given = chosen if (decision.use_parallel and decision.reason == "enabled") else None
        return self._record(decision, site), given

    def _record(self, decision: ParallelDecision, site: str) -> ParallelDecision:
        config = self.config
        if wanted(config.telemetry, config.telemetry_path):
            decision = _stamped(decision, site)
            emit(
                "decision",
                decision.as_dict(),
                callback=config.telemetry,
                path=config.telemetry_path,
            )
        self.last_decision = decision
        return decision

    def target_strategy(self) -> str:
        """The strategy a parallel decision of this facade would run (the conservative
        substitute when the configured one needs the full matrix)."""
        requested = self.config.strategy
        return heuristics.FULL_MATRIX_SUBSTITUTE if self._gated(requested) else requested

    def _gated(self, requested: str) -> bool:
        record = strategy_records().get(requested)
        return record is not None and not record.conservative and not self.config.full_matrix

    def _warm(self, strategy: str) -> bool:
        return self._pools.warm(strategy)

    def _warn_full_matrix(self, requested: str) -> None:
        with self._lock:
            if self._warned_full_matrix:
                return
            self._warned_full_matrix = True
        warn_at_caller(
            f"strategy {requested!r} is outside the conservative subset "
            f"({', '.join(conservative_strategies())}); running "
            f"{heuristics.FULL_MATRIX_SUBSTITUTE!r} instead. Set {ENV_FULL}=1 or "
            "ParallelConfig(full_matrix=True) to use it.",
            FullMatrixWarning,
        )

    # -- running -------------------------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., R],
        items: Iterable[Any],
        *,
        n_instances: int | None = None,
        n_features: int = 1,
        bytes_hint: int | None = None,
        seconds_per_item: float | None = None,
        executor: Any | None = None,
        chunksize: int | None = None,
        timeout: float | None = None,
        progress: bool = False,
        seed: Any = None,
    ) -> list[R]:
        """Return ``[fn(x) for x in items]``: learn the cost, decide, record, then run.

        Without ``seconds_per_item`` the cost of an item comes from an earlier measurement of
        ``fn`` or from a pilot: the first items run here and their results are kept. Parallel
        work runs on the caller's executor or on a pooled executor of the decided strategy;
        serial work on a ``SerialExecutor``. ``progress`` and ``seed`` behave as in
        ``ParallelExecutor.map`` on every path. ``chunksize`` and ``timeout`` apply to
        ce-parallel executors. ``n_instances`` (default: the number of items) is what the count
        rules weigh when the items are not the instances. The decision is ``last_decision``.
        """
        if not callable(fn):
            raise TypeError(f"map() needs a callable as fn; got {type(fn).__name__}: {fn!r}")
        if self._closed:
            raise RuntimeError("this ParallelFacade has been closed; create a new one")
        work = items if isinstance(items, list) else list(items)
        repeat = None
        if executor is None and seed is None and timeout is None and not progress:
            if self._executor is None:
                repeat = repeat_key(
                    fn,
                    (len(work), n_instances, n_features, bytes_hint, seconds_per_item),
                    self.config,
                    self.resources.budget.count,
                )
            known = None if repeat is None else self._repeats.get(repeat)
            ran = None if known is None else self._run_repeat(known, fn, work)
            if ran is not None:
                return ran
        instances = len(work) if n_instances is None else n_instances
        self._check_question(instances, n_features, bytes_hint, seconds_per_item, executor)
        recorded = wanted(self.config.telemetry, self.config.telemetry_path)
        site = call_site(2) if recorded else ""
        seeds = spawn_seeds(seed, len(work)) if seed is not None and work else None
        cost = self._costing(fn, work, seeds, seconds_per_item, executor)
        done = len(cost.head) if cost is not None else 0
        decision, given = self._decide(
            instances, n_features, bytes_hint, executor, cost, len(work) - done, site
        )
        if repeat is not None and repeatable(decision, cost, len(work), self.config):
            self._repeats.put(repeat, (decision, cost))
        rest = work[done:] if done else work
        rest_seeds = seeds[done:] if seeds is not None and done else seeds
        started = time.perf_counter()
        clear_last_map()
        try:
            if recorded:
                # every record the run emits, on whichever executor, names this decision
                with linked(decision_id=decision.decision_id, call_site=site):
                    tail = self._pools.run(
                        decision, given, fn, rest, rest_seeds, chunksize, timeout, progress
                    )
            else:
                tail = self._pools.run(
                    decision, given, fn, rest, rest_seeds, chunksize, timeout, progress
                )
        except BaseException as exc:
            shift_item_index(exc, done, decision.strategy)
            raise
        wall = time.perf_counter() - started
        self._after_run(fn, decision, cost, len(rest), wall)
        if not done:
            return tail
        tail[:0] = cost.head if cost is not None else []
        return tail

    def _after_run(
        self,
        fn: Callable[..., Any],
        decision: ParallelDecision,
        cost: costing.Costing | None,
        items: int,
        wall: float,
    ) -> None:
        """Learn from the run: what a serial run measured, or how far off its prediction was."""
        if cost is None and items and not decision.use_parallel:
            # the serial run measured what the items cost: the next map of fn decides on it
            # (and, whatever made it serial, a cheap repeat runs as one block: ``repeatable``)
            costing.learn(fn, wall / items, items)
        elif (
            cost is not None
            and not (decision.use_parallel and decision.start_cost_s > 0)
            and not caller_items_of_last_map()
        ):
            # a run checks the measurement it was predicted from; the first run of a cold pool
            # is not typical of the pool (its start-up is measured on its own instead), nor is
            # one whose caller ran items while the workers warmed up
            predicted = (
                decision.estimated_parallel_s
                if decision.use_parallel
                else decision.estimated_serial_s
            )
            serial = decision.estimated_serial_s if decision.use_parallel else None
            costing.check_run(cost, decision.strategy, items, wall, predicted, serial_s=serial)

    # -- repeated questions --------------------------------------------------------------------

    def _run_repeat(
        self,
        known: tuple[ParallelDecision, costing.Costing | None],
        fn: Callable[..., Any],
        work: list[Any],
    ) -> list[Any] | None:
        """Run a repeated question's serial decision as the plain loop, and learn from it;
        None when the map must be decided and recorded in full instead."""
        decision, cost = known
        config = self.config
        if wanted(config.telemetry, config.telemetry_path):
            # a sink appeared (debug logging switched on): this map is recorded in full
            self._repeats.clear()
            return None
        serial = self._pools.serial()
        serial._check_open()  # as the tracked serial map checks it
        self.last_decision = decision
        if not work:
            return []
        results, wall = run_one_block(fn, work, serial.metrics)
        self._after_run(fn, decision, cost, len(work), wall)
        return results

    def _costing(
        self,
        fn: Callable[..., Any],
        work: list[Any],
        seeds: list[Any] | None,
        seconds_per_item: float | None,
        executor: Any | None,
    ) -> costing.Costing | None:
        """What the items cost: the hint, the memory, a pilot, or None (assumed)."""
        if seconds_per_item is not None:
            return costing.hinted(seconds_per_item)
        return costing.for_map(
            fn,
            work,
            seeds,
            target=self.target_strategy(),
            may_pilot=self._may_pilot(len(work), executor),
        )

    def _may_pilot(self, n: int, executor: Any | None) -> bool:
        """A pilot only where a parallel decision is possible and worth measuring for."""
        config = self.config
        if executor is not None or self._executor is not None:
            return False  # a caller's executor: its cost model is the caller's
        return (
            n >= heuristics.FACADE_PILOT_MIN_ITEMS
            and config.enabled
            and config.strategy != "sequential"
            and config.worker_initializer is None
            and not self._operator_off
            and nested_in(self._env_in_worker) is None
            and self.resources.budget.count >= 2
            and not (self.resources.ci and not self._operator_forced)
        )

    # -- lifetime ------------------------------------------------------------------------------

    @property
    def executors(self) -> dict[str, Any]:
        """The executors this facade runs on, by strategy (``"sequential"`` for the serial one)."""
        return self._pools.executors()

    def close(self, cancel: bool = False) -> None:
        """Shut down the executors this facade created for itself (never the caller's) and
        release its hold on shared pools; idempotent. ``cancel`` stops running maps and does
        not wait for busy workers (shared pools it holds alone are shut down too)."""
        self._closed = True
        self._pools.close(cancel=cancel)

    def __enter__(self) -> ParallelFacade:
        if self._closed:
            raise RuntimeError("this ParallelFacade has been closed; create a new one")
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ParallelFacade(enabled={self.config.enabled}, strategy={self.config.strategy!r}, "
            f"full_matrix={self.config.full_matrix}, cpu_budget={self.resources.budget.count})"
        )


def _stamped(decision: ParallelDecision, site: str) -> ParallelDecision:
    import dataclasses

    return dataclasses.replace(decision, decision_id=uuid.uuid4().hex, call_site=site)


__all__ = ["ParallelFacade", "full_matrix_strategies"]
