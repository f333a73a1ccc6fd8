"""``ParallelDecision``: whether a piece of work runs in parallel, on what, and why."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


class FullMatrixWarning(UserWarning):
    """A strategy outside the conservative subset was requested without the full matrix."""


@dataclass(frozen=True)
class ParallelDecision:
    """Whether a piece of work runs in parallel, on what, and why.

    ``reason`` is one of ``gate.REASONS`` (the codes of the gate's rule table); ``detail`` says
    the same in a sentence with the numbers that decided it. ``strategy`` is the strategy that
    runs the work (``"sequential"`` for a serial decision); without the full matrix it is
    always one of the conservative subset.
    ``requested_strategy`` is what the configuration or the given executor asked for.
    ``bytes_hint`` is the per-task payload that was weighed (per call, else the config's).
    ``platform`` is ``"<os>/<start method>"``; ``cpu_budget`` and ``cpu_limited_by`` say how
    many CPUs this process may use and which source limited them.

    ``cost_source`` says where the cost of an item came from (``hint``, ``remembered``,
    ``pilot`` or ``assumed``) and ``per_item_s`` what it was; ``start_cost_s`` is the pool
    start-up charged (0 for a warm pool), ``estimated_serial_s`` and ``estimated_parallel_s``
    the two times weighed (None where the parallel time could not be modelled). ``nested``
    names the kind of worker the call ran inside, if any. ``decision_id`` links the run record
    of the map that followed (set when a telemetry sink records the decision), ``call_site`` is
    ``module:function`` of the code that asked.
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
    cost_source: str = "assumed"
    per_item_s: float | None = None
    start_cost_s: float = 0.0
    estimated_serial_s: float = 0.0
    estimated_parallel_s: float | None = None
    nested: str | None = None
    decision_id: str = ""
    call_site: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain JSON data; ``ParallelDecision(**d)`` rebuilds an equal decision."""
        # every field is a scalar, so a shallow copy is JSON data already (asdict deep-copies)
        return {name: getattr(self, name) for name in _DECISION_FIELDS}


_DECISION_FIELDS = tuple(f.name for f in dataclasses.fields(ParallelDecision))


__all__ = ["FullMatrixWarning", "ParallelDecision"]
