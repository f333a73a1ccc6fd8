"""A strategy registered from outside ce-parallel, in the few lines the registry promises.

The contract suite runs on it like on the built-in strategies: proof that one
``register_strategy`` call is all a new strategy needs.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from ce_parallel import PooledExecutor, register_strategy
from ce_parallel.registry import strategy_records
from ce_parallel.worker import ChunkJob, ChunkOutcome, run_chunk

NAME = "test-minimal"


class MinimalExecutor(PooledExecutor):
    """Chunks on a plain thread pool whose threads are named after the strategy."""

    name = NAME
    _pool: ThreadPoolExecutor | None = None

    def start_pool(self) -> None:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=NAME)

    def submit_chunks(self, jobs: list[ChunkJob]) -> list[Future[ChunkOutcome]]:
        assert self._pool is not None
        return [self._pool.submit(run_chunk, job) for job in jobs]

    def release_pool(self, kill: bool) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=not kill, cancel_futures=kill)


def register() -> None:
    """Register the strategy once per test session."""
    if NAME not in strategy_records():
        register_strategy(NAME, MinimalExecutor, conservative=True, summary="test strategy")
