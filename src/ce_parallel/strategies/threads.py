"""``ThreadExecutor``: a reused ``concurrent.futures.ThreadPoolExecutor``.

Threads win when the work releases the GIL (NumPy, I/O) or carries large arguments that a
process pool would have to pickle. A running thread cannot be killed: after a timeout or cancel
its current chunk finishes in the background and its result is discarded.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from ..engine import PooledExecutor
from ..worker import ChunkJob, ChunkOutcome, run_chunk


class ThreadExecutor(PooledExecutor):
    """Runs chunks on a pool of threads in this process."""

    name = "threads"
    _pool: ThreadPoolExecutor | None = None

    def start_pool(self) -> None:
        """Start ``workers`` threads named ``ce-parallel-thread_N`` (once)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.workers, thread_name_prefix="ce-parallel-thread"
                )

    def submit_chunks(self, jobs: list[ChunkJob]) -> list[Future[ChunkOutcome]]:
        """One ``run_chunk`` task per job."""
        pool = self._pool
        assert pool is not None
        return [pool.submit(run_chunk, job) for job in jobs]

    def release_pool(self, kill: bool) -> None:
        """Shut the thread pool down; ``kill`` drops queued chunks and does not wait."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=not kill, cancel_futures=kill)
