"""What a decision weighs: the question, the asker's ground, and the numbers worked out once.

``gate.decide`` reads a ``Weighing``: the strategy that would run (the conservative substitute
without the full matrix), its workers, and the serial and parallel times from the one cost model
(``selection.estimate_run_s``), with the pool's start-up as measured or assumed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from . import heuristics
from .config import ParallelConfig
from .registry import StrategyRecord, strategy_records
from .resources import Resources
from .selection import estimate_run_s

#: Where the cost of an item came from, strongest first.
CostSource = Literal["hint", "remembered", "pilot", "assumed"]
COST_SOURCES: tuple[str, ...] = ("hint", "remembered", "pilot", "assumed")
#: Which front door asks: the facade (and what goes through it), or an executor (``auto``) that
#: the caller created directly and so already switched on.
FrontDoor = Literal["facade", "executor"]


@dataclass(frozen=True)
class Ground:
    """What is fixed for one asker: its config, the machine and the operator's switches."""

    config: ParallelConfig
    resources: Resources
    operator_off: bool = False
    operator_forced: bool = False
    front_door: FrontDoor = "facade"


@dataclass(frozen=True)
class Question:
    """One decision's inputs.

    ``n_items`` are the items still to run (after a pilot), ``n_instances`` and ``n_features``
    the caller's measure of the work (for the count rules and the record). ``per_item_s`` is the
    cost of one item from ``cost_source`` (None when assumed: then ``n_features`` x
    ``FACADE_SECONDS_PER_WORK_ITEM`` per instance is assumed). ``observed_s`` is seconds per
    item that a real run of the requested strategy took for this function, when one did;
    ``holds_gil`` what a thread probe found (None: not probed).
    ``requested`` is the strategy asked for; ``executor_type``/``executor_enabled``/
    ``executor_workers`` describe a caller's own executor (``executor_type`` None: none given).
    ``warm``: the pool that would run is already up. ``nested`` names the kind of worker this
    runs inside, if any.
    """

    n_instances: int
    n_features: int = 1
    n_items: int | None = None
    bytes_hint: int | None = None
    per_item_s: float | None = None
    cost_source: CostSource = "assumed"
    spread: float = 0.0
    observed_s: float | None = None
    holds_gil: bool | None = None
    requested: str = "sequential"
    executor_type: str | None = None
    executor_enabled: bool = True
    executor_workers: int | None = None
    warm: bool = False
    nested: str | None = None
    fn_bytes: int = 0
    #: an executor that chose by the same estimates (auto): why it chose serial, else None
    cost_verdict: str | None = None
    #: another library's own setting asks for serial work here (joblib.parallel_config(n_jobs=1))
    library_serial: str | None = None


@dataclass(frozen=True)
class Weighing:
    """The numbers every rule reads, worked out once per question."""

    question: Question
    ground: Ground
    strategy: str
    record: StrategyRecord | None
    gated: bool
    workers: int
    budget: int
    limited_by: str
    payload: int | None
    items: int
    per_item_s: float
    serial_s: float
    parallel_s: float | None
    start_s: float
    min_instances: int
    tiny: int

    @property
    def work_items(self) -> int:
        return self.question.n_instances * self.question.n_features

    @property
    def assumed(self) -> bool:
        return self.question.cost_source == "assumed"


def weigh(question: Question, ground: Ground) -> Weighing:
    """Work out the numbers the rules read (substitution, workers, costs)."""
    config, resources = ground.config, ground.resources
    records = strategy_records()
    requested = question.requested
    known = records.get(requested)
    gated = (
        ground.front_door == "facade"
        and known is not None
        and not known.conservative
        and not config.full_matrix
    )
    strategy = heuristics.FULL_MATRIX_SUBSTITUTE if gated else requested
    record = records.get(strategy)

    budget, limited_by = resources.budget.count, resources.budget.limited_by
    workers = budget
    explicit = config.explicit_workers(budget)
    if explicit is not None:
        # an explicit count is honoured, above the budget too (I/O-bound work)
        workers = explicit
        if explicit < budget:
            budget, limited_by = explicit, "max_workers" if config.max_workers else "n_jobs"
    if question.executor_type is not None and not gated and question.executor_workers:
        workers = question.executor_workers

    payload = question.bytes_hint
    if payload is None and config.task_size_hint_bytes:
        payload = config.task_size_hint_bytes
    items = question.n_items if question.n_items is not None else question.n_instances
    if question.per_item_s is not None:
        per_item = float(question.per_item_s)
    else:
        per_item = (
            question.n_features
            * heuristics.FACADE_SECONDS_PER_WORK_ITEM
            * question.n_instances
            / max(1, items)
        )
    serial = items * per_item
    start = _start_cost(strategy, record, question, resources)
    parallel: float | None = None
    observed = question.observed_s
    if observed is None and record is not None and not record.pickles_work:
        # threads help only items that release the GIL: bound (or, measured but unprobed,
        # possibly bound) items are assumed to run at the serial rate on them
        unprobed = question.holds_gil is None and question.cost_source in ("pilot", "remembered")
        if question.holds_gil or unprobed:
            observed = per_item
    if strategy == "sequential" or items <= 0:
        parallel = None
    elif record is not None and not record.chooses and workers >= 2:
        parallel = estimate_run_s(
            record,
            items,
            per_item,
            workers,
            start_s=start,
            payload_bytes=payload or 0,
            fn_bytes=question.fn_bytes,
            observed_s=observed,
        )
    elif record is None or record.chooses:
        # a caller's executor of unknown kind, or auto: the facade cannot model its pool, so
        # it assumes the ideal split and the cheapest start-up
        parallel = start + per_item * math.ceil(items / max(1, workers))
    min_instances = config.min_instances_for_parallel or max(
        heuristics.FACADE_MIN_INSTANCES, config.min_batch_size
    )
    tiny = config.tiny_workload_threshold or heuristics.FACADE_TINY_WORK_ITEMS
    return Weighing(
        question=question,
        ground=ground,
        strategy=strategy,
        record=record,
        gated=gated,
        workers=workers,
        budget=budget,
        limited_by=limited_by,
        payload=payload,
        items=items,
        per_item_s=per_item,
        serial_s=serial,
        parallel_s=parallel,
        start_s=start,
        min_instances=min_instances,
        tiny=tiny,
    )


def _start_cost(
    strategy: str, record: StrategyRecord | None, question: Question, resources: Resources
) -> float:
    """What starting the pool would cost now: nothing when it is warm, else what was measured
    in this process, else the registry's prior for the machine."""
    if question.warm:
        return 0.0
    if question.executor_type is not None and record is None:
        return 0.0  # a caller's executor of its own kind is already running
    if record is None or record.chooses:
        return resources.thread_start_s
    from .costs import MEMORY

    measured = MEMORY.start_cost(strategy)
    cold = measured if measured is not None else record.start_cost_s(resources)
    if question.cost_source == "remembered":
        # the function came back: its pool serves the calls still to come as well, so a
        # repeat pays a share of the start-up (auto's rule, AUTO_EXPECTED_MAPS_PER_POOL)
        return cold / heuristics.AUTO_EXPECTED_MAPS_PER_POOL
    return cold


__all__ = ["COST_SOURCES", "CostSource", "FrontDoor", "Ground", "Question", "Weighing", "weigh"]
