"""The CPU budget and the machine facts that decisions depend on.

Placeholder with the final interface; the full source-by-source reader replaces it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CpuBudget:
    """How many CPUs this process may use, which source limited it, and every source read."""

    count: int
    limited_by: str
    sources: dict[str, Any] = field(default_factory=dict)


def cpu_budget(
    environ: Mapping[str, str] | None = None,
    sysfs_root: str = "/",
    *,
    max_workers: int | None = None,
) -> CpuBudget:
    """Return the CPU budget: the minimum over every source that can limit this process."""
    machine = os.cpu_count() or 1
    sources: dict[str, Any] = {"machine": machine}
    count, limited_by = machine, "machine"
    if hasattr(os, "sched_getaffinity"):
        affinity = len(os.sched_getaffinity(0))
        sources["affinity"] = affinity
        if affinity <= count:
            count, limited_by = affinity, "affinity"
    if max_workers is not None:
        sources["max_workers"] = max_workers
        if max_workers <= count:
            count, limited_by = max_workers, "max_workers"
    return CpuBudget(max(1, count), limited_by, sources)


@dataclass(frozen=True)
class Resources:
    """A snapshot of what the machine offers this process, for decisions and selection."""

    budget: CpuBudget
    ci: bool = False
    ci_provider: str | None = None
    platform: str = "linux"
    start_method: str = "fork"
    spawn_cost_s: float = 0.02
    physical_cores: int | None = None


def detect_resources(
    environ: Mapping[str, str] | None = None,
    sysfs_root: str = "/",
    *,
    max_workers: int | None = None,
) -> Resources:
    """Read the CPU budget, CI detection and platform facts once."""
    import multiprocessing
    import sys

    env = os.environ if environ is None else environ
    ci = any(env.get(k) for k in ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE"))
    return Resources(
        budget=cpu_budget(env, sysfs_root, max_workers=max_workers),
        ci=ci,
        ci_provider="generic" if ci else None,
        platform=sys.platform,
        start_method=multiprocessing.get_start_method(allow_none=True) or "fork",
    )


#: Environment variables that size the thread pools of numeric libraries (OpenMP, OpenBLAS,
#: MKL, BLIS, Accelerate, numexpr). Set in a process worker before those libraries load.
NUMERIC_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def threads_per_worker(budget_count: int, workers: int) -> int:
    """Numeric-library threads per process worker, so workers x threads fits the budget."""
    return max(1, budget_count // max(1, workers))


def numeric_thread_env(threads: int) -> dict[str, str]:
    """The environment that caps numeric libraries at ``threads`` threads."""
    return {name: str(threads) for name in NUMERIC_THREAD_VARIABLES}
