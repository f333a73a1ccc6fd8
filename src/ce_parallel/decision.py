"""``ParallelDecision``: whether a piece of work runs in parallel, on what, and why."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Every reason a decision can give, as stable codes for logs and dashboards.
#: ``enabled``: parallel, as configured. ``full_matrix_disabled``: parallel on the conservative
#: substitute, because the requested strategy needs the full matrix. Serial reasons, in the
#: order they are checked: ``operator_off`` (``CE_PARALLEL=off``), ``nested_worker`` (called
#: inside one of our workers), ``disabled`` (the config is not enabled or names ``sequential``),
#: ``executor_disabled`` (the given executor is disabled or serial), ``no_cpu_budget`` (fewer
#: than 2 CPUs or workers), ``ci_environment`` (CI, and ``CE_PARALLEL`` does not force
#: parallel), ``below_min_instances``, ``tiny_workload`` (instances x features below the
#: threshold), ``payload_too_large`` (a process strategy would pickle too much per task),
#: ``spawn_cost`` (the estimated time saved does not repay starting the pool).
REASONS: tuple[str, ...] = (
    "enabled",
    "full_matrix_disabled",
    "operator_off",
    "nested_worker",
    "disabled",
    "executor_disabled",
    "no_cpu_budget",
    "ci_environment",
    "below_min_instances",
    "tiny_workload",
    "payload_too_large",
    "spawn_cost",
)


class FullMatrixWarning(UserWarning):
    """A strategy outside the conservative subset was requested without the full matrix."""


@dataclass(frozen=True)
class ParallelDecision:
    """Whether a piece of work runs in parallel, on what, and why.

    ``reason`` is one of ``REASONS``; ``detail`` says the same in a sentence with the numbers
    that decided it. ``strategy`` is the strategy that runs the work (``"sequential"`` for a
    serial decision); without the full matrix it is always one of the conservative subset.
    ``requested_strategy`` is what the configuration or the given executor asked for.
    ``bytes_hint`` is the per-task payload that was weighed (per call, else the config's).
    ``platform`` is ``"<os>/<start method>"``; ``cpu_budget`` and ``cpu_limited_by`` say how
    many CPUs this process may use and which source limited them.
    """

    use_parallel: bool
    decision: str
    strategy: str
    workers: int
    reason: str
    detail: str
    n_instances: int
    n_features: int
    bytes_hint: int | None
    seconds_per_item: float | None
    estimated_work_s: float
    requested_strategy: str
    full_matrix: bool
    executor_type: str
    platform: str
    ci: bool
    cpu_budget: int
    cpu_limited_by: str

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain JSON data; ``ParallelDecision(**d)`` rebuilds an equal decision."""
        # every field is a scalar, so a shallow copy is JSON data already (asdict deep-copies)
        return {name: getattr(self, name) for name in _DECISION_FIELDS}


_DECISION_FIELDS = tuple(f.name for f in dataclasses.fields(ParallelDecision))


__all__ = ["REASONS", "FullMatrixWarning", "ParallelDecision"]
