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

from collections.abc import Callable
from dataclasses import dataclass

from . import heuristics
from .config import ENV_FULL, ENV_MAIN
from .decision import ParallelDecision
from .weighing import COST_SOURCES, FrontDoor, Ground, Question, Weighing, weigh

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
    return f"called inside a {w.question.nested} worker: no pool in a pool"


def _library_serial(w: Weighing) -> str | None:
    detail = w.question.library_serial
    return None if detail is None else f"{detail} asks for serial work"


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
    Rule(
        "library_config",
        ("facade", "executor"),
        _library_serial,
        "another library's own setting (joblib.parallel_config(n_jobs=1)) asks for serial work",
    ),
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
