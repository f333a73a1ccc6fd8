"""The pilot: run the first items of a map here, keep their results, measure their cost.

``pilot`` runs items in the calling thread (and, when needed, a few more on two threads at once
to see whether they hold the GIL). Every result is kept: a piloted item never runs again.
"""

from __future__ import annotations

import contextlib
import io
import math
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .heuristics import (
    AUTO_MIN_PARALLEL_WORK_S,
    GIL_RELEASE_MIN_SCALING,
    PILOT_FREE_S,
    PILOT_MAX_FRACTION,
    PILOT_MIN_CPU_RATIO,
    PILOT_TARGET_S,
    PROBE_MAX_FRACTION,
    PROBE_MIN_ITEMS_PER_THREAD,
    PROBE_SAMPLE_S,
    PROBE_TARGET_S,
)


@dataclass
class PilotResult:
    """What the pilot ran and measured. ``results`` are those of items ``0 .. done - 1``."""

    results: list[Any]
    per_item_seconds: float
    cpu_ratio: float
    holds_gil: bool | None = None
    thread_scaling: float | None = None
    #: relative spread of the per-item time between the pilot's blocks (0: steady, or one block)
    spread: float = 0.0

    @property
    def done(self) -> int:
        """How many of the first items the pilot ran (their results are kept)."""
        return len(self.results)


def _call(fn: Callable[..., Any], items: Sequence[Any], seeds: Sequence[Any] | None) -> list[Any]:
    # a loop, not map(): a StopIteration raised by fn must propagate, not end the block early;
    # the offset of a failing item is attached to its exception for the caller's index
    from .worker import call_with_rng

    out: list[Any] = []
    try:
        if seeds is None:
            for item in items:
                out.append(fn(item))
        else:
            for item, seed in zip(items, seeds, strict=True):
                out.append(call_with_rng(fn, item, seed))
    except Exception as exc:
        exc.__ce_parallel_offset__ = len(out)  # type: ignore[attr-defined]
        raise
    return out


def _failed_offset(exc: BaseException) -> int:
    offset = getattr(exc, "__ce_parallel_offset__", 0)
    with contextlib.suppress(AttributeError):
        del exc.__ce_parallel_offset__  # type: ignore[attr-defined]
    return int(offset)


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

    At most ``max_items`` items run; by default ``PILOT_MAX_FRACTION`` of them (at least one),
    or more while the pilot has taken less than ``PILOT_FREE_S``.
    Measures wall and CPU seconds per item. A caller's exception is raised as ``PilotError``
    with the failing item's index.
    """
    limit = max_items if max_items is not None else max(1, int(len(items) * PILOT_MAX_FRACTION))
    limit = min(limit, len(items))
    # items this cheap cost less to run here than any pool could save: past the share cap,
    # the pilot goes on until PILOT_FREE_S has passed (a one-item pilot is one noisy sample)
    free = max_items is None
    results: list[Any] = []
    rates: list[float] = []
    block = 1
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    while len(results) < limit or (
        free and len(results) < len(items) and time.perf_counter() - wall_start < PILOT_FREE_S
    ):
        if len(results) < limit:
            stop = min(limit, len(results) + block)
        else:
            # past the share: only as many items as fit in what is left of PILOT_FREE_S
            left = PILOT_FREE_S - (time.perf_counter() - wall_start)
            fit = int(left / rates[-1]) if rates and rates[-1] > 0 else block
            stop = min(len(items), len(results) + max(1, min(block, fit)))
        part = items[len(results) : stop]
        tick = time.perf_counter()
        try:
            done = _call(fn, part, None if seeds is None else seeds[len(results) : stop])
        except Exception as exc:
            # the failing item's index: the block's start plus how far the block got
            raise PilotError(len(results) + _failed_offset(exc), exc) from exc
        results.extend(done)
        rates.append((time.perf_counter() - tick) / max(1, len(part)))
        if time.perf_counter() - wall_start >= target_s:
            break
        block *= 2
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    spread = 0.0
    if len(rates) > 1 and max(rates) > 0:
        spread = (max(rates) - min(rates)) / max(rates)
    per_item = wall / len(results)
    if len(rates) > 1:
        # the first block is one item, and the first item of a process's first map pays what
        # later ones do not (a lazy import, BLAS starting up, a cold allocator): 1.7-7x the
        # others for a forest fit or a matmul. With later blocks to go by, it is left out.
        later = (wall - rates[0]) / (len(results) - 1)
        per_item = min(per_item, later)
    return PilotResult(results, per_item, cpu / wall if wall > 0 else 1.0, spread=spread)


def probe_items(per_item_s: float, threads: int) -> int:
    """How many items a thread probe wants: enough for ``PROBE_TARGET_S`` on each thread."""
    return threads * math.ceil(PROBE_TARGET_S / max(per_item_s, 1e-9))


def probe_threads(
    fn: Callable[..., Any],
    items: Sequence[Any],
    seeds: Sequence[Any] | None,
    threads: int,
    per_item_s: float | None = None,
) -> tuple[list[Any], float, float, float, bool]:
    """Run ``items`` split over ``threads`` threads at once.

    Returns the results and, over the time every thread was running, the wall seconds, the CPU
    seconds the threads used in all (each thread's own ``time.thread_time``) and the items they
    finished; last, whether the threads overlapped long enough to be read (``overlapped``).
    Threads start a fraction of a ms apart, and one that starts when another has finished
    shows no overlap at all, whatever the items do with the GIL: so each thread notes its
    clocks every ``PROBE_SAMPLE_S`` or so (from ``per_item_s``, the serial cost of an item),
    and the numbers are read over the overlap. When the overlap is too short to read
    (under a quarter of the longest thread's run), they are the whole probe's. A caller's
    exception is raised as ``PilotError`` with the smallest failing index.
    """
    from .worker import ChunkJob, run_chunk

    size = math.ceil(len(items) / threads)
    bounds = [(a, min(a + size, len(items))) for a in range(0, len(items), size)]
    step = max(1, int(PROBE_SAMPLE_S / per_item_s)) if per_item_s else size
    outcomes: list[list[Any]] = [[] for _ in bounds]
    # per thread: (wall clock, thread CPU, items done), before the first item and after each step
    samples: list[list[tuple[float, float, int]]] = [[] for _ in bounds]

    # No start barrier: threads released together from one were seen to run one after the
    # other (the second began as the first ended, 1.6 ms later, in 3 of 3 probes of 300 us
    # SHA-256 items), while a thread started once the one before is running overlaps it after
    # its own start-up (~0.3 ms), which the reading over the overlap leaves out.
    def work(i: int, a: int, b: int) -> None:
        notes = samples[i]
        notes.append((time.perf_counter(), time.thread_time(), 0))
        for lo in range(a, b, step):
            hi = min(lo + step, b)
            job = ChunkJob(fn, lo, items[lo:hi], None if seeds is None else seeds[lo:hi])
            outcome = run_chunk(job)
            outcomes[i].append(outcome)
            if outcome.error is not None:
                return
            notes.append((time.perf_counter(), time.thread_time(), hi - a))

    pool = [
        threading.Thread(target=work, args=(i, a, b), name="ce-parallel-probe", daemon=True)
        for i, (a, b) in enumerate(bounds)
    ]
    wall_start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - wall_start
    failed = [o for chunks in outcomes for o in chunks if o.error is not None]
    if failed:
        first = min(failed, key=lambda o: o.error_index)
        raise PilotError(first.error_index, first.error)
    results = [r for chunks in outcomes for o in chunks for r in o.results]
    return (results, *read_overlap(samples, wall), overlapped(samples))


def overlapped(samples: Sequence[Sequence[tuple[float, float, int]]]) -> bool:
    """Whether every probe thread ran at once for at least a quarter of the longest one's run:
    threads that ran one after another (one started late, or items that each hold the GIL for
    less than its switch interval) say nothing about how the items use the GIL."""
    return _overlap(samples) is not None


def _overlap(samples: Sequence[Sequence[tuple[float, float, int]]]) -> tuple[float, float] | None:
    lo = max(notes[0][0] for notes in samples)
    hi = min(notes[-1][0] for notes in samples)
    longest = max(notes[-1][0] - notes[0][0] for notes in samples)
    return None if hi - lo < longest / 4 or hi <= lo else (lo, hi)


def read_overlap(
    samples: Sequence[Sequence[tuple[float, float, int]]], wall: float
) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and items done over the time every probe thread was running.

    ``samples`` holds each thread's notes ``(wall clock, thread CPU, items done)``, the first
    before its first item; ``wall`` is the whole probe's wall time. With an overlap under a
    quarter of the longest thread's run, the whole probe's numbers are returned. Reads no clock.
    """
    span = _overlap(samples)
    if span is None:
        cpu = sum(notes[-1][1] - notes[0][1] for notes in samples)
        return wall, cpu, float(sum(notes[-1][2] for notes in samples))
    lo, hi = span
    cpu = sum(_at(notes, hi, 1) - _at(notes, lo, 1) for notes in samples)
    done = sum(_at(notes, hi, 2) - _at(notes, lo, 2) for notes in samples)
    return hi - lo, cpu, done


def _at(notes: Sequence[tuple[float, float, int]], when: float, field: int) -> float:
    """A thread's clock ``field`` at wall time ``when``, read linearly between its notes."""
    before = notes[0]
    for after in notes[1:]:
        if after[0] >= when:
            span = after[0] - before[0]
            share = (when - before[0]) / span if span > 0 else 1.0
            return before[field] + share * (after[field] - before[field])
        before = after
    return float(notes[-1][field])


def pilot(
    fn: Callable[..., Any],
    items: Sequence[Any],
    seeds: Sequence[Any] | None = None,
    *,
    threads: int = 2,
    holds_gil: bool | None = None,
    probe_share: float = PROBE_MAX_FRACTION,
) -> PilotResult:
    """Measure the first items of a map: seconds per item, CPU use, and whether they hold the GIL.

    Runs items in this thread until ``PILOT_TARGET_S`` has passed (at most
    ``PILOT_MAX_FRACTION`` of them). Unless the remaining work is under
    ``AUTO_MIN_PARALLEL_WORK_S`` or each item already keeps several CPUs busy, the next items
    (enough for ``PROBE_TARGET_S`` per thread, at most ``probe_share`` of them) run on
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
    wanted_items = probe_items(result.per_item_seconds, threads)
    # the share cap bounds the probe on long maps; the minimum per thread wins over it on short
    # ones, where one item per thread would leave the verdict to start-up skew
    capped = min(wanted_items, int(len(items) * probe_share))
    count = min(remaining, max(threads * PROBE_MIN_ITEMS_PER_THREAD, capped))
    if threads < 2 or count < threads:
        return result
    start = result.done
    try:
        more, wall, cpu, done, _ = probe_threads(
            fn,
            items[start : start + count],
            None if seeds is None else seeds[start : start + count],
            threads,
            result.per_item_seconds,
        )
    except PilotError as failure:
        # the probe ran a slice: its index counts from the slice's start
        raise PilotError(start + failure.index, failure.error) from failure.error

    holds, scaling = gil_verdict(result, done, wall, cpu, threads)
    return PilotResult(
        result.results + more,
        result.per_item_seconds,
        result.cpu_ratio,
        holds_gil=holds,
        thread_scaling=scaling,
        spread=result.spread,
    )


def gil_verdict(
    serial: PilotResult, count: float, wall: float, cpu: float, threads: int
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
    wanted = 1 + GIL_RELEASE_MIN_SCALING * (min(threads, math.ceil(count)) - 1)
    if serial.cpu_ratio < PILOT_MIN_CPU_RATIO:
        parallelism = scaling
    else:
        busy = cpu / wall if wall > 0 else float(threads)
        parallelism = busy / serial.cpu_ratio
    return parallelism < wanted, scaling


def pickled_size(value: Any, leave_out: Sequence[Any] = ()) -> int | None:
    """Bytes ``value`` costs to send to a process: pickle stream plus out-of-band buffers.

    Large NumPy arrays are counted from their buffers without being copied; the objects in
    ``leave_out`` (sent some other way) count as a reference. None when the value cannot be
    pickled with the standard pickler (cloudpickle may still manage).
    """
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    try:
        if leave_out:
            _Sizer(stream, {id(v) for v in leave_out}, buffers.append).dump(value)
        else:
            pickle.Pickler(stream, protocol=5, buffer_callback=buffers.append).dump(value)
    except Exception:
        return None
    return stream.tell() + sum(buffer.raw().nbytes for buffer in buffers)


class _Sizer(pickle.Pickler):
    def __init__(self, file: Any, left_out: set[int], buffer_callback: Any) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self._left_out = left_out

    def persistent_id(self, obj: Any) -> Any:
        return 0 if id(obj) in self._left_out else None


__all__ = [
    "PilotError",
    "PilotResult",
    "gil_verdict",
    "overlapped",
    "pickled_size",
    "pilot",
    "probe_items",
    "probe_threads",
    "read_overlap",
    "time_first_items",
]
