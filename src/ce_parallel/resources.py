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
