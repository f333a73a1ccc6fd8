"""How many items travel to a worker together: the chunk plan of a map.

One rule for the engine that plans chunks and the cost model that predicts them
(``selection.estimate_run_s``), so that what is estimated is what runs.
"""

from __future__ import annotations

import math

from . import heuristics
from .heuristics import CHUNKS_PER_WORKER


def default_chunksize(n: int, workers: int, cheap_dispatch: bool = False) -> int:
    """About ``CHUNKS_PER_WORKER`` chunks per worker (``heuristics.CHUNKS_PER_WORKER``), and a
    number of chunks that splits evenly over the workers where the items allow it.

    ``ceil(n / (workers x CHUNKS_PER_WORKER))`` items per chunk, made smaller while that leaves
    a number of chunks that is not a multiple of ``workers``: 10 coarse items on 2 workers run
    as 10 chunks (5 each), not as 5 chunks (3 and 2). A pool whose chunks cost only a queue
    future and a claim (``cheap_dispatch``: threads, nothing pickled) cuts a map of at most
    ``CHEAP_CHUNKS_MAX_ITEMS`` items into ``CHEAP_CHUNKS_PER_WORKER`` per worker, so that no
    worker waits long on another's last chunk: 32 items on 2 threads are 16 chunks of 2.
    """
    workers = max(1, workers)
    per_worker = CHUNKS_PER_WORKER
    if cheap_dispatch and n <= heuristics.CHEAP_CHUNKS_MAX_ITEMS:
        per_worker = heuristics.CHEAP_CHUNKS_PER_WORKER
    size = max(1, math.ceil(n / (workers * per_worker)))
    while size > 1 and math.ceil(n / size) % workers:
        size -= 1
    return size


def chunk_count(
    n: int, workers: int, cheap_dispatch: bool = False, steady_item_s: float | None = None
) -> int:
    """How many chunks a map of ``n`` items is cut into when the caller sets no chunk size.

    As many as ``default_chunksize`` gives; fewer for a pool that pickles its work when the
    items are known to cost a steady ``steady_item_s`` each (an earlier map of the same
    function measured it): then each chunk carries at least ``CHUNK_MIN_WORK_S`` of work, in a
    multiple of ``workers`` chunks, and never fewer chunks than workers. 50 items of 200 us on
    two workers run as 2 chunks of 25 instead of 8, which saves six dispatches per map.
    """
    workers = max(1, workers)
    count = math.ceil(n / default_chunksize(n, workers, cheap_dispatch)) if n else 0
    if steady_item_s is not None and not cheap_dispatch and count > workers:
        enough = math.floor(n * steady_item_s / heuristics.CHUNK_MIN_WORK_S)
        count = min(count, max(workers, enough - enough % workers))
    return count


def steady_cost(per_item: list[float]) -> float | None:
    """Seconds per item of a map whose chunks ran steadily, or None if they disagreed.

    ``per_item`` holds each chunk's busy seconds per item. Chunks agree when their spread,
    relative to the typical chunk, is within ``CHUNK_STEADY_SPREAD``. From four chunks on the
    spread is that of the middle half and the typical chunk the median: on two CPUs the
    caller's own work (pickling, sending) slows whichever chunk shares a CPU with it, a
    different one each map, which says nothing of the items; items of uneven cost spread the
    middle chunks too. Fewer chunks are judged by their whole range and their mean.
    """
    n = len(per_item)
    if n < 2:
        return None
    ordered = sorted(per_item)
    if n >= 4:
        typical = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        spread = ordered[(3 * n - 1) // 4] - ordered[n // 4]
    else:
        typical = sum(ordered) / n
        spread = ordered[-1] - ordered[0]
    if typical <= 0 or spread / typical > heuristics.CHUNK_STEADY_SPREAD:
        return None
    return typical


def even_ranges(n: int, count: int) -> list[tuple[int, int]]:
    """``n`` items cut into ``count`` consecutive ``(start, stop)`` ranges whose sizes differ
    by at most one, the larger first: 50 items in 8 chunks are 7, 7, 6, 6, 6, 6, 6, 6 (each of
    two workers runs 25), where chunks of a fixed 7 would be 7 x 7 and a last 1 (28 and 22)."""
    count = max(1, min(count, n))
    size, larger = divmod(n, count)
    ranges: list[tuple[int, int]] = []
    start = 0
    for i in range(count):
        stop = start + size + (1 if i < larger else 0)
        ranges.append((start, stop))
        start = stop
    return ranges if n else []


__all__ = ["chunk_count", "default_chunksize", "even_ranges", "steady_cost"]
