"""Callers' own executors: telling what an executor-like object is and whether it is enabled.

The facade accepts our executors and the objects callers already use (anything with
``map(fn, items)``: a ``concurrent.futures`` executor, a ``multiprocessing`` pool,
calibrated-explanations' executor). These helpers say what kind of strategy such an object
stands for, whether it is switched on, and how many workers it has.
"""

from __future__ import annotations

import functools
import pickle
import sys
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from typing import Any

from .errors import ConfigurationError
from .registry import strategy_records

#: Strategy reported for a caller's executor whose kind cannot be told from its type.
EXTERNAL = "external"


def call_site(skip: int = 1) -> str:
    """``module:function`` of the nearest caller outside ce-parallel (for telemetry)."""
    frame = sys._getframe(skip)
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("ce_parallel."):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "unknown"
    return f"{frame.f_globals.get('__name__', '?')}:{frame.f_code.co_name}"


def check_executor(where: str, executor: Any) -> None:
    if not callable(getattr(executor, "map", None)):
        raise ConfigurationError(
            f"{where}={executor!r} is not accepted; expected a ce-parallel executor or an "
            "object with a map(fn, items) method (e.g. a concurrent.futures executor), or None"
        )


def is_ours(executor: Any) -> bool:
    from .executor import ParallelExecutor

    return isinstance(executor, ParallelExecutor)


def type_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def executor_class_name(strategy: str) -> str:
    """The class name of the executor registered for ``strategy`` (nothing is imported)."""
    record = strategy_records().get(strategy)
    if record is None:
        return EXTERNAL
    target = record.executor
    return target.rpartition(":")[2] if isinstance(target, str) else target.__name__


def describe_executor(executor: Any) -> tuple[str, bool, int | None]:
    """``(strategy kind, enabled, workers)`` of a caller's executor.

    Ours name their strategy. Others are told by their ``config.strategy`` when it is a
    strategy name, else by their type (thread pools, process pools, loky); an unknown kind is
    ``"external"``. ``config.enabled=False`` (calibrated-explanations' switch) or a sequential
    kind means disabled.
    """
    if is_ours(executor):
        name = str(executor.name)
        return name, name != "sequential", int(executor.workers)
    config = getattr(executor, "config", None)
    enabled = getattr(config, "enabled", True) is not False
    declared = getattr(config, "strategy", None)
    kind = (
        declared
        if isinstance(declared, str) and declared in strategy_records()
        else kind_from_type(executor)
    )
    workers = None
    for value in (
        getattr(executor, "_max_workers", None),
        getattr(executor, "_processes", None),
        getattr(config, "max_workers", None),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            workers = value
            break
    return kind, enabled and kind != "sequential", workers


def kind_from_type(executor: Any) -> str:
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
    from multiprocessing.pool import Pool, ThreadPool

    # ThreadPool subclasses Pool, so it is tested first
    if isinstance(executor, (ThreadPoolExecutor, ThreadPool)):
        return "threads"
    if isinstance(executor, (ProcessPoolExecutor, Pool)):
        return "processes"
    names = " ".join(f"{c.__module__}.{c.__name__}".lower() for c in type(executor).__mro__)
    if "thread" in names:
        return "threads"
    if "process" in names or "loky" in names:
        return "processes"
    return EXTERNAL


def run_on_callers_executor(
    given: Any,
    decision: Any,
    fn: Callable[..., Any],
    work: list[Any],
    seeds: list[Any] | None,
    config: Any,
    serial: Any,
) -> list[Any]:
    """Run ``work`` on a caller's executor (``given.map``), as the facade decided.

    Its infrastructure failures (a broken pool, work it cannot pickle) fall back like ours do:
    one fallback record, then ``serial`` (our serial executor) re-runs the work, or the error is
    raised with ``fallback="raise"``. One run record is emitted either way.
    """
    from .errors import classify_failure
    from .executor import SpawnedSeeds
    from .telemetry import emit, fallback_record, run_record

    def record(event: str, payload: dict[str, Any]) -> None:
        emit(event, payload, callback=config.telemetry, path=config.telemetry_path)

    call: Callable[..., Any] = fn
    args: list[Any] = work
    if seeds is not None:
        call = functools.partial(_call_seeded, fn)
        args = list(zip(work, seeds, strict=True))
    started = time.perf_counter()
    error: BaseException | None = None
    fallbacks = 0
    try:
        results: list[Any] = list(given.map(call, args))
    except (BrokenExecutor, pickle.PicklingError) as exc:
        # the caller's pool broke or could not pickle the work: the machinery, not fn
        error = exc
        action = "serial" if config.fallback_to_serial else "raise"
        record(
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
        results = serial.map(fn, work, seed=None if seeds is None else SpawnedSeeds(seeds))
    except BaseException as exc:
        error = exc
        raise
    finally:
        # a caller's executor reports neither its chunks nor the time its workers were busy
        payload = run_record(
            strategy=decision.strategy,
            items=len(work),
            chunks=None,
            workers=decision.workers,
            wall_time_s=time.perf_counter() - started,
            busy_time_s=None,
            fallbacks=fallbacks,
            error=error,
        )
        payload["executor_type"] = decision.executor_type
        record("run", payload)
    return results


def _call_seeded(fn: Callable[..., Any], pair: tuple[Any, Any]) -> Any:
    """``fn(item, rng=...)`` for an ``(item, SeedSequence)`` pair; picklable when ``fn`` is."""
    from .worker import call_with_rng

    return call_with_rng(fn, pair[0], pair[1])


__all__ = [
    "EXTERNAL",
    "call_site",
    "check_executor",
    "describe_executor",
    "executor_class_name",
    "is_ours",
    "run_on_callers_executor",
]
