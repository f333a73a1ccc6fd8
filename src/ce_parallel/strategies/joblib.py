"""``JoblibExecutor``: chunks run through ``joblib.Parallel`` on its loky backend.

One ``Parallel`` object is entered once and reused by every map (joblib's managed mode), which
removes joblib's per-call setup. A feeder thread consumes joblib's unordered generator and
completes one future per chunk, so waiting, deadlines and cancellation work exactly as for the
other strategies. The workers belong to joblib's process-wide reusable loky executor:
``shutdown()`` shuts that executor down, which also affects other joblib users in the process.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

from ..executor import ParallelExecutor
from ..worker import ChunkJob, ChunkOutcome, run_chunk


def _run_indexed(index: int, job: ChunkJob) -> tuple[int, ChunkOutcome]:
    return index, run_chunk(job)


def _drop_queued_tasks() -> None:
    # loky's manager thread, when told to kill workers, first drops its pending tasks and then
    # still reads their ids from this queue: a KeyError kills the thread, and its queue feeder
    # thread and pipes are never released. Emptying the queue first avoids that race; the
    # dropped tasks' futures are failed by the shutdown as before.
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    work_ids = getattr(executor, "_work_ids", None)
    with contextlib.suppress(Exception):
        while work_ids is not None:
            work_ids.get_nowait()


def _shutdown_joblib_workers(kill: bool) -> None:
    # joblib keeps its loky executor in a module global and offers no public accessor that does
    # not create one; reading the global avoids starting workers just to stop them.
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=kill)


class JoblibExecutor(ParallelExecutor):
    """Runs chunks with ``joblib.Parallel`` (loky backend), kept open across maps."""

    name = "joblib"
    crosses_processes = True
    start_fallback = "threads"
    _parallel: Any = None
    _feeder: threading.Thread | None = None
    _stop: threading.Event | None = None

    def _start_pool(self) -> None:
        with self._pool_lock:
            if self._parallel is None:
                from joblib import Parallel

                parallel = Parallel(
                    n_jobs=self.workers,
                    backend="loky",
                    return_as="generator_unordered",
                    batch_size=1,  # chunks are already batched
                    pre_dispatch="all",
                )
                parallel.__enter__()
                self._parallel = parallel

    def _submit_chunks(self, jobs: list[ChunkJob]) -> list[Future[ChunkOutcome]]:
        from joblib import delayed

        self._join_feeder()
        futures: list[Future[ChunkOutcome]] = [Future() for _ in jobs]
        for fut in futures:
            # joblib cannot withdraw a single task: these futures are "running" from the start
            fut.set_running_or_notify_cancel()
        stop = threading.Event()
        parallel = self._parallel
        tasks = [delayed(_run_indexed)(i, job) for i, job in enumerate(jobs)]

        def feed() -> None:
            try:
                results = parallel(tasks)
                for index, outcome in results:
                    futures[index].set_result(outcome)
                    if stop.is_set():
                        results.close()  # joblib aborts the tasks still queued or running
                        break
            except BaseException as exc:
                for fut in futures:
                    if not fut.done():
                        fut.set_exception(exc)
            finally:
                for fut in futures:
                    if not fut.done():
                        fut.set_exception(RuntimeError("joblib stopped before this chunk ran"))

        self._stop = stop
        self._feeder = threading.Thread(target=feed, name="ce-parallel-joblib-feeder", daemon=True)
        self._feeder.start()
        return futures

    def _join_feeder(self) -> None:
        feeder, self._feeder = self._feeder, None
        if feeder is not None:
            feeder.join()

    def _abort(self, pending: Iterable[Future[ChunkOutcome]], kill: bool) -> None:
        if self._stop is not None:
            self._stop.set()
        if kill:
            self._release_pool(kill=True)

    def _release_pool(self, kill: bool) -> None:
        with self._pool_lock:
            parallel, self._parallel = self._parallel, None
        if parallel is None:
            return
        if kill:
            _drop_queued_tasks()
        if kill and self._feeder is not None:
            # joblib's own abort kills the busy workers; the running generator then fails fast
            with contextlib.suppress(Exception):
                parallel._abort()
        self._join_feeder()
        with contextlib.suppress(Exception):
            parallel.__exit__(None, None, None)
        _shutdown_joblib_workers(kill=kill)
