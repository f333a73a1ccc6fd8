"""``JoblibExecutor``: chunks run on joblib's loky backend, configured by ``joblib.Parallel``.

One ``Parallel`` object is entered once (joblib's managed mode) and kept for the executor's life,
so its backend, with joblib's memory-mapping of large arrays and its numeric-thread caps in the
workers, is configured once. Chunks go straight to that backend's ``submit``, which returns one
future per chunk: no per-call dispatch machinery, no feeder thread, and waiting, deadlines and
cancellation work exactly as for the other strategies.

The workers belong to joblib's process-wide reusable loky executor: ``shutdown()`` shuts that
executor down, which also ends the workers of other joblib users in the process.
"""

from __future__ import annotations

import contextlib
import functools
from concurrent.futures import Future
from typing import Any

from ..engine import PooledExecutor
from ..worker import ChunkJob, ChunkOutcome, run_chunk


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


class JoblibExecutor(PooledExecutor):
    """Runs chunks on joblib's loky backend, kept configured across maps."""

    name = "joblib"
    _parallel: Any = None

    def start_pool(self) -> None:
        """Enter one managed ``joblib.Parallel`` on the loky backend (once)."""
        with self._pool_lock:
            if self._parallel is None:
                from joblib import Parallel

                parallel = Parallel(n_jobs=self.workers, backend="loky")
                parallel.__enter__()
                self._parallel = parallel

    def submit_chunks(self, jobs: list[ChunkJob]) -> list[Future[ChunkOutcome]]:
        backend = self._parallel._backend
        if getattr(backend, "_workers", None) is None:
            # joblib runs a single worker as its sequential backend, which has no pool
            return [_completed(run_chunk(job)) for job in jobs]
        folders = getattr(backend._workers, "_temp_folder_manager", None)
        if folders is not None:
            # as joblib.Parallel.__call__ does: memory-mapped arrays of this map go to this
            # Parallel's own temporary folder, which shutdown() removes
            folders.set_current_context(self._parallel._id)
        return [backend.submit(functools.partial(run_chunk, job)) for job in jobs]

    def release_pool(self, kill: bool) -> None:
        with self._pool_lock:
            parallel, self._parallel = self._parallel, None
        if parallel is None:
            return
        # joblib memory-maps large arrays into temporary folders that a Parallel kept open
        # across maps leaves until interpreter exit: they are removed here
        workers = getattr(parallel._backend, "_workers", None)
        folders = getattr(workers, "_temp_folder_manager", None)
        if kill:
            _drop_queued_tasks()
            with contextlib.suppress(Exception):
                parallel._backend.abort_everything(ensure_ready=False)
        with contextlib.suppress(Exception):
            parallel.__exit__(None, None, None)
        _shutdown_joblib_workers(kill=kill)
        if folders is not None:
            # Every worker of the executor these folders belong to has exited, so no memory map
            # of their files is open; the next executor joblib starts gets folders of its own.
            with contextlib.suppress(Exception):
                folders._clean_temporary_resources(force=True, allow_non_empty=True)


def _completed(outcome: ChunkOutcome) -> Future[ChunkOutcome]:
    fut: Future[ChunkOutcome] = Future()
    fut.set_result(outcome)
    return fut
