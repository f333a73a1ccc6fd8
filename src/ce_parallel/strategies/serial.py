"""``SerialExecutor``: the plain loop in the calling thread, with the same contract."""

from __future__ import annotations

import threading
import time
from typing import Any

from ..executor import MapCall, ParallelExecutor


class SerialExecutor(ParallelExecutor):
    """Runs every item in the calling thread, in order; the reference every strategy matches.

    The calling thread is this strategy's worker: ``worker_initializer`` runs once in each thread
    that maps on this executor, before its first item (as it runs once in each thread of a thread
    pool), with no lock held, so an initializer may itself map on this executor.
    """

    name = "sequential"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._initialized = threading.local()

    def _effective_workers(self, requested: int) -> int:
        return 1

    def execute(self, call: MapCall, work: list[Any], seeds: list[Any] | None) -> list[Any]:
        """Run ``work`` with the serial loop (``serial_loop.run_serially``)."""
        self.metrics.add(tasks_submitted=len(work), maps=1)
        self._initialize_once()
        started = time.perf_counter()
        try:
            results = self.run_serially(call, work, seeds)
        finally:
            wall = time.perf_counter() - started
            self.metrics.add(total_duration=wall, busy_time=wall)
        self.metrics.add(tasks_completed=len(results))
        return results

    def _initialize_once(self) -> None:
        initializer = self.config.worker_initializer
        state = self._initialized
        if initializer is None or getattr(state, "done", False) or getattr(state, "running", False):
            return  # done, or this is a map from inside the initializer itself
        state.running = True
        try:
            initializer(*(self.config.worker_init_args or ()))
        finally:
            state.running = False
        # marked only once it has run: a failed initializer is tried again by the next map
        state.done = True
