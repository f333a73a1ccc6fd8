"""``ProcessExecutor``: a private loky process pool, reused across maps.

loky starts workers with fork+exec (never a bare ``fork`` of a parent that may hold threads),
pickles functions with cloudpickle (so lambdas and closures work) and reports dead workers as
broken futures, which ``ParallelExecutor`` turns into a recorded fallback. Each worker caps
numeric libraries at ``budget // workers`` threads, so workers x BLAS threads fit the budget.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from typing import Any

from .._loky import loky_package_context
from ..engine import PooledExecutor
from ..resources import numeric_thread_env, threads_per_worker
from ..worker import IN_WORKER_ENV, ChunkJob, ChunkOutcome, run_chunk, watch_parent


class ProcessExecutor(PooledExecutor):
    """Runs chunks in worker processes (loky), for GIL-bound Python work."""

    name = "processes"
    _pool: Any = None

    def start_pool(self) -> None:
        """Start a loky pool whose workers cap numeric threads and watch this process."""
        with self._pool_lock:
            if self._pool is None:
                # (the context first: it imports loky without taking joblib's registration)
                context = loky_package_context()
                from loky import ProcessPoolExecutor

                env = numeric_thread_env(threads_per_worker(self.budget.count, self.workers))
                env[IN_WORKER_ENV] = "1"
                # the watch starts with each worker, so a worker that never ran a chunk also
                # exits when this process dies
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    env=env,
                    initializer=watch_parent,
                    initargs=(os.getpid(),),
                    context=context,
                )

    def submit_chunks(self, jobs: list[ChunkJob]) -> list[Future[ChunkOutcome]]:
        pool = self._pool
        assert pool is not None
        return [pool.submit(run_chunk, job) for job in jobs]

    def release_pool(self, kill: bool) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, kill_workers=kill)
