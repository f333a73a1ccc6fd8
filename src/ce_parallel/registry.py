"""The strategy registry: the one place that knows which strategies exist and what each is.

Every part of ce-parallel that needs to know about strategies reads this registry: the config's
validation and the ``CE_PARALLEL`` grammar, the facade's conservative subset, auto's candidates,
the start-up fallback chain, ``ce-parallel doctor``, the benchmark runners and the contract
test suite. A new strategy is one executor class plus one ``register_strategy`` call::

    from ce_parallel import register_strategy
    register_strategy("mine", "my_package.executors:MyExecutor", conservative=True)

after which ``ParallelConfig(strategy="mine")``, ``create_executor`` and the facade accept it.
The executor class is imported only when the strategy is first used, so unused backends never
load. This module imports nothing of the executor layer: arrows point down only.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from .checks import OFF_WORDS, ON_WORDS, check_bool, rejected
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .resources import Resources

#: How a strategy's start-up cost is known: ``none`` (nothing to start), ``thread_pool``,
#: ``process_pool`` (loky-like: never cheaper than the platform's start method) or ``cluster``.
StartCost = Literal["none", "thread_pool", "process_pool", "cluster"]
START_COSTS: tuple[str, ...] = ("none", "thread_pool", "process_pool", "cluster")

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
#: Words of the ``CE_PARALLEL`` grammar that a strategy may not be called.
_RESERVED = ON_WORDS | OFF_WORDS | {"workers", "min_batch", "timeout", "fallback"}


@dataclass(frozen=True)
class StrategyRecord:
    """What the rest of ce-parallel knows about one strategy.

    ``executor`` is the executor class or a lazy ``"module:Class"`` reference to it.
    ``pickles_work``: functions, items and results are pickled to reach the workers (so they
    must be picklable, and exceptions travel back as data). ``separate_processes``: workers are
    child processes of the caller, started and owned by the executor (they get per-process set-up
    such as the parent watchdog and numeric-thread caps, and a busy one is killed on abort); the
    two are different facts: a Dask cluster pickles work but its workers are not our children.
    ``conservative``: offered by the facade without the full matrix. ``auto_may_choose``: a
    candidate of the ``auto`` strategy. ``start_fallback``: the strategy that runs a map when
    this one's pool cannot start. ``start_cost``: how the cost of starting its pool is known.
    ``per_map_overhead_s``: a fixed cost of every map on a warm pool (joblib's dispatch).
    ``requires``: modules that must be importable for the strategy to run. ``chooses``: the
    strategy picks another one per map (``auto``). ``shares_objects``: an object every task
    holds reaches each worker once per pool (``shared_objects``), so it is not weighed as part
    of every task's payload.
    """

    name: str
    executor: str | type
    pickles_work: bool = False
    separate_processes: bool = False
    conservative: bool = False
    auto_may_choose: bool = False
    start_fallback: str = "sequential"
    start_cost: StartCost = "thread_pool"
    per_map_overhead_s: float = 0.0
    requires: tuple[str, ...] = ()
    chooses: bool = False
    shares_objects: bool = False
    summary: str = ""

    def load(self) -> type[Any]:
        """The executor class (imported now if it was registered by reference)."""
        target = self.executor
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
        if getattr(target, "name", None) != self.name:
            raise ConfigurationError(
                f"strategy {self.name!r} is registered with {target!r}, whose name attribute is "
                f"{getattr(target, 'name', None)!r}; set name = {self.name!r} on the class"
            )
        return target

    def start_cost_s(self, resources: Resources) -> float:
        """The cold start of this strategy's pool on ``resources``, in seconds."""
        if self.start_cost == "none":
            return 0.0
        if self.start_cost == "thread_pool":
            return resources.thread_start_s
        # loky-based pools and clusters: never cheaper than the platform's own start method
        return max(resources.process_start_s, resources.spawn_cost_s)

    def available(self) -> bool:
        """Whether every module in ``requires`` can be found (nothing is imported)."""
        import importlib.util

        for module in self.requires:
            try:
                if importlib.util.find_spec(module) is None:
                    return False
            except (ImportError, ValueError):
                return False
        return True


_lock = threading.Lock()
_records: dict[str, StrategyRecord] = {}
#: A read-only snapshot of ``_records``, replaced on every change: readers (every map asks)
#: take no lock and copy nothing.
_snapshot: Mapping[str, StrategyRecord] = MappingProxyType({})


def register_strategy(
    name: str,
    executor: str | type,
    *,
    pickles_work: bool = False,
    separate_processes: bool = False,
    conservative: bool = False,
    auto_may_choose: bool = False,
    start_fallback: str = "sequential",
    start_cost: StartCost = "thread_pool",
    per_map_overhead_s: float = 0.0,
    requires: tuple[str, ...] = (),
    chooses: bool = False,
    shares_objects: bool = False,
    summary: str = "",
    replace: bool = False,
) -> StrategyRecord:
    """Add a strategy; ``ParallelConfig``, ``create_executor``, the facade and ``doctor`` then
    accept ``name`` with no other change.

    ``executor`` is a ``ParallelExecutor`` subclass whose ``name`` is ``name``, or a
    ``"module:Class"`` reference to one (imported on first use). See ``StrategyRecord`` for the
    facts. Registering a name that exists raises unless ``replace=True``.
    """
    if not isinstance(name, str) or not _NAME.match(name) or name in _RESERVED:
        raise rejected(
            "register_strategy(name)",
            name,
            "a lower-case name of letters, digits, '-' and '_' that is not a CE_PARALLEL word",
        )
    if isinstance(executor, str):
        if ":" not in executor:
            raise rejected("register_strategy(executor)", executor, "'module:Class' or a class")
    elif not isinstance(executor, type):
        raise rejected("register_strategy(executor)", executor, "'module:Class' or a class")
    for flag, value in (
        ("pickles_work", pickles_work),
        ("separate_processes", separate_processes),
        ("conservative", conservative),
        ("auto_may_choose", auto_may_choose),
        ("chooses", chooses),
        ("shares_objects", shares_objects),
        ("replace", replace),
    ):
        check_bool(f"register_strategy({flag})", value)
    if start_cost not in START_COSTS:
        raise rejected(
            "register_strategy(start_cost)", start_cost, "one of " + ", ".join(START_COSTS)
        )
    record = StrategyRecord(
        name,
        executor,
        pickles_work=pickles_work,
        separate_processes=separate_processes,
        conservative=conservative,
        auto_may_choose=auto_may_choose,
        start_fallback=start_fallback,
        start_cost=start_cost,
        per_map_overhead_s=float(per_map_overhead_s),
        requires=tuple(requires),
        chooses=chooses,
        shares_objects=shares_objects,
        summary=summary,
    )
    with _lock:
        if name in _records and not replace:
            raise ConfigurationError(
                f"strategy {name!r} is already registered; pass replace=True to replace it"
            )
        if start_fallback != name and start_fallback not in _records:
            raise rejected(
                "register_strategy(start_fallback)",
                start_fallback,
                "a registered strategy: " + ", ".join(_records),
            )
        _records[name] = record
        _publish()
    return record


def _publish() -> None:
    global _snapshot
    _snapshot = MappingProxyType(dict(_records))


def unregister_strategy(name: str) -> None:
    """Remove a strategy added by ``register_strategy`` (the built-in ones stay)."""
    if name in BUILTIN:
        raise ConfigurationError(f"strategy {name!r} is built in and cannot be removed")
    with _lock:
        _records.pop(name, None)
        _publish()


def strategy_record(name: str) -> StrategyRecord:
    """The record of ``name``; an unknown name raises ``ConfigurationError`` listing the known."""
    record = _snapshot.get(name)
    if record is None:
        raise rejected("strategy", name, "one of " + ", ".join(_snapshot))
    return record


def strategy_records() -> Mapping[str, StrategyRecord]:
    """Every registered strategy, in registration order (a read-only snapshot)."""
    return _snapshot


def strategy_names() -> tuple[str, ...]:
    """Every registered strategy name, in registration order."""
    return tuple(strategy_records())


def conservative_strategies() -> tuple[str, ...]:
    """The strategies the facade offers without the full matrix."""
    return tuple(n for n, r in strategy_records().items() if r.conservative)


def strategy_class(name: str) -> type[Any]:
    """The executor class registered under ``name`` (imported now if needed)."""
    return strategy_record(name).load()


def _builtin(name: str, executor: str, **facts: Any) -> None:
    register_strategy(name, f"ce_parallel.strategies.{executor}", **facts)


_builtin(
    "sequential",
    "serial:SerialExecutor",
    conservative=True,
    auto_may_choose=True,
    start_cost="none",
    summary="the plain loop in the calling thread",
)
_builtin(
    "threads",
    "threads:ThreadExecutor",
    conservative=True,
    auto_may_choose=True,
    summary="a reused thread pool: GIL-free work (NumPy, I/O), large arguments",
)
_builtin(
    "processes",
    "processes:ProcessExecutor",
    pickles_work=True,
    separate_processes=True,
    auto_may_choose=True,
    start_fallback="threads",
    start_cost="process_pool",
    requires=("loky",),
    shares_objects=True,
    summary="a private loky process pool: GIL-bound Python",
)


def _joblib_overhead() -> float:
    from .heuristics import JOBLIB_CALL_OVERHEAD_S

    return JOBLIB_CALL_OVERHEAD_S


_builtin(
    "joblib",
    "joblib:JoblibExecutor",
    pickles_work=True,
    separate_processes=True,
    conservative=True,
    auto_may_choose=True,
    start_fallback="threads",
    start_cost="process_pool",
    per_map_overhead_s=_joblib_overhead(),
    requires=("joblib",),
    shares_objects=True,
    summary="joblib's loky backend, with its memory-mapping of large arrays",
)
_builtin(
    "dask",
    "dask:DaskExecutor",
    pickles_work=True,
    start_cost="cluster",
    requires=("distributed",),
    shares_objects=True,
    summary="tasks on a Dask distributed cluster (given, or a local one)",
)
_builtin(
    "auto",
    "auto:AutoExecutor",
    start_cost="none",
    chooses=True,
    summary="measures the first items of each map and picks among the candidates",
)

#: The strategies ce-parallel ships; they cannot be unregistered.
BUILTIN: frozenset[str] = frozenset(_records)


__all__ = [
    "BUILTIN",
    "START_COSTS",
    "StrategyRecord",
    "conservative_strategies",
    "register_strategy",
    "strategy_class",
    "strategy_names",
    "strategy_record",
    "strategy_records",
    "unregister_strategy",
]
