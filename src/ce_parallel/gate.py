"""The one gate: an ordered table of rules that turns a question into a ``ParallelDecision``.

Every front door asks here: ``ParallelFacade`` (and through it the calibrated-explanations
adapter and the joblib backend) and the ``auto`` strategy. A ``Question`` says what is to run
(how many items, what one costs and where that cost came from, which strategy was requested,
whether its pool is warm); ``Ground`` says what is fixed for the asker (config, machine, the
operator's switches). ``decide`` walks ``RULES`` in order; the first rule that speaks makes the
decision serial with its reason, and a question no rule stops goes parallel. The reason codes
(``REASONS``) are the table's codes.

Costs come, strongest first, from a hint (``seconds_per_item``), a remembered measurement of
the same function, a pilot of the first items, or the conservative assumption. The count rules
(``below_min_instances``, ``tiny_workload``) apply only to the assumption: a known cost decides
on cost. The cost rule asks the same model auto chooses with (``selection.estimate_run_s``) for
the serial and the parallel time, and goes parallel only for a clear gain
(``MIN_PARALLEL_GAIN``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from . import heuristics
from .config import ENV_FULL, ENV_MAIN, ParallelConfig
from .decision import ParallelDecision
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


Check = Callable[[Weighing], "str | None"]


@dataclass(frozen=True)
class Rule:
    """One row of the table: a reason code, the doors it applies to, and its test.

    ``check`` returns the decision's detail (a sentence with the numbers) when the rule makes
    the decision serial, else None.
    """

    code: str
    doors: tuple[FrontDoor, ...]
    check: Check
    summary: str


def _operator_off(w: Weighing) -> str | None:
    return f"{ENV_MAIN}=off: the operator switched parallel off" if w.ground.operator_off else None


def _nested(w: Weighing) -> str | None:
    if w.question.nested is None:
        return None
    return f"called inside a worker ({w.question.nested}): no pool in a pool"


def _executor_disabled(w: Weighing) -> str | None:
    q = w.question
    if q.executor_type is None or q.executor_enabled:
        return None
    return f"the given executor ({q.executor_type}) is disabled or serial"


def _disabled(w: Weighing) -> str | None:
    config, q = w.ground.config, w.question
    if q.executor_type is not None or (config.enabled and q.requested != "sequential"):
        return None
    return (
        f"ParallelConfig(enabled={config.enabled}, strategy={q.requested!r}) asks for serial work"
    )


def _no_budget(w: Weighing) -> str | None:
    if w.workers >= 2:
        return None
    return f"{w.workers} worker(s) available (CPU budget {w.budget}, limited by {w.limited_by})"


def _ci(w: Weighing) -> str | None:
    resources = w.ground.resources
    if not resources.ci or w.ground.operator_forced:
        return None
    return (
        f"running in CI ({resources.ci_provider or 'detected'}); set {ENV_MAIN}=on or a "
        "strategy name to force parallel work"
    )


def _payload(w: Weighing) -> str | None:
    if w.record is None or not w.record.pickles_work or w.payload is None:
        return None
    if w.payload <= heuristics.PROCESS_MAX_TASK_BYTES:
        return None
    return (
        f"{w.payload} bytes per task > PROCESS_MAX_TASK_BYTES="
        f"{heuristics.PROCESS_MAX_TASK_BYTES} for the {w.strategy} strategy"
    )


def _below_min_instances(w: Weighing) -> str | None:
    if not w.assumed or w.question.n_instances >= w.min_instances:
        return None
    return (
        f"{w.question.n_instances} instances < {w.min_instances} (min_instances_for_parallel, "
        "else the larger of min_batch_size and FACADE_MIN_INSTANCES), and no cost is known"
    )


def _tiny(w: Weighing) -> str | None:
    if not w.assumed or w.work_items >= w.tiny:
        return None
    return (
        f"{w.question.n_instances} x {w.question.n_features} = {w.work_items} work items < "
        f"tiny_workload_threshold={w.tiny}, and no cost is known"
    )


def _no_clear_gain(w: Weighing) -> str | None:
    if w.ground.front_door == "executor":
        # auto compared every candidate with estimate_run_s and MIN_PARALLEL_GAIN already
        return w.question.cost_verdict
    gain = heuristics.MIN_PARALLEL_GAIN
    if w.parallel_s is not None and w.serial_s >= gain * w.parallel_s:
        return None
    parallel = "n/a" if w.parallel_s is None else f"{w.parallel_s:.4g} s"
    return (
        f"{w.items} items x {w.per_item_s:.3g} s ({w.question.cost_source}) = {w.serial_s:.4g} s "
        f"serial; {w.strategy} on {w.workers} workers estimated {parallel} with a start-up of "
        f"{w.start_s:.4g} s: not {gain}x faster (MIN_PARALLEL_GAIN)"
    )


#: The table, in the order the rules are asked. Serial verdicts only: a question that no rule
#: stops runs in parallel (reason ``enabled``, or ``full_matrix_disabled`` on the substitute).
RULES: tuple[Rule, ...] = (
    Rule("operator_off", ("facade", "executor"), _operator_off, "CE_PARALLEL=off"),
    Rule("nested_worker", ("facade", "executor"), _nested, "inside a worker: no pool in a pool"),
    Rule("executor_disabled", ("facade",), _executor_disabled, "the given executor is off"),
    Rule("disabled", ("facade",), _disabled, "the config is not enabled or names sequential"),
    Rule("no_cpu_budget", ("facade", "executor"), _no_budget, "fewer than 2 workers"),
    Rule("ci_environment", ("facade",), _ci, "CI, and CE_PARALLEL does not force parallel"),
    Rule("payload_too_large", ("facade", "executor"), _payload, "a pickling strategy, big tasks"),
    Rule("below_min_instances", ("facade",), _below_min_instances, "few instances, cost unknown"),
    Rule("tiny_workload", ("facade",), _tiny, "few work items, cost unknown"),
    Rule("spawn_cost", ("facade", "executor"), _no_clear_gain, "no clear gain over serial"),
)
#: Reasons of a parallel decision.
PARALLEL_REASONS: tuple[str, ...] = ("enabled", "full_matrix_disabled")
#: Every reason code a decision can give: the parallel ones, then the table's, in order.
REASONS: tuple[str, ...] = PARALLEL_REASONS + tuple(rule.code for rule in RULES)


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
    if config.max_workers is not None:
        # an explicit count is honoured, above the budget too (I/O-bound work)
        workers = config.max_workers
        if config.max_workers < budget:
            budget, limited_by = config.max_workers, "max_workers"
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
    return measured if measured is not None else record.start_cost_s(resources)


def decide(question: Question, ground: Ground) -> ParallelDecision:
    """The decision for ``question`` on ``ground``: the first rule of ``RULES`` that speaks."""
    w = weigh(question, ground)
    door = ground.front_door
    for rule in RULES:
        if door not in rule.doors:
            continue
        detail = rule.check(w)
        if detail is not None:
            return _decision(w, False, rule.code, detail)
    if w.gated:
        detail = (
            f"{question.requested!r} needs the full matrix ({ENV_FULL}=1 or full_matrix=True); "
            f"running {w.strategy!r} instead"
        )
        return _decision(w, True, "full_matrix_disabled", detail)
    parallel = "?" if w.parallel_s is None else f"{w.parallel_s:.4g} s"
    detail = (
        f"{w.strategy} on {w.workers} workers: estimated {parallel} against {w.serial_s:.4g} s "
        f"serial ({w.items} items x {w.per_item_s:.3g} s, {question.cost_source})"
    )
    return _decision(w, True, "enabled", detail)


def _decision(w: Weighing, parallel: bool, reason: str, detail: str) -> ParallelDecision:
    q, resources = w.question, w.ground.resources
    if parallel:
        strategy, workers = w.strategy, w.workers
        executor_type = q.executor_type if (q.executor_type and not w.gated) else _class(strategy)
    else:
        strategy, workers, executor_type = "sequential", 1, "SerialExecutor"
    over = ""
    if parallel and workers > resources.budget.count:
        over = f"; {workers} workers exceed the CPU budget of {resources.budget.count} (asked for)"
    return ParallelDecision(
        use_parallel=parallel,
        decision="parallel" if parallel else "serial",
        strategy=strategy,
        workers=workers,
        reason=reason,
        detail=detail + over,
        n_instances=q.n_instances,
        n_features=q.n_features,
        bytes_hint=w.payload,
        seconds_per_item=q.per_item_s if q.cost_source == "hint" else None,
        estimated_work_s=w.serial_s,
        requested_strategy=q.requested,
        full_matrix=w.ground.config.full_matrix,
        executor_type=executor_type,
        platform=f"{resources.platform}/{resources.start_method}",
        ci=resources.ci,
        cpu_budget=w.budget,
        cpu_limited_by=w.limited_by,
        cost_source=q.cost_source,
        per_item_s=w.per_item_s,
        start_cost_s=w.start_s,
        estimated_serial_s=w.serial_s,
        estimated_parallel_s=w.parallel_s,
        nested=q.nested,
    )


def _class(strategy: str) -> str:
    from .callers import executor_class_name

    return executor_class_name(strategy)


__all__ = [
    "COST_SOURCES",
    "PARALLEL_REASONS",
    "REASONS",
    "RULES",
    "Ground",
    "Question",
    "Rule",
    "Weighing",
    "decide",
    "weigh",
]
