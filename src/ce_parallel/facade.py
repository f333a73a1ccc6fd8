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

import functools
import os
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import BrokenExecutor
from typing import Any, TypeVar

from . import costing, heuristics
from ._warn import warn_at_caller
from .callers import call_site, check_executor, describe_executor, is_ours, type_name
from .checks import check_int, rejected
from .config import ENV_FULL, ParallelConfig, operator_switch
from .decision import FullMatrixWarning, ParallelDecision
from .errors import classify_failure
from .executor import MapCall, SpawnedSeeds, annotate_item_error, shift_item_index, spawn_seeds
from .gate import Ground, Question, decide
from .metrics import ParallelMetrics
from .registry import conservative_strategies, strategy_records
from .resources import Resources, detect_resources
from .telemetry import TelemetryCallback, emit, fallback_record, linked, run_record, wanted
from .worker import IN_WORKER_ENV, call_with_rng, in_worker

R = TypeVar("R")

#: Decisions the facade remembers for questions that repeat (hints, remembered costs, counts);
#: the memory is cleared when full. Deciding costs ~15 us, a remembered decision ~1 us, which
#: keeps the facade's serial path within a few percent of the plain loop on tiny work.
DECISION_CACHE_SIZE = 256


#: The cancel flag of the facade's serial fast path: never set (the facade has no cancel()).
_NEVER_SET = threading.Event()
#: Serial decisions after which the run's time is worth remembering as the function's cost:
#: those a known cost could have turned (not the operator's switch, nesting or the config).
_MEASURING_REASONS = frozenset({"below_min_instances", "tiny_workload", "spawn_cost"})


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

    The facade owns the executors it creates: they are pooled per strategy, reused across
    ``map`` calls, and released by ``close()`` or the end of a ``with`` block. One facade may be
    used from many threads at once and from inside the functions it runs.
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
        self._metrics = metrics
        self._pools: dict[str, Any] = {}
        self._ran: set[str] = set()  # strategies whose pool this facade has run a map on
        self._serial: Any | None = None
        self._lock = threading.Lock()
        self._warned_full_matrix = False
        self._decisions: dict[tuple[Any, ...], ParallelDecision] = {}
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
        nested = "ce-parallel worker" if (in_worker() or self._env_in_worker) else None
        measurement = None if cost is None else cost.measurement
        target = heuristics.FULL_MATRIX_SUBSTITUTE if self._gated(requested) else requested
        observed = None if measurement is None else measurement.observed_for(target)
        question = Question(
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
            key = (question,)
            known = self._decisions.get(key)
            if known is not None:
                return self._record(known, site), None
        ground = Ground(
            self.config, self.resources, self._operator_off, self._operator_forced, "facade"
        )
        decision = decide(question, ground)
        if key is not None:
            if len(self._decisions) >= DECISION_CACHE_SIZE:
                self._decisions.clear()
            self._decisions[key] = decision
        runner = chosen if (decision.use_parallel and decision.reason == "enabled") else None
        return self._record(decision, site), runner

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
        with self._lock:
            pool = self._pools.get(strategy)
            return pool is not None and strategy in self._ran and not pool.closed

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
        instances = len(work) if n_instances is None else n_instances
        self._check_question(instances, n_features, bytes_hint, seconds_per_item, executor)
        recorded = wanted(self.config.telemetry, self.config.telemetry_path)
        site = call_site(2) if recorded else ""
        seeds = spawn_seeds(seed, len(work)) if seed is not None and work else None
        cost = self._costing(fn, work, seeds, seconds_per_item, executor)
        done = len(cost.head) if cost is not None else 0
        decision, runner = self._decide(
            instances, n_features, bytes_hint, executor, cost, len(work) - done, site
        )
        rest = work[done:] if done else work
        rest_seeds = seeds[done:] if seeds is not None and done else seeds
        started = time.perf_counter()
        try:
            if recorded:
                # every record the run emits, on whichever executor, names this decision
                with linked(decision_id=decision.decision_id, call_site=site):
                    tail = self._run(
                        decision, runner, fn, rest, rest_seeds, chunksize, timeout, progress
                    )
            else:
                tail = self._run(
                    decision, runner, fn, rest, rest_seeds, chunksize, timeout, progress
                )
        except BaseException as exc:
            shift_item_index(exc, done, decision.strategy)
            raise
        wall = time.perf_counter() - started
        if cost is None and rest and decision.reason in _MEASURING_REASONS:
            # the serial run measured what the items cost: the next map of fn decides on it
            costing.learn(fn, wall / len(rest), len(rest))
        elif cost is not None:
            predicted = (
                decision.estimated_parallel_s
                if decision.use_parallel
                else (decision.estimated_serial_s)
            )
            costing.check_run(
                cost, decision.strategy, len(rest), wall, predicted, decision.start_cost_s
            )
        if not done:
            return tail
        tail[:0] = cost.head if cost is not None else []
        return tail

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
        known = costing.recall(fn)
        if known is not None:
            return known
        if not self._may_pilot(len(work), executor):
            return None
        requested = self.config.strategy
        record = strategy_records().get(requested)
        probe = 2 if record is not None and not record.pickles_work else 0
        try:
            return costing.measure(fn, work, seeds, probe_threads=probe)
        except costing.PilotError as failure:
            annotate_item_error(failure.error, failure.index, "sequential", None)
            raise failure.error from None

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
            and not (in_worker() or self._env_in_worker)
            and self.resources.budget.count >= 2
            and not (self.resources.ci and not self._operator_forced)
        )

    def _run(
        self,
        decision: ParallelDecision,
        runner: Any | None,
        fn: Callable[..., R],
        work: list[Any],
        seeds: list[Any] | None,
        chunksize: int | None,
        timeout: float | None,
        progress: bool,
    ) -> list[R]:
        if not work:
            return []
        seed = None if seeds is None else SpawnedSeeds(seeds)
        if not decision.use_parallel:
            serial = self._serial_executor()
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                if progress or timeout is not None:
                    return serial.map(fn, work, progress=progress, timeout=timeout, seed=seed)
                # the fast path: the decision is made, the arguments checked, and nobody can
                # cancel this call (the facade has no cancel()): no flag of its own is needed
                call = MapCall(fn, cancelled=_NEVER_SET, per_item_s=decision.per_item_s)
                return serial.execute(call, work, seeds)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._emit_run(decision, len(work), time.perf_counter() - started, error)
        if runner is not None and not is_ours(runner):
            return self._run_external(runner, decision, fn, work, seeds)
        pool = runner if runner is not None else self._pool(decision.strategy, decision.workers)
        cold = runner is None and not self._warm(decision.strategy)
        before = pool.metrics.snapshot()
        results: list[R] = pool.map(
            fn, work, chunksize=chunksize, timeout=timeout, progress=progress, seed=seed
        )
        if runner is None:
            with self._lock:
                self._ran.add(decision.strategy)
            if cold:
                _measure_start(decision.strategy, pool, before)
        return results

    def _emit_run(
        self, decision: ParallelDecision, items: int, wall: float, error: BaseException | None
    ) -> None:
        config = self.config
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
        )
        record["serial"] = True
        self._emit("run", record)

    def _run_external(
        self,
        runner: Any,
        decision: ParallelDecision,
        fn: Callable[..., R],
        work: list[Any],
        seeds: list[Any] | None,
    ) -> list[R]:
        """Run on a caller's executor; its infrastructure failures fall back like ours do."""
        call: Callable[..., Any] = fn
        args: list[Any] = work
        if seeds is not None:
            call = functools.partial(_call_seeded, fn)
            args = list(zip(work, seeds, strict=True))
        started = time.perf_counter()
        error: BaseException | None = None
        fallbacks = 0
        try:
            results: list[R] = list(runner.map(call, args))
        except (BrokenExecutor, pickle.PicklingError) as exc:
            # the caller's pool broke or could not pickle the work: the machinery, not fn
            error = exc
            action = "serial" if self.config.fallback_to_serial else "raise"
            self._emit(
                "fallback",
                fallback_record(
                    strategy=decision.strategy,
                    cause=classify_failure(exc).__name__,
                    failure=exc,
                    action=action,
                    items=len(work),
                ),
            )
            if action == "raise":
                raise
            fallbacks = 1
            results = self._serial_executor().map(
                fn, work, seed=None if seeds is None else SpawnedSeeds(seeds)
            )
        except BaseException as exc:
            error = exc
            raise
        finally:
            # a caller's executor reports neither its chunks nor the time its workers were busy
            record = run_record(
                strategy=decision.strategy,
                items=len(work),
                chunks=None,
                workers=decision.workers,
                wall_time_s=time.perf_counter() - started,
                busy_time_s=None,
                fallbacks=fallbacks,
                error=error,
            )
            record["executor_type"] = decision.executor_type
            self._emit("run", record)
        return results

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        emit(event, payload, callback=self.config.telemetry, path=self.config.telemetry_path)

    def _pool(self, strategy: str, workers: int) -> Any:
        from .executor import create_executor

        with self._lock:
            if self._closed:
                raise RuntimeError("this ParallelFacade has been closed; create a new one")
            pool = self._pools.get(strategy)
            if pool is None or pool.closed:
                config = self.config.replace(strategy=strategy, enabled=True)
                pool = create_executor(config, max_workers=workers, resources=self.resources)
                if self._metrics is not None:
                    pool.metrics = self._metrics
                self._pools[strategy] = pool
            return pool

    def _serial_executor(self) -> Any:
        from .strategies.serial import SerialExecutor

        with self._lock:
            if self._serial is None:
                config = self.config.replace(strategy="sequential")
                self._serial = SerialExecutor(config, resources=self.resources)
                if self._metrics is not None:
                    self._serial.metrics = self._metrics
            return self._serial

    # -- lifetime ------------------------------------------------------------------------------

    @property
    def executors(self) -> dict[str, Any]:
        """The executors this facade created, by strategy (``"sequential"`` for the serial one)."""
        with self._lock:
            owned = dict(self._pools)
            if self._serial is not None:
                owned["sequential"] = self._serial
        return owned

    def close(self, cancel: bool = False) -> None:
        """Shut down every executor this facade created (never the caller's); idempotent.

        ``cancel`` stops running maps and does not wait for busy workers."""
        with self._lock:
            self._closed = True
            owned = list(self._pools.values())
            if self._serial is not None:
                owned.append(self._serial)
            self._pools.clear()
            self._ran.clear()
            self._serial = None
        for executor in owned:
            executor.shutdown(cancel=cancel)

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


def _call_seeded(fn: Callable[..., Any], pair: tuple[Any, Any]) -> Any:
    """``fn(item, rng=...)`` for an ``(item, SeedSequence)`` pair; picklable when ``fn`` is."""
    return call_with_rng(fn, pair[0], pair[1])


__all__ = ["ParallelFacade", "full_matrix_strategies"]
