"""How many items travel to a worker together: the default chunk size.

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
    hand-off (``cheap_dispatch``: threads, nothing pickled) sends a map of at most
    ``SINGLE_ITEM_CHUNKS_MAX`` items one item per chunk, so that no worker waits on another's
    last chunk of several items.
    """
    workers = max(1, workers)
    if cheap_dispatch and n <= heuristics.SINGLE_ITEM_CHUNKS_MAX:
        return 1
    size = max(1, math.ceil(n / (workers * CHUNKS_PER_WORKER)))
    while size > 1 and math.ceil(n / size) % workers:
        size -= 1
    return size


__all__ = ["default_chunksize"]
