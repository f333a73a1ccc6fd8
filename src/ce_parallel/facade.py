"""``ParallelFacade``: the conservative front door, and ``ParallelDecision``, the reason it gives.

Library code calls ``facade.map(fn, items)`` where it used to write ``if n > threshold:
pool.map(...) else: loop``. The facade decides (serial unless the work clearly pays for a pool),
records the decision, and runs the work on a pooled executor or serially; the results are
always those of the serial loop.

Precedence of the settings, strongest first:

1. ``CE_PARALLEL=off``: the operator's kill switch. Nothing in code overrides it.
2. Per-call hints: ``executor=``, ``bytes_hint=``, ``seconds_per_item=``, ``n_features=``.
3. The ``CE_PARALLEL`` / ``CE_PARALLEL_FULL`` environment variables.
4. The ``ParallelConfig`` object (or the facade's ``executor=``).

The environment and the machine (``Resources``) are read once, when the facade is built; a
decision depends only on them, the call's arguments and whether it is made inside one of our
workers, so the same inputs always give the same decision.
"""

from __future__ import annotations

import functools
import os
import pickle
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from . import heuristics
from .callers import (
    check_executor,
    describe_executor,
    executor_class_name,
    is_ours,
    type_name,
)
from .config import ENV_FULL, ENV_MAIN, ParallelConfig, operator_switch
from .decision import FullMatrixWarning, ParallelDecision
from .errors import ConfigurationError
from .registry import conservative_strategies, strategy_records
from .resources import Resources, detect_resources
from .telemetry import TelemetryCallback, emit, fallback_record, run_record, wanted
from .worker import IN_WORKER_ENV, call_with_rng, in_worker

R = TypeVar("R")

_SERIAL_EXECUTOR_TYPE = "SerialExecutor"


def full_matrix_strategies() -> tuple[str, ...]:
    """Strategies available only with the full matrix (``full_matrix=True`` or
    ``CE_PARALLEL_FULL=1``): every registered one outside the conservative subset."""
    return tuple(n for n, r in strategy_records().items() if not r.conservative)


#: Decisions the facade remembers for its own path (its inputs repeat across calls in a loop);
#: the memory is cleared when full. Deciding costs ~13 us, a remembered decision ~1 us, which
#: keeps the facade's serial path within a few percent of the plain loop on tiny work.
DECISION_CACHE_SIZE = 256


@dataclass(frozen=True)
class _Candidate:
    """What a decision weighs: the strategy and, for a caller's executor, that executor."""

    requested: str
    enabled: bool
    workers: int | None
    executor: Any | None
    executor_type: str


class ParallelFacade:
    """The conservative front door: decide, record, then run like the serial loop.

    ``config`` defaults to ``ParallelConfig()`` (serial); the ``CE_PARALLEL*`` variables are
    applied on top of it. ``executor`` is a caller's executor to run parallel work on: one of
    ours, or anything with ``map(fn, items)`` (a ``concurrent.futures`` executor,
    calibrated-explanations' executor, ...); its ``config.enabled`` flag, when it has one, is
    honoured, and the facade never shuts it down. ``telemetry`` is a callback
    ``telemetry(event, payload)`` that receives every record (it replaces ``config.telemetry``).
    ``resources`` and ``environ`` replace the machine and the process environment, for
    deterministic decisions in tests and reproducible runs.

    The facade owns the executors it creates: they are pooled per strategy, reused across
    ``map`` calls, and released by ``close()`` or the end of a ``with`` block.
    """

    def __init__(
        self,
        config: ParallelConfig | None = None,
        *,
        executor: Any | None = None,
        telemetry: TelemetryCallback | None = None,
        resources: Resources | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if config is not None and not isinstance(config, ParallelConfig):
            raise ConfigurationError(
                f"ParallelFacade(config={config!r}) is not accepted; expected a "
                "ce_parallel.ParallelConfig or None"
            )
        if executor is not None:
            check_executor("ParallelFacade(executor=...)", executor)
        if telemetry is not None and not callable(telemetry):
            raise ConfigurationError(
                f"ParallelFacade(telemetry={telemetry!r}) is not accepted; expected a callable "
                "telemetry(event, payload) or None"
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
        self._pools: dict[str, Any] = {}
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
        ``seconds_per_item`` the estimated cost of one item (default: ``n_features`` x
        ``FACADE_SECONDS_PER_WORK_ITEM``). Emits one ``decision`` record and returns it.
        """
        decision, _ = self._decide(n_instances, n_features, bytes_hint, executor, seconds_per_item)
        return decision

    def _decide(
        self,
        n_instances: int,
        n_features: int,
        bytes_hint: int | None,
        executor: Any | None,
        seconds_per_item: float | None,
    ) -> tuple[ParallelDecision, Any | None]:
        self.config.validate()  # a field changed after construction is checked on use
        _check_count("n_instances", n_instances, 0)
        _check_count("n_features", n_features, 1)
        if bytes_hint is not None:
            _check_count("bytes_hint", bytes_hint, 0)
        if seconds_per_item is not None and (
            isinstance(seconds_per_item, bool)
            or not isinstance(seconds_per_item, (int, float))
            or not 0 < seconds_per_item < float("inf")
        ):
            raise ConfigurationError(
                f"seconds_per_item={seconds_per_item!r} is not accepted; expected a finite "
                "number of seconds > 0 or None"
            )
        if executor is not None:
            check_executor("executor", executor)
        chosen = executor if executor is not None else self._executor
        # Decisions depend only on these inputs and on what the facade fixed at construction
        # (config, environment, resources), so the facade's own path reuses them; a caller's
        # executor can change its enabled flag between calls and is weighed every time.
        key = None
        if chosen is None:
            key = (n_instances, n_features, bytes_hint, seconds_per_item, in_worker())
            known = self._decisions.get(key)
            if known is not None:
                self._record(known)
                return known, None
        decision, runner = self._compute_decision(
            n_instances, n_features, bytes_hint, chosen, seconds_per_item
        )
        if key is not None:
            if len(self._decisions) >= DECISION_CACHE_SIZE:
                self._decisions.clear()
            self._decisions[key] = decision
        self._record(decision)
        return decision, runner

    def _record(self, decision: ParallelDecision) -> None:
        self.last_decision = decision
        config = self.config
        if wanted(config.telemetry, config.telemetry_path):
            emit(
                "decision",
                decision.as_dict(),
                callback=config.telemetry,
                path=config.telemetry_path,
            )

    def _compute_decision(
        self,
        n_instances: int,
        n_features: int,
        bytes_hint: int | None,
        chosen: Any | None,
        seconds_per_item: float | None,
    ) -> tuple[ParallelDecision, Any | None]:
        config = self.config
        resources = self.resources
        candidate = self._candidate(chosen)

        # The full-matrix gate comes first, so that whatever rule decides below, the decision
        # never names a strategy outside the subset and the caller is told once.
        requested = candidate.requested
        records = strategy_records()
        known = records.get(requested)
        gated = known is not None and not known.conservative and not config.full_matrix
        if gated:
            self._warn_full_matrix(requested)
            strategy = heuristics.FULL_MATRIX_SUBSTITUTE
            runner = None
            executor_type = executor_class_name(strategy)
        else:
            strategy = requested
            runner = candidate.executor
            executor_type = candidate.executor_type

        budget = resources.budget.count
        limited_by = resources.budget.limited_by
        if config.max_workers is not None and config.max_workers < budget:
            budget, limited_by = config.max_workers, "max_workers"
        workers = budget
        if runner is not None and candidate.workers is not None:
            workers = min(workers, candidate.workers)

        payload = bytes_hint if bytes_hint is not None else (config.task_size_hint_bytes or None)
        work_items = n_instances * n_features
        if seconds_per_item is not None:
            estimated = n_instances * float(seconds_per_item)
        else:
            estimated = work_items * heuristics.FACADE_SECONDS_PER_WORK_ITEM
        # calibrated-explanations' rule: an explicit instance threshold, else the batch floor
        min_instances = config.min_instances_for_parallel or max(
            heuristics.FACADE_MIN_INSTANCES, config.min_batch_size
        )
        tiny = config.tiny_workload_threshold or heuristics.FACADE_TINY_WORK_ITEMS
        start_cost = self._start_cost(strategy)
        saving = estimated * (1.0 - 1.0 / max(1, workers))

        reason: str | None = None
        detail = ""
        if self._operator_off:
            reason, detail = "operator_off", f"{ENV_MAIN}=off: the operator switched parallel off"
        elif in_worker() or self._env_in_worker:
            reason, detail = "nested_worker", "called inside a ce-parallel worker: no pool in pool"
        elif candidate.executor is not None and not candidate.enabled:
            reason = "executor_disabled"
            detail = f"the given executor ({candidate.executor_type}) is disabled or serial"
        elif candidate.executor is None and (not config.enabled or requested == "sequential"):
            reason = "disabled"
            detail = (
                f"ParallelConfig(enabled={config.enabled}, strategy={requested!r}) asks for "
                "serial work"
            )
        elif workers < 2:
            reason = "no_cpu_budget"
            detail = f"{workers} worker(s) available (CPU budget {budget}, limited by {limited_by})"
        elif resources.ci and not self._operator_forced:
            reason = "ci_environment"
            detail = (
                f"running in CI ({resources.ci_provider or 'detected'}); set {ENV_MAIN}=on or a "
                "strategy name to force parallel work"
            )
        elif n_instances < min_instances:
            reason = "below_min_instances"
            detail = (
                f"{n_instances} instances < {min_instances} (min_instances_for_parallel, else "
                "the larger of min_batch_size and FACADE_MIN_INSTANCES)"
            )
        elif work_items < tiny:
            reason = "tiny_workload"
            detail = (
                f"{n_instances} x {n_features} = {work_items} work items < "
                f"tiny_workload_threshold={tiny}"
            )
        elif (
            strategy in records
            and records[strategy].pickles_work
            and payload is not None
            and (payload > heuristics.PROCESS_MAX_TASK_BYTES)
        ):
            reason = "payload_too_large"
            detail = (
                f"{payload} bytes per task > PROCESS_MAX_TASK_BYTES="
                f"{heuristics.PROCESS_MAX_TASK_BYTES} for the {strategy} strategy"
            )
        elif saving <= start_cost:
            reason = "spawn_cost"
            detail = (
                f"estimated saving {saving:.4f} s (work {estimated:.4f} s on {workers} workers) "
                f"does not repay the {strategy} pool start-up of {start_cost:.4f} s"
            )

        if reason is None:
            use_parallel = True
            if gated:
                reason = "full_matrix_disabled"
                detail = (
                    f"{requested!r} needs the full matrix ({ENV_FULL}=1 or full_matrix=True); "
                    f"running {strategy!r} instead"
                )
            else:
                reason = "enabled"
                detail = f"{strategy} on {workers} workers; estimated work {estimated:.4f} s"
        else:
            use_parallel = False
            runner = None
            strategy, workers, executor_type = "sequential", 1, _SERIAL_EXECUTOR_TYPE

        decision = ParallelDecision(
            use_parallel=use_parallel,
            decision="parallel" if use_parallel else "serial",
            strategy=strategy,
            workers=workers,
            reason=reason,
            detail=detail,
            n_instances=n_instances,
            n_features=n_features,
            bytes_hint=payload,
            seconds_per_item=None if seconds_per_item is None else float(seconds_per_item),
            estimated_work_s=estimated,
            requested_strategy=requested,
            full_matrix=config.full_matrix,
            executor_type=executor_type,
            platform=f"{resources.platform}/{resources.start_method}",
            ci=resources.ci,
            cpu_budget=budget,
            cpu_limited_by=limited_by,
        )
        return decision, runner

    def _candidate(self, executor: Any | None) -> _Candidate:
        if executor is None:
            strategy = self.config.strategy
            return _Candidate(
                strategy, self.config.enabled, None, None, executor_class_name(strategy)
            )
        kind, enabled, workers = describe_executor(executor)
        return _Candidate(kind, enabled, workers, executor, type_name(executor))

    def _start_cost(self, strategy: str) -> float:
        """The cold start of the pool that would run ``strategy`` (see POOL_START_SECONDS).

        It is charged on every decision, so that a decision never depends on whether an
        earlier call already warmed a pool.
        """
        record = strategy_records().get(strategy)
        if record is None or record.chooses or record.start_cost == "none":
            # kinds whose pool the facade cannot see (auto chooses per workload, a caller's
            # executor is already running): the cheapest start-up
            return self.resources.thread_start_s
        return record.start_cost_s(self.resources)

    def _warn_full_matrix(self, requested: str) -> None:
        with self._lock:
            if self._warned_full_matrix:
                return
            self._warned_full_matrix = True
        warnings.warn(
            f"strategy {requested!r} is outside the conservative subset "
            f"({', '.join(conservative_strategies())}); running "
            f"{heuristics.FULL_MATRIX_SUBSTITUTE!r} instead. Set {ENV_FULL}=1 or "
            "ParallelConfig(full_matrix=True) to use it.",
            FullMatrixWarning,
            stacklevel=4,
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
        """Return ``[fn(x) for x in items]``: decide, record the decision, then run.

        Parallel work runs on the caller's executor or on a pooled executor of the decided
        strategy; serial work runs on a ``SerialExecutor``. ``progress`` and ``seed`` behave as
        in ``ParallelExecutor.map`` on every path (``seed=S`` calls ``fn(x, rng=...)`` with the
        same per-item generators whatever runs the work). ``chunksize`` and ``timeout`` apply to
        ce-parallel executors. ``n_instances`` (default: the number of items) is what the
        decision weighs when the items are not the instances, e.g. one item per feature of
        ``n_instances`` rows. The decision is kept in ``last_decision``.
        """
        if not callable(fn):
            raise TypeError(f"map() needs a callable as fn; got {type(fn).__name__}: {fn!r}")
        if self._closed:
            raise RuntimeError("this ParallelFacade has been closed; create a new one")
        work = items if isinstance(items, list) else list(items)
        decision, runner = self._decide(
            len(work) if n_instances is None else n_instances,
            n_features,
            bytes_hint,
            executor,
            seconds_per_item,
        )
        if not decision.use_parallel:
            return self._serial_executor().map(fn, work, progress=progress, seed=seed)
        if runner is None:
            pool = self._pool(decision.strategy, decision.workers)
            return pool.map(
                fn, work, chunksize=chunksize, timeout=timeout, progress=progress, seed=seed
            )
        if is_ours(runner):
            return runner.map(
                fn, work, chunksize=chunksize, timeout=timeout, progress=progress, seed=seed
            )
        return self._run_external(runner, decision, fn, work, progress, seed)

    def _run_external(
        self,
        runner: Any,
        decision: ParallelDecision,
        fn: Callable[..., R],
        work: list[Any],
        progress: bool,
        seed: Any,
    ) -> list[R]:
        """Run on a caller's executor; its infrastructure failures fall back like ours do."""
        from .errors import classify_failure
        from .executor import spawn_seeds

        call: Callable[..., Any] = fn
        args: list[Any] = work
        if seed is not None:
            call = functools.partial(_call_seeded, fn)
            args = list(zip(work, spawn_seeds(seed, len(work)), strict=True))
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
            results = self._serial_executor().map(fn, work, progress=progress, seed=seed)
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
            if pool is None:
                config = self.config.replace(strategy=strategy, enabled=True)
                pool = create_executor(config, max_workers=workers, resources=self.resources)
                self._pools[strategy] = pool
            return pool

    def _serial_executor(self) -> Any:
        from .strategies.serial import SerialExecutor

        with self._lock:
            if self._serial is None:
                config = self.config.replace(strategy="sequential")
                self._serial = SerialExecutor(config, resources=self.resources)
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

    def close(self) -> None:
        """Shut down every executor this facade created (never the caller's); idempotent."""
        with self._lock:
            self._closed = True
            owned = list(self._pools.values())
            if self._serial is not None:
                owned.append(self._serial)
            self._pools.clear()
            self._serial = None
        for executor in owned:
            executor.shutdown()

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


def _call_seeded(fn: Callable[..., Any], pair: tuple[Any, Any]) -> Any:
    """``fn(item, rng=...)`` for an ``(item, SeedSequence)`` pair; picklable when ``fn`` is."""
    return call_with_rng(fn, pair[0], pair[1])


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(
            f"{name}={value!r} is not accepted; expected an integer >= {minimum}"
        )


__all__ = ["ParallelFacade", "full_matrix_strategies"]
