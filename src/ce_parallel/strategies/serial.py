"""``SerialExecutor``: the plain loop in the calling thread, with the same contract."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import Future
from typing import Any

from ..executor import MapCall, ParallelExecutor
from ..resources import CpuBudget
from ..worker import ChunkJob, ChunkOutcome, run_chunk


class SerialExecutor(ParallelExecutor):
    """Runs every item in the calling thread, in order; the reference every strategy matches."""

    name = "sequential"
    _initialized = False

    def _effective_workers(self, budget: CpuBudget) -> int:
        return 1

    def _map(self, call: MapCall, work: list[Any], seeds: list[Any] | None) -> list[Any]:
        self.metrics.add(tasks_submitted=len(work), maps=1)
        if not self._initialized and self.config.worker_initializer is not None:
            # the calling thread is this strategy's one worker
            self.config.worker_initializer(*(self.config.worker_init_args or ()))
        self._initialized = True
        started = time.perf_counter()
        try:
            results = self._run_serially(call, work, seeds)
        finally:
            wall = time.perf_counter() - started
            self.metrics.add(total_duration=wall, busy_time=wall)
        self.metrics.add(tasks_completed=len(results))
        return results

    def _start_pool(self) -> None:
        return None

    def _submit_chunks(self, jobs: list[ChunkJob]) -> list[Future[ChunkOutcome]]:
        done = []
        for job in jobs:
            fut: Future[ChunkOutcome] = Future()
            fut.set_result(run_chunk(dataclasses.replace(job, mark_worker=False)))
            done.append(fut)
        return done

    def _release_pool(self, kill: bool) -> None:
        return None
