"""How a map learns what its items cost: a hint, the memory, a pilot, or the assumption.

The facade and ``auto`` both go through here, so they measure and remember the same way:

1. ``seconds_per_item`` given by the caller: the ``hint`` decides.
2. A measurement of the same function in ``costs.MEMORY``: ``remembered``, nothing runs.
3. Otherwise a ``pilot``: the first items run here, their results are kept (never recomputed),
   and what they measured is remembered for the next call.
4. When nothing can be measured: ``assumed`` (the gate's count rules and assumed cost decide).

After the run, ``check_run`` compares what it took with what was predicted; two runs in a row
more than ``RECHECK_FACTOR`` off replace what was remembered, so one misjudged pilot is not kept
for ever, and one noisy run does not turn a decision (runs and predictions both under
``RECHECK_MIN_S`` are too short to judge).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .costs import GIL_PROBE_VOTES, MEMORY, Measurement
from .heuristics import (
    MIN_PARALLEL_GAIN,
    OBSERVED_RETRY_MAPS,
    PILOT_MIN_CPU_RATIO,
    PROBE_MAX_FRACTION,
    PROBE_MIN_ITEMS_PER_THREAD,
    RECHECK_FACTOR,
    RECHECK_MIN_S,
    RUNNER_UP_MARGIN,
    THREAD_PROBE_MIN_WORK_S,
)
from .pilot import (
    PilotError,
    PilotResult,
    gil_verdict,
    pickled_size,
    pilot,
    probe_items,
    probe_threads,
    time_first_items,
)


@dataclass
class Costing:
    """What a map knows about its items' cost, and the results a pilot already produced."""

    source: str
    measurement: Measurement | None
    key: Hashable | None = None
    head: list[Any] = field(default_factory=list)

    @property
    def per_item_s(self) -> float | None:
        return None if self.measurement is None else self.measurement.per_item_s


def hinted(seconds_per_item: float) -> Costing:
    """The caller's hint."""
    return Costing("hint", Measurement(float(seconds_per_item), items=0))


def recall(fn: Callable[..., Any]) -> Costing | None:
    """What the memory knows about ``fn``, if anything (nothing runs)."""
    key = MEMORY.key(fn)
    known = MEMORY.recall(key)
    if known is None:
        return None
    return Costing("remembered", known, key)


def measure(
    fn: Callable[..., Any],
    work: Sequence[Any],
    seeds: Sequence[Any] | None,
    *,
    probe_threads: int = 0,
    probe_share: float = PROBE_MAX_FRACTION,
    sizes: bool = False,
) -> Costing:
    """Run a pilot of the first items of ``work`` here; remember what it measured.

    With ``probe_threads`` >= 2 the pilot also runs a few items on that many threads at once,
    to learn whether the items hold the GIL (what a thread pool needs to know). With ``sizes``
    it also measures what an item and the function cost to pickle (what a strategy that pickles
    work must send: a large array bound into ``fn`` is seen without a hint). A caller's
    exception is raised as ``PilotError`` with the failing item's index. ``probe_share`` caps the
    share of the items the thread probe runs. A remembered function is probed again with
    ``probe_known``.
    """
    if probe_threads >= 2:
        result = pilot(fn, work, seeds, threads=probe_threads, probe_share=probe_share)
    else:
        result = time_first_items(fn, work, seeds)
    holds_gil = result.holds_gil
    probes = bound = 0
    if holds_gil is not None:
        probes, bound = 1, int(holds_gil)
    item_bytes = unshared = None
    if holds_gil or sizes:
        item_bytes, unshared = _item_sizes(fn, work)
    measurement = Measurement(
        per_item_s=result.per_item_seconds,
        spread=result.spread,
        items=result.done,
        holds_gil=holds_gil,
        cpu_ratio=result.cpu_ratio,
        thread_scaling=result.thread_scaling,
        item_bytes=item_bytes,
        item_unshared_bytes=unshared,
        fn_bytes=pickled_size(fn) if sizes else None,
        sized=sizes,
        gil_probes=probes,
        gil_bound_probes=bound,
    )
    key = MEMORY.remember_fn(fn, measurement)
    return Costing("pilot", measurement, key, result.results)


def _item_sizes(fn: Callable[..., Any], work: Sequence[Any]) -> tuple[int | None, int | None]:
    """What the first item costs to pickle, in all and less the objects every item shares."""
    from .shared_objects import find_shared

    item_bytes = pickled_size(work[0])
    shared = find_shared(fn, work) if item_bytes is not None else []
    return item_bytes, pickled_size(work[0], shared) if shared else item_bytes


def with_sizes(fn: Callable[..., Any], work: Sequence[Any], known: Costing) -> Costing:
    """``known`` with what an item and ``fn`` cost to pickle, each measured now if it lacks it.

    A function remembered from a serial run, or from a pilot for a strategy that sends
    nothing (threads), carries no sizes; a strategy that pickles work must not be blind to an
    8 MB array per item because another facade measured the function first.
    """
    m = known.measurement
    if m is None or not work or m.sized:
        return known
    item_bytes, unshared = m.item_bytes, m.item_unshared_bytes
    if item_bytes is None:
        item_bytes, unshared = _item_sizes(fn, work)
    # a pilot that found the items holding the GIL measured them, but not fn
    fn_bytes = pickled_size(fn) if m.fn_bytes is None else m.fn_bytes
    updated = replace(
        m, item_bytes=item_bytes, item_unshared_bytes=unshared, fn_bytes=fn_bytes, sized=True
    )
    MEMORY.remember(known.key, updated)
    return replace(known, measurement=updated)


def for_map(
    fn: Callable[..., Any],
    work: Sequence[Any],
    seeds: Sequence[Any] | None,
    *,
    target: str,
    may_pilot: bool,
) -> Costing | None:
    """The cost of ``fn``'s items for a map with no hint: remembered, else a pilot (when
    ``may_pilot``), else None (the assumption).

    ``target`` is the strategy a parallel decision would run. One that does not pickle work
    (threads, or auto choosing among threads and the rest) needs to know whether the items hold
    the GIL: its pilot probes them on threads, and a remembered function whose verdict is missing
    (its pilot left too little to probe) or unsettled is probed again, on a map with the work
    for it (``THREAD_PROBE_MIN_WORK_S``), until the votes settle. One that pickles work needs
    the bytes an item and the function cost to send. A caller's exception
    in the pilot is raised with its index.
    """
    from .executor import annotate_item_error
    from .registry import strategy_records

    records = strategy_records()
    sending = records.get(target)
    pickles = sending is not None and sending.pickles_work
    probe = 2 if sending is not None and not pickles else 0
    known = recall(fn)
    if known is not None:
        if may_pilot and pickles:
            known = with_sizes(fn, work, known)
        m = known.measurement
        if not (probe and may_pilot and m is not None and _wants_probe(m)):
            return known
        if not _probe_fits(m, len(work), probe):
            return known  # too little work in this map to read a probe; a longer map will
    elif not may_pilot:
        return None
    try:
        if known is not None:
            return probe_known(fn, work, seeds, known, probe)
        return measure(
            fn,
            work,
            seeds,
            probe_threads=probe,
            # asking for threads, the facade's only other choice is serial: probe items on
            # threads run at least at the serial rate, so a longer, surer probe costs nothing
            probe_share=1.0,
            sizes=pickles,
        )
    except PilotError as failure:
        annotate_item_error(failure.error, failure.index, "sequential", None)
        raise failure.error from None


def _wants_probe(m: Measurement) -> bool:
    """Whether a thread probe could still change what is known of the items' GIL use: none ran
    (the pilot left too little of its map; fewer than ``GIL_PROBE_VOTES`` ran unread), or the
    votes have not settled."""
    unprobed = m.holds_gil is None and m.gil_probes == 0
    return (unprobed and m.gil_unread_probes < GIL_PROBE_VOTES) or not m.gil_verdict_settled


def _probe_fits(m: Measurement, n: int, threads: int) -> bool:
    """Whether a map of ``n`` items has the items and the work to probe on ``threads``."""
    return n >= threads * PROBE_MIN_ITEMS_PER_THREAD and n * m.per_item_s >= (
        THREAD_PROBE_MIN_WORK_S
    )


def probe_known(
    fn: Callable[..., Any],
    work: Sequence[Any],
    seeds: Sequence[Any] | None,
    known: Costing,
    threads: int,
) -> Costing:
    """Probe a remembered function's items on ``threads`` threads: its cost is known, whether
    they hold the GIL is not (its pilot took the whole of a short map), or not settled.

    The first items of ``work`` (enough for ``PROBE_TARGET_S`` per thread, possibly all) run on
    the threads; their results are kept as the costing's ``head``, and the verdict is
    remembered. A caller's exception is raised as ``PilotError`` with its index.
    """
    m = known.measurement
    if m is None:
        return known
    count = min(len(work), probe_items(m.per_item_s, threads))
    results, wall, cpu, done, read = probe_threads(
        fn, work[:count], None if seeds is None else seeds[:count], threads, m.per_item_s
    )
    if not read:
        # the threads ran one after another: no vote; after GIL_PROBE_VOTES such probes the
        # items are left assumed to hold the GIL
        updated = replace(m, gil_unread_probes=m.gil_unread_probes + 1)
    else:
        serial = PilotResult([], m.per_item_s, serial_cpu_ratio(m.cpu_ratio, wall, cpu))
        holds, scaling = gil_verdict(serial, done, wall, cpu, threads)
        probes, bound = m.gil_probes + 1, m.gil_bound_probes + int(holds)
        updated = replace(
            m,
            # the majority of the probes decides; a tie goes to "releases the GIL", which a
            # slow run on threads then corrects (check_run)
            holds_gil=2 * bound > probes,
            thread_scaling=scaling,
            gil_probes=probes,
            gil_bound_probes=bound,
        )
    MEMORY.remember(known.key, updated)
    return Costing("pilot", updated, known.key, results)


def serial_cpu_ratio(known: float | None, wall_s: float, cpu_s: float) -> float:
    """The serial CPU share a probe is judged against: the pilot's, when it measured one.

    A measurement learnt from a serial run has none: items that kept the probe's threads busy
    (``cpu_s`` over ``wall_s``) are then taken as CPU-bound, judged by the CPUs they kept busy,
    and others as mostly waiting, judged by their wall-clock speed-up (``gil_verdict``).
    """
    if known is not None:
        return known
    return 1.0 if wall_s > 0 and cpu_s / wall_s >= PILOT_MIN_CPU_RATIO else 0.0


def learn(fn: Callable[..., Any], per_item_s: float, items: int) -> None:
    """Remember what a serial run of ``fn`` measured, where nothing was known before."""
    if MEMORY.recall(MEMORY.key(fn)) is None:
        MEMORY.remember_fn(fn, Measurement(per_item_s=per_item_s, items=items))


def check_run(
    costing: Costing,
    strategy: str,
    items: int,
    wall_s: float,
    predicted_s: float | None,
    start_s: float = 0.0,
    serial_s: float | None = None,
    runner_up_s: float | None = None,
) -> bool:
    """Compare a run with its prediction; two runs far off in a row update the memory. True if
    updated.

    One run more than ``RECHECK_FACTOR`` off is kept as a suspect: a single slow run (another
    process on the machine, a worker's first call) must not turn the next decision. A second
    run of the same strategy off in the same direction confirms it: the mean of the two then
    replaces the remembered cost (a serial run) or is remembered as what that strategy really
    takes for this function (``Measurement.observed``), which the next estimate uses instead of
    the model. A run close to its prediction clears the suspect. A parallel run that took
    ``MIN_PARALLEL_GAIN`` times ``serial_s``, the serial loop's estimate it was chosen over,
    counts as far off however close to its own prediction (except the run right after the
    pilot, which meets the workers cold): the choice itself was wrong (a model 1.2-2x
    optimistic chooses a pool that loses to the loop on every call). The margin is the
    decision's own: a pilot's estimate of the loop is itself off by up to ~2x in a noisy
    spell, and a run merely as slow as that estimate would turn good decisions back. Where
    another pool was weighed too (``auto``), a parallel run that took ``RUNNER_UP_MARGIN``
    times ``runner_up_s``, that pool's estimate, counts as far off in the same way: the pool
    it ran on may not be the best after all (threads on items only partly free of the GIL).
    A run of a function whose pools' times were remembered, on a strategy with none
    remembered (serial, or another pool), counts towards ``OBSERVED_RETRY_MAPS``: after that
    many, those times are forgotten (True is returned) and the next decision weighs the model
    again.
    """
    if costing.key is None or costing.measurement is None or items <= 0 or predicted_s is None:
        return False
    if predicted_s <= 0 or wall_s <= 0 or max(wall_s, predicted_s) < RECHECK_MIN_S:
        return False
    known = costing.measurement
    if known.observed and known.observed_for(strategy) is None:
        # kept off a pool because it ran slowly for fn (serial, or on another pool): retry the
        # model now and then, so that a slow spell of the machine does not keep that pool
        # away for the process's lifetime
        runs = known.unobserved_runs + 1
        if runs >= OBSERVED_RETRY_MAPS:
            _keep(costing, replace(known, observed=(), suspect=None, unobserved_runs=0))
            return True
        known = replace(known, unobserved_runs=runs)
        _keep(costing, known)
    pending = known.suspect if known.suspect and known.suspect[0] == strategy else None
    per_item = max(0.0, wall_s - start_s) / items
    expected = predicted_s / items
    # (a function's first run on a pool, right after its pilot, plans chunks without a known
    # item cost and meets the workers cold: it is not judged against the loop)
    lost = (costing.source != "pilot" and strategy != "sequential") and (
        (serial_s is not None and wall_s > MIN_PARALLEL_GAIN * serial_s > 0)
        or (runner_up_s is not None and wall_s > RUNNER_UP_MARGIN * runner_up_s > 0)
    )
    if not lost and abs(math.log(wall_s / predicted_s)) <= math.log(RECHECK_FACTOR):
        if pending is not None:
            _keep(costing, replace(known, suspect=None))
        return False
    if pending is None or (pending[1] > expected) != (per_item > expected):
        _keep(costing, replace(known, suspect=(strategy, per_item)))
        return False
    per_item = (per_item + pending[1]) / 2
    if strategy == "sequential":
        updated = replace(known, per_item_s=per_item, items=items, suspect=None)
    else:
        updated = replace(known.with_observed(strategy, per_item), suspect=None)
    _keep(costing, updated)
    return True


def _keep(costing: Costing, updated: Measurement) -> None:
    MEMORY.remember(costing.key, updated)
    costing.measurement = updated


__all__ = [
    "Costing",
    "PilotError",
    "check_run",
    "for_map",
    "hinted",
    "learn",
    "measure",
    "probe_known",
    "recall",
    "serial_cpu_ratio",
    "with_sizes",
]
