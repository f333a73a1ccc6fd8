"""How many items travel to a worker together: the default chunk size.

One rule for the engine that plans chunks and the cost model that predicts them
(``selection.estimate_run_s``), so that what is estimated is what runs.
"""

from __future__ import annotations

import math

from .heuristics import CHUNKS_PER_WORKER


def default_chunksize(n: int, workers: int) -> int:
    """About ``CHUNKS_PER_WORKER`` chunks per worker (``heuristics.CHUNKS_PER_WORKER``), and a
    number of chunks that splits evenly over the workers where the items allow it.

    ``ceil(n / (workers x CHUNKS_PER_WORKER))`` items per chunk, made smaller while that leaves
    a number of chunks that is not a multiple of ``workers``: 10 coarse items on 2 workers run
    as 10 chunks (5 each), not as 5 chunks (3 and 2).
    """
    workers = max(1, workers)
    size = max(1, math.ceil(n / (workers * CHUNKS_PER_WORKER)))
    while size > 1 and math.ceil(n / size) % workers:
        size -= 1
    return size


__all__ = ["default_chunksize"]
