"""The threads strategy runs a map's chunks through at most one pool task per worker, each
claiming the next chunk when it is free; a task the pool drops takes its unclaimed chunks
with it."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError
from typing import Any

import pytest

from ce_parallel import ParallelConfig, create_executor
from ce_parallel.strategies.threads import DaemonThreadPool, ThreadExecutor, _Claims
from ce_parallel.worker import ChunkJob

pytestmark = pytest.mark.timeout(60)


def _jobs(fn: Any, n: int) -> list[ChunkJob]:
    return [ChunkJob(fn=fn, start=i, items=[i]) for i in range(n)]


def test_a_map_sends_one_task_per_worker_and_every_item_runs_once_on_the_pool() -> None:
    ran: list[tuple[int, str]] = []
    lock = threading.Lock()
    others_done = threading.Event()

    def item(x: int) -> int:
        # item 0 holds its worker until every other item has run: the other worker must
        # claim them all, whatever chunk it was given first
        if x == 0:
            assert others_done.wait(30), "the other worker did not claim the remaining chunks"
        with lock:
            ran.append((x, threading.current_thread().name))
            if len(ran) == 31:
                others_done.set()
        return x * 2

    config = ParallelConfig(enabled=True, strategy="threads", max_workers=2, full_matrix=True)
    with create_executor(config) as ex:
        assert isinstance(ex, ThreadExecutor)
        ex.map(abs, range(4))  # the pool is up
        pool = ex._pool
        assert pool is not None
        submitted: list[Any] = []
        original = pool.submit

        def counting(fn: Any, arg: Any) -> Any:
            submitted.append(fn)
            return original(fn, arg)

        pool.submit = counting  # type: ignore[method-assign]
        assert ex.map(item, range(32), chunksize=1) == [2 * x for x in range(32)]
        assert ex.metrics.fallbacks == 0
    assert len(submitted) == 2
    assert sorted(x for x, _ in ran) == list(range(32))
    assert all(name.startswith("ce-parallel-thread") for _, name in ran)


def test_chunks_of_a_task_the_pool_drops_are_cancelled() -> None:
    pool = DaemonThreadPool(1, "claims-test")
    release = threading.Event()
    try:
        blocker = pool.submit(lambda _: release.wait(30), None)
        futures = [f for f in _submit(pool, _jobs(abs, 5))]
        pool.shutdown(wait=False, cancel_futures=True)  # the claiming task was still queued
        assert all(f.cancelled() for f in futures)
        with pytest.raises(CancelledError):
            futures[0].result(timeout=5)
    finally:
        release.set()
    assert blocker.result(timeout=30) is True


def test_a_running_task_claims_no_chunk_after_the_pool_is_shut_down() -> None:
    pool = DaemonThreadPool(1, "claims-test")
    started, release = threading.Event(), threading.Event()

    def first(x: int) -> int:
        if x == 0:
            started.set()
            assert release.wait(30)
        return x

    futures = _submit(pool, _jobs(first, 4))
    assert started.wait(30)
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    outcome = futures[0].result(timeout=30)
    assert outcome.results == [0]  # the chunk it was running finishes
    for fut in futures[1:]:
        with pytest.raises(CancelledError):
            fut.result(timeout=30)


def test_a_cancelled_chunk_is_skipped_and_the_rest_run() -> None:
    pool = DaemonThreadPool(1, "claims-test")
    release = threading.Event()
    try:
        pool.submit(lambda _: release.wait(30), None)  # the worker is busy: nothing is claimed
        futures = _submit(pool, _jobs(abs, 4))
        assert futures[1].cancel()
        release.set()
        assert [futures[i].result(timeout=30).results for i in (0, 2, 3)] == [[0], [2], [3]]
        assert futures[1].cancelled()
    finally:
        release.set()
        pool.shutdown()


def _submit(pool: DaemonThreadPool, jobs: list[ChunkJob]) -> list[Any]:
    """What ``ThreadExecutor.submit_chunks`` does, on a pool of one worker."""
    from concurrent.futures import Future

    futures: list[Future[Any]] = [Future() for _ in jobs]
    claims = _Claims(jobs, futures)
    pool.submit(claims.run, pool).add_done_callback(claims.dropped)
    return futures
