"""``_auto_strategy``: from a measured workload profile and the machine's resources to a strategy.

The selector estimates, for each strategy, the time the remaining items would take, from
quantities the pilot measures (seconds per item, CPU use per item, whether threads scale) and the
machine facts in ``Resources`` (CPU budget, pool start costs). It returns the fastest estimate
only when it beats the serial loop by ``AUTO_MIN_SPEEDUP``; every threshold is a named constant
of ``heuristics`` with the workload that justifies it. Same inputs, same answer: nothing here
reads the clock or the environment.

``pilot`` is the measurement: it runs the first items in the calling thread (and, when needed,
a few more on two threads at once) and keeps their results.
"""

from __future__ import annotations

import math
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Any

from .heuristics import (
    AUTO_EXPECTED_MAPS_PER_POOL,
    AUTO_MIN_PARALLEL_WORK_S,
    AUTO_MIN_SPEEDUP,
    CHUNKS_PER_WORKER,
    FACADE_SECONDS_PER_WORK_ITEM,
    GIL_RELEASE_MIN_SCALING,
    JOBLIB_CALL_OVERHEAD_S,
    PILOT_MAX_FRACTION,
    PILOT_MIN_CPU_RATIO,
    PILOT_TARGET_S,
    PROBE_MAX_FRACTION,
    PROBE_MIN_ITEMS_PER_THREAD,
    PROBE_TARGET_S,
    PROCESS_BYTES_PER_S,
    PROCESS_CHUNK_OVERHEAD_S,
    PROCESS_MAX_TASK_BYTES,
    THREAD_CHUNK_OVERHEAD_S,
)
from .resources import Resources

#: Strategies ``_auto_strategy`` may return.
SELECTABLE: tuple[str, ...] = ("sequential", "threads", "processes", "joblib")
_PROCESS_BASED = frozenset({"processes", "joblib"})


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


@dataclass(frozen=True)
class Selection:
    """A strategy, the reason in one sentence, and the estimates (seconds) behind it."""

    strategy: str
    reason: str
    estimates: dict[str, float]


def _chunks(n: int, workers: int) -> int:
    return min(n, max(1, workers) * CHUNKS_PER_WORKER)


def _payload_bytes(profile: WorkloadProfile) -> int:
    return max(profile.task_size_hint_bytes, profile.item_bytes or 0)


def explain_selection(
    profile: WorkloadProfile,
    resources: Resources,
    *,
    allowed: Sequence[str] = SELECTABLE,
) -> Selection:
    """The strategy for ``profile`` on ``resources``, with its reason and the estimates.

    ``allowed`` restricts the answer (``sequential`` is always allowed). Deterministic.
    """
    unknown = set(allowed) - set(SELECTABLE)
    if unknown:
        raise ValueError(
            f"allowed={tuple(allowed)!r} is not accepted; strategies must be among {SELECTABLE}"
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
    if width < AUTO_MIN_SPEEDUP:
        return Selection(
            "sequential",
            f"each item already keeps {cores_per_item:.1f} CPUs busy of a budget of "
            f"{budget.count}: no room for more parallelism",
            {"sequential": serial},
        )

    workers = budget.count
    chunks = _chunks(n, workers)
    payload = _payload_bytes(profile)
    ideal = serial / width

    def start(strategy: str, cost: float) -> float:
        # A cold pool is charged a share of its start: pools are reused across maps.
        return 0.0 if strategy in profile.warm_pools else cost / AUTO_EXPECTED_MAPS_PER_POOL

    estimates: dict[str, float] = {"sequential": serial}
    excluded: dict[str, str] = {}
    if profile.holds_gil is True:
        excluded["threads"] = "items hold the GIL, so threads run them one at a time"
    else:
        estimates["threads"] = (
            start("threads", resources.thread_start_s) + ideal + chunks * THREAD_CHUNK_OVERHEAD_S
        )
    if payload >= PROCESS_MAX_TASK_BYTES:
        reason = f"items carry {payload:,} bytes, which process workers would have to pickle"
        excluded["processes"] = excluded["joblib"] = reason
    elif profile.holds_gil is False:
        reason = "items release the GIL, so threads run them in parallel without pickling"
        excluded["processes"] = excluded["joblib"] = reason
    else:
        transfer = (n * payload + chunks * (profile.fn_bytes or 0)) / PROCESS_BYTES_PER_S
        processes = ideal + chunks * PROCESS_CHUNK_OVERHEAD_S + transfer
        estimates["processes"] = start("processes", resources.process_start_s) + processes
        estimates["joblib"] = (
            start("joblib", resources.process_start_s) + processes + JOBLIB_CALL_OVERHEAD_S
        )
    if not measured and profile.holds_gil is None:
        # Unmeasured work could be GIL-bound (threads lose) or GIL-free (processes pay for
        # pickling); joblib's defaults were within reach of the best on both kinds.
        excluded.setdefault("threads", "nothing was measured, so threads may meet the GIL")
        excluded.setdefault("processes", "nothing was measured; joblib is the robust default")

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
    # Lowest estimate; ties go to the strategy listed first in SELECTABLE (cheapest machinery).
    best = min(candidates, key=lambda s: (candidates[s], SELECTABLE.index(s)))
    speedup = serial / candidates[best] if candidates[best] > 0 else math.inf
    if speedup < AUTO_MIN_SPEEDUP:
        return Selection(
            "sequential",
            f"{what}; the best pool ({best}) is estimated at only {speedup:.2f}x "
            f"(needs {AUTO_MIN_SPEEDUP}x)",
            estimates,
        )
    notes = [excluded[s] for s in ("threads", "processes") if s in excluded]
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
    allowed: Sequence[str] = SELECTABLE,
) -> tuple[str, str]:
    """``(strategy, reason)`` for ``profile`` on ``resources``; see ``explain_selection``.

    The name is the one calibrated-explanations' executor used for its selector.
    """
    selection = explain_selection(profile, resources, allowed=allowed)
    return selection.strategy, selection.reason


#: Public name of ``_auto_strategy``.
select_strategy = _auto_strategy


# --- measurement ----------------------------------------------------------------------------


@dataclass
class PilotResult:
    """What the pilot ran and measured. ``results`` are those of items ``0 .. done - 1``."""

    results: list[Any]
    per_item_seconds: float
    cpu_ratio: float
    holds_gil: bool | None = None
    thread_scaling: float | None = None

    @property
    def done(self) -> int:
        """How many of the first items the pilot ran (their results are kept)."""
        return len(self.results)


def _call(fn: Callable[..., Any], items: Sequence[Any], seeds: Sequence[Any] | None) -> list[Any]:
    if seeds is None:
        return list(map(fn, items))
    from .worker import call_with_rng

    return list(map(call_with_rng, repeat(fn), items, seeds))


class PilotError(Exception):
    """Wraps the caller's exception raised by item ``index`` during the pilot."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index, error)
        self.index, self.error = index, error


def time_first_items(
    fn: Callable[..., Any],
    items: Sequence[Any],
    seeds: Sequence[Any] | None = None,
    *,
    target_s: float = PILOT_TARGET_S,
    max_items: int | None = None,
) -> PilotResult:
    """Run the first items in this thread, in growing blocks, until ``target_s`` has passed.

    At most ``max_items`` items (default: ``PILOT_MAX_FRACTION`` of them, at least one) run.
    Measures wall and CPU seconds per item. A caller's exception is raised as ``PilotError``
    with the failing item's index.
    """
    limit = max_items if max_items is not None else max(1, int(len(items) * PILOT_MAX_FRACTION))
    limit = min(limit, len(items))
    results: list[Any] = []
    block = 1
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    while len(results) < limit:
        stop = min(limit, len(results) + block)
        part = items[len(results) : stop]
        try:
            results.extend(_call(fn, part, None if seeds is None else seeds[len(results) : stop]))
        except Exception as exc:
            raise PilotError(len(results), exc) from exc
        if time.perf_counter() - wall_start >= target_s:
            break
        block *= 2
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    return PilotResult(results, wall / len(results), cpu / wall if wall > 0 else 1.0)


def probe_threads(
    fn: Callable[..., Any],
    items: Sequence[Any],
    seeds: Sequence[Any] | None,
    threads: int,
) -> tuple[list[Any], float, float]:
    """Run ``items`` split over ``threads`` threads at once.

    Returns the results, the wall seconds, and the CPU seconds the threads used in all (each
    thread's own ``time.thread_time``). A caller's exception is raised as ``PilotError`` with the
    smallest failing index.
    """
    from .worker import ChunkJob, run_chunk

    size = math.ceil(len(items) / threads)
    bounds = [(a, min(a + size, len(items))) for a in range(0, len(items), size)]
    outcomes: list[Any] = [None] * len(bounds)
    cpu: list[float] = [0.0] * len(bounds)
    barrier = threading.Barrier(len(bounds) + 1)

    def work(i: int, a: int, b: int) -> None:
        job = ChunkJob(fn, a, items[a:b], None if seeds is None else seeds[a:b])
        barrier.wait()
        started = time.thread_time()
        outcomes[i] = run_chunk(job)
        cpu[i] = time.thread_time() - started

    pool = [
        threading.Thread(target=work, args=(i, a, b), name="ce-parallel-probe", daemon=True)
        for i, (a, b) in enumerate(bounds)
    ]
    for thread in pool:
        thread.start()
    barrier.wait()
    wall_start = time.perf_counter()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - wall_start
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        first = min(failed, key=lambda o: o.error_index)
        raise PilotError(first.error_index, first.error)
    results = [r for o in outcomes for r in o.results]
    return results, wall, sum(cpu)


def pilot(
    fn: Callable[..., Any],
    items: Sequence[Any],
    seeds: Sequence[Any] | None = None,
    *,
    threads: int = 2,
    holds_gil: bool | None = None,
) -> PilotResult:
    """Measure the first items of a map: seconds per item, CPU use, and whether they hold the GIL.

    Runs items in this thread until ``PILOT_TARGET_S`` has passed (at most
    ``PILOT_MAX_FRACTION`` of them). Unless the remaining work is under
    ``AUTO_MIN_PARALLEL_WORK_S`` or each item already keeps several CPUs busy, the next items
    (enough for ``PROBE_TARGET_S`` per thread, at most ``PROBE_MAX_FRACTION`` of them) run on
    ``threads`` threads at once; their speed-up over the serial rate says whether they hold the
    GIL. Speed-up is measured on the wall clock, not CPU time, so a machine busy with other
    processes does not make CPU-bound work look like waiting. Every result is kept.
    """
    result = time_first_items(fn, items, seeds)
    if holds_gil is not None:
        return replace(result, holds_gil=holds_gil)
    remaining = len(items) - result.done
    if remaining * result.per_item_seconds < AUTO_MIN_PARALLEL_WORK_S:
        return result
    if result.cpu_ratio >= 1 + GIL_RELEASE_MIN_SCALING:
        return result  # each item already keeps more than a CPU busy (threaded BLAS)
    wanted_items = threads * math.ceil(PROBE_TARGET_S / max(result.per_item_seconds, 1e-9))
    # the share cap bounds the probe on long maps; the minimum per thread wins over it on short
    # ones, where one item per thread would leave the verdict to start-up skew
    capped = min(wanted_items, int(len(items) * PROBE_MAX_FRACTION))
    count = min(remaining, max(threads * PROBE_MIN_ITEMS_PER_THREAD, capped))
    if threads < 2 or count < threads:
        return result
    start = result.done
    more, wall, cpu = probe_threads(
        fn,
        items[start : start + count],
        None if seeds is None else seeds[start : start + count],
        threads,
    )
    holds, scaling = gil_verdict(result, count, wall, cpu, threads)
    return PilotResult(
        result.results + more,
        result.per_item_seconds,
        result.cpu_ratio,
        holds_gil=holds,
        thread_scaling=scaling,
    )


def gil_verdict(
    serial: PilotResult, count: int, wall: float, cpu: float, threads: int
) -> tuple[bool, float]:
    """Whether items hold the GIL, and their wall-clock speed-up on threads, from measurements.

    ``serial`` is the pilot's serial run; ``count`` items then took ``wall`` seconds on
    ``threads`` threads, which used ``cpu`` CPU seconds in all. Reads no clock.
    """
    scaling = count * serial.per_item_seconds / wall if wall > 0 else float(threads)
    # How much more CPU the threads kept busy than the serial pilot did. Items that hold the
    # GIL keep one CPU busy however many threads run them; items that release it keep one per
    # thread. Comparing CPU use rather than item throughput does not depend on how well the
    # pilot's first (often slower, cold) items predict the next ones, and dividing by the
    # pilot's own CPU share cancels most of the effect of other processes on the machine.
    # Items that mostly wait (sleep, I/O) use too little CPU to tell: their wall-clock speed-up
    # on threads says it instead.
    wanted = 1 + GIL_RELEASE_MIN_SCALING * (min(threads, count) - 1)
    if serial.cpu_ratio < PILOT_MIN_CPU_RATIO:
        parallelism = scaling
    else:
        busy = cpu / wall if wall > 0 else float(threads)
        parallelism = busy / serial.cpu_ratio
    return parallelism < wanted, scaling


def pickled_size(value: Any) -> int | None:
    """Bytes ``value`` costs to send to a process: pickle stream plus out-of-band buffers.

    Large NumPy arrays are counted from their buffers without being copied. None when the value
    cannot be pickled with the standard pickler (cloudpickle may still manage).
    """
    buffers: list[pickle.PickleBuffer] = []
    try:
        stream = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception:
        return None
    return len(stream) + sum(buffer.raw().nbytes for buffer in buffers)


__all__ = [
    "SELECTABLE",
    "PilotError",
    "PilotResult",
    "Selection",
    "WorkloadProfile",
    "explain_selection",
    "gil_verdict",
    "pickled_size",
    "pilot",
    "probe_threads",
    "select_strategy",
    "time_first_items",
]
