"""``_auto_strategy``: from a measured workload profile and the machine's resources to a strategy.

The selector estimates, for each strategy, the time the remaining items would take, from
quantities the pilot measures (seconds per item, CPU use per item, whether threads scale) and the
machine facts in ``Resources`` (CPU budget, pool start costs). It returns the fastest estimate
only when it beats the serial loop by ``MIN_PARALLEL_GAIN``; every threshold is a named constant
of ``heuristics`` with the workload that justifies it. Same inputs, same answer: nothing here
reads the clock or the environment.

The candidates are the registered strategies that auto may choose (``registry``); each is
estimated from its record's facts: a strategy that pickles work pays per-chunk dispatch and the
transfer of its payload, and cannot help GIL-free work; one that does not runs in this process and
cannot help GIL-bound work. The measurement itself is ``pilot.pilot``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .chunks import default_chunksize
from .heuristics import (
    AUTO_EXPECTED_MAPS_PER_POOL,
    AUTO_MIN_PARALLEL_WORK_S,
    FACADE_SECONDS_PER_WORK_ITEM,
    MIN_PARALLEL_GAIN,
    PROCESS_BYTES_PER_S,
    PROCESS_CHUNK_OVERHEAD_S,
    PROCESS_MAX_TASK_BYTES,
    RUNNER_UP_MARGIN,
    THREAD_CHUNK_OVERHEAD_S,
)
from .registry import StrategyRecord, strategy_record, strategy_records
from .resources import Resources


def selectable() -> tuple[str, ...]:
    """The strategies ``_auto_strategy`` may return: those registered with ``auto_may_choose``."""
    return tuple(n for n, r in strategy_records().items() if r.auto_may_choose)


@dataclass(frozen=True)
class WorkloadProfile:
    """What is known about one ``map`` call's work.

    ``n_items`` items remain to be run; ``work_items`` is the caller's unit of work (for example
    instances x features; defaults to ``n_items``), used only when nothing was measured.
    ``task_size_hint_bytes`` is the caller's estimate of one item's payload; ``item_bytes`` the
    measured pickled size of one item plus its result. ``per_item_seconds`` and ``cpu_ratio``
    (CPU seconds per wall second of one item, all threads of the process) come from the serial
    pilot; ``holds_gil`` from running items on threads at once (``thread_scaling`` is the
    measured CPU parallelism there). ``fn_bytes`` is the pickled size of the function, sent once
    per chunk to process workers. ``warm_pools`` names strategies whose pool is already running.
    """

    n_items: int
    work_items: int | None = None
    task_size_hint_bytes: int = 0
    per_item_seconds: float | None = None
    holds_gil: bool | None = None
    cpu_ratio: float | None = None
    thread_scaling: float | None = None
    item_bytes: int | None = None
    fn_bytes: int | None = None
    warm_pools: frozenset[str] = field(default_factory=frozenset)
    #: seconds per item that real runs of a strategy took for this function (strategy, s)
    observed: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Selection:
    """A strategy, the reason in one sentence, and the estimates (seconds) behind it."""

    strategy: str
    reason: str
    estimates: dict[str, float]

    def other_kind_s(self, strategy: str) -> float | None:
        """The lowest estimate among the pools of the other kind than ``strategy`` (threads
        against pools that pickle, and back): what a run of ``strategy`` is judged against
        (``costing.check_run``'s ``runner_up_s``). Two pools of one kind, estimated alike, are
        not set against each other: on a noisy machine they would take turns. None for the
        serial loop, or when no pool of the other kind was estimated."""
        if strategy == "sequential":
            return None
        kind = strategy_record(strategy).pickles_work
        others = [
            t
            for s, t in self.estimates.items()
            if s not in ("sequential", strategy) and strategy_record(s).pickles_work != kind
        ]
        return min(others, default=None)


def estimate_run_s(
    record: StrategyRecord,
    n: int,
    per_item_s: float,
    workers: int,
    *,
    start_s: float = 0.0,
    payload_bytes: int = 0,
    fn_bytes: int = 0,
    width: float | None = None,
    observed_s: float | None = None,
) -> float:
    """Estimated seconds for ``n`` items of ``per_item_s`` on ``record``'s pool of ``workers``.

    The one cost model of the gate and of auto: the pool's start-up (``start_s``, 0 when warm),
    its fixed cost per map, the items split into about ``CHUNKS_PER_WORKER`` chunks per worker
    (the slowest worker finishes last), the dispatch cost of each chunk, and, for a strategy that
    pickles work, the transfer of its payload and of the function once per chunk. ``width`` is
    how many items can really run at once (fewer than ``workers`` when each item already keeps
    several CPUs busy). ``observed_s``, seconds per item a real run of this strategy took for
    this function, replaces the model of the compute and dispatch.
    """
    opening = start_s + record.per_map_overhead_s
    if observed_s is not None:
        return opening + n * observed_s
    workers = max(1, workers)
    # the engine's own plan: the slowest worker runs ceil(chunks / workers) chunks
    per_chunk = default_chunksize(n, workers, cheap_dispatch=not record.pickles_work)
    chunks = math.ceil(n / per_chunk)
    rounds = math.ceil(chunks / workers)
    compute = per_item_s * rounds * per_chunk
    if width is not None and 0 < width < workers:
        compute *= workers / width
    if record.pickles_work:
        dispatch = chunks * PROCESS_CHUNK_OVERHEAD_S
        dispatch += (n * payload_bytes + chunks * fn_bytes) / PROCESS_BYTES_PER_S
    else:
        dispatch = chunks * THREAD_CHUNK_OVERHEAD_S
    return opening + compute + dispatch


def _payload_bytes(profile: WorkloadProfile) -> int:
    return max(profile.task_size_hint_bytes, profile.item_bytes or 0)


def _start_cost_s(record: StrategyRecord, resources: Resources) -> float:
    from .costs import MEMORY

    measured = MEMORY.start_cost(record.name)
    return measured if measured is not None else record.start_cost_s(resources)


def explain_selection(
    profile: WorkloadProfile,
    resources: Resources,
    *,
    allowed: Sequence[str] | None = None,
) -> Selection:
    """The strategy for ``profile`` on ``resources``, with its reason and the estimates.

    ``allowed`` restricts the answer (default: ``selectable()``; ``sequential`` is always
    allowed). Deterministic.
    """
    candidates_in_order = selectable()
    allowed = candidates_in_order if allowed is None else tuple(allowed)
    unknown = set(allowed) - set(candidates_in_order)
    if unknown:
        raise ValueError(
            f"allowed={tuple(allowed)!r} is not accepted; strategies must be among "
            f"{candidates_in_order}"
        )
    n = profile.n_items
    budget = resources.budget
    if budget.count <= 1:
        return Selection("sequential", f"the CPU budget is 1 ({budget.limited_by})", {})
    if n < 2:
        return Selection("sequential", f"{n} item(s) left: nothing to run side by side", {})

    measured = profile.per_item_seconds is not None
    if profile.per_item_seconds is not None:
        per_item = profile.per_item_seconds
    else:
        work = profile.work_items if profile.work_items is not None else n
        per_item = FACADE_SECONDS_PER_WORK_ITEM * work / n
    serial = n * per_item
    if serial < AUTO_MIN_PARALLEL_WORK_S:
        return Selection(
            "sequential",
            f"{n} items x {per_item * 1e3:.3g} ms = {serial * 1e3:.3g} ms of work, under "
            f"{AUTO_MIN_PARALLEL_WORK_S * 1e3:g} ms: no pool pays off",
            {"sequential": serial},
        )

    # Items that already keep several CPUs busy (multi-threaded BLAS) leave fewer to share.
    cores_per_item = max(1.0, profile.cpu_ratio or 1.0)
    width = min(budget.count, budget.count / cores_per_item)
    if width < MIN_PARALLEL_GAIN:
        return Selection(
            "sequential",
            f"each item already keeps {cores_per_item:.1f} CPUs busy of a budget of "
            f"{budget.count}: no room for more parallelism",
            {"sequential": serial},
        )

    workers = budget.count
    payload = _payload_bytes(profile)
    observed = dict(profile.observed)

    def start(strategy: str, cost: float) -> float:
        # A cold pool is charged a share of its start: pools are reused across maps.
        return 0.0 if strategy in profile.warm_pools else cost / AUTO_EXPECTED_MAPS_PER_POOL

    estimates: dict[str, float] = {"sequential": serial}
    excluded: dict[str, str] = {}
    for name in allowed:
        if name == "sequential":
            continue
        record = strategy_record(name)

        def estimate(record: StrategyRecord = record, name: str = name) -> float:
            return estimate_run_s(
                record,
                n,
                per_item,
                workers,
                start_s=start(name, _start_cost_s(record, resources)),
                payload_bytes=payload,
                fn_bytes=profile.fn_bytes or 0,
                width=width,
                observed_s=observed.get(name),
            )

        if name in observed:
            estimates[name] = estimate()  # a real run of it measured this function
        elif not record.pickles_work:
            if profile.holds_gil is True:
                excluded[name] = "items hold the GIL, so threads run them one at a time"
            else:
                estimates[name] = estimate()
        elif payload >= PROCESS_MAX_TASK_BYTES:
            excluded[name] = (
                f"items carry {payload:,} bytes, which process workers would have to pickle"
            )
        else:
            # (items that release the GIL are weighed on processes too: where only part of an
            # item is free of the GIL, threads run slower than estimated, and a run slower than
            # this pool's estimate turns the choice, see ``costing.check_run``)
            estimates[name] = estimate()
        if not measured and profile.holds_gil is None and name not in excluded:
            # Unmeasured work could be GIL-bound (threads lose) or GIL-free (processes pay for
            # pickling); joblib's defaults (conservative and pickling) were within reach of the
            # best on both kinds.
            if not record.pickles_work:
                excluded[name] = "nothing was measured, so threads may meet the GIL"
            elif not record.conservative:
                excluded[name] = "nothing was measured; joblib is the robust default"

    candidates = {
        s: t
        for s, t in estimates.items()
        if s != "sequential" and s in allowed and s not in excluded
    }
    what = (
        f"{n} items x {per_item * 1e3:.3g} ms {'measured' if measured else 'assumed'}"
        f" = {serial * 1e3:.3g} ms serial"
    )
    if not candidates:
        why = "; ".join(sorted(set(excluded.values()))) or "no parallel strategy is allowed"
        return Selection("sequential", f"{what}; {why}", estimates)
    # Lowest estimate; ties go to the strategy registered first (cheapest machinery).
    best = min(candidates, key=lambda s: (candidates[s], candidates_in_order.index(s)))
    threads = candidates.get("threads")
    if (
        profile.holds_gil is False
        and strategy_record(best).pickles_work
        and threads is not None
        and threads <= RUNNER_UP_MARGIN * candidates[best]
    ):
        # items free of the GIL stay on threads unless a pool that pickles them is clearly
        # faster: by the margin that turns a run of threads back (``costing.check_run``)
        best = "threads"
    speedup = serial / candidates[best] if candidates[best] > 0 else math.inf
    if speedup < MIN_PARALLEL_GAIN:
        return Selection(
            "sequential",
            f"{what}; the best pool ({best}) is estimated at only {speedup:.2f}x "
            f"(needs {MIN_PARALLEL_GAIN}x)",
            estimates,
        )
    notes = list(excluded.values())
    gil = {True: "hold the GIL", False: "release the GIL", None: "GIL use unmeasured"}
    reason = (
        f"{what}; items {gil[profile.holds_gil]}; {best} estimated "
        f"{candidates[best] * 1e3:.3g} ms ({speedup:.2f}x on {workers} workers)"
    )
    if notes:
        reason += "; " + "; ".join(dict.fromkeys(notes))
    return Selection(best, reason, estimates)


def _auto_strategy(
    profile: WorkloadProfile,
    resources: Resources,
    *,
    allowed: Sequence[str] | None = None,
) -> tuple[str, str]:
    """``(strategy, reason)`` for ``profile`` on ``resources``; see ``explain_selection``.

    The name is the one calibrated-explanations' executor used for its selector.
    """
    selection = explain_selection(profile, resources, allowed=allowed)
    return selection.strategy, selection.reason


#: Public name of ``_auto_strategy``.
select_strategy = _auto_strategy


__all__ = [
    "Selection",
    "WorkloadProfile",
    "estimate_run_s",
    "explain_selection",
    "select_strategy",
    "selectable",
]
