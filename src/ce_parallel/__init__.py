"""ce-parallel: one safe place to decide whether and how to run work in parallel.

Import everything from here. Names are loaded on first use so that ``import ce_parallel`` stays
light: no pool, no backend (joblib, loky, dask, psutil) is imported until a strategy needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import ParallelConfig
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    ExecutorClosedError,
    MapCancelledError,
    ParallelExecutionError,
    RemoteError,
    SerializationError,
    WorkerCrashedError,
)

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_LAZY: dict[str, str] = {
    "ParallelFacade": ".facade",
    "ParallelDecision": ".decision",
    "FullMatrixWarning": ".decision",
    "ParallelExecutor": ".executor",
    "create_executor": ".executor",
    "PooledExecutor": ".engine",
    "StrategyRecord": ".registry",
    "register_strategy": ".registry",
    "strategy_names": ".registry",
    "SerialExecutor": ".strategies.serial",
    "ThreadExecutor": ".strategies.threads",
    "ProcessExecutor": ".strategies.processes",
    "JoblibExecutor": ".strategies.joblib",
    "DaskExecutor": ".strategies.dask",
    "ParallelMetrics": ".metrics",
    "CpuBudget": ".resources",
    "cpu_budget": ".resources",
    "register_fork_hook": ".forksafety",
    "release_shared_pools": ".pools",
    "WorkloadProfile": ".selection",
    "select_strategy": ".selection",
    "in_worker": ".worker",
    "CeFuturesExecutor": ".futures",
    "foreign_worker": ".nesting",
    "resolve_n_jobs": ".njobs",
    "shared_empty": ".file_arrays",
    "as_shared": ".file_arrays",
}

if TYPE_CHECKING:
    from .decision import FullMatrixWarning, ParallelDecision
    from .engine import PooledExecutor
    from .executor import ParallelExecutor, create_executor
    from .facade import ParallelFacade
    from .file_arrays import as_shared, shared_empty
    from .forksafety import register_fork_hook
    from .futures import CeFuturesExecutor
    from .metrics import ParallelMetrics
    from .nesting import foreign_worker
    from .njobs import resolve_n_jobs
    from .pools import release_shared_pools
    from .registry import StrategyRecord, register_strategy, strategy_names
    from .resources import CpuBudget, cpu_budget
    from .selection import WorkloadProfile, select_strategy
    from .strategies.dask import DaskExecutor
    from .strategies.joblib import JoblibExecutor
    from .strategies.processes import ProcessExecutor
    from .strategies.serial import SerialExecutor
    from .strategies.threads import ThreadExecutor
    from .worker import in_worker


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ce_parallel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BackendUnavailableError",
    "CeFuturesExecutor",
    "ConfigurationError",
    "CpuBudget",
    "DaskExecutor",
    "ExecutorClosedError",
    "FullMatrixWarning",
    "JoblibExecutor",
    "MapCancelledError",
    "ParallelConfig",
    "ParallelDecision",
    "ParallelExecutionError",
    "ParallelExecutor",
    "ParallelFacade",
    "ParallelMetrics",
    "PooledExecutor",
    "ProcessExecutor",
    "RemoteError",
    "SerialExecutor",
    "SerializationError",
    "StrategyRecord",
    "ThreadExecutor",
    "WorkerCrashedError",
    "WorkloadProfile",
    "__version__",
    "as_shared",
    "cpu_budget",
    "create_executor",
    "foreign_worker",
    "in_worker",
    "register_fork_hook",
    "register_strategy",
    "release_shared_pools",
    "resolve_n_jobs",
    "select_strategy",
    "shared_empty",
    "strategy_names",
]
