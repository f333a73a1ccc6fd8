"""``JoblibExecutor``: chunks run on joblib's loky backend, configured by ``joblib.Parallel``.

One ``Parallel`` object is entered once (joblib's managed mode) and kept for the executor's life,
so its backend, with joblib's memory-mapping of large arrays and its numeric-thread caps in the
workers, is configured once. Chunks go straight to that backend's ``submit``, which returns one
future per chunk: no per-call dispatch machinery, no feeder thread, and waiting, deadlines and
cancellation work exactly as for the other strategies.

Every map memory-maps its large arrays into a folder of its own, written from the arrays as they
are when the map pickles them, and releases that folder when its last chunk is done. joblib's
reducer remembers arrays by identity only, so a folder kept across maps would hand the workers
an array's old content after the caller changed it in place.

Objects the chunks share (``shared_objects.find_shared``) are placed once per content in the
pool's ``ObjectStore``, as for ``processes``. Such a map's chunks are pickled here with those
objects as references and their large arrays out of band; loky's pickler then sends the arrays
through joblib's reducers, so they are memory-mapped into the map's folder as before.

The workers belong to joblib's process-wide reusable loky executor: ``shutdown()`` shuts that
executor down, which also ends the workers of other joblib users in the process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .. import telemetry
from .._loky import joblib_start_context
from ..engine import PooledExecutor
from ..executor import MapCall
from ..result_segments import remove_pool_files
from ..shared_arrays import run_shared_chunk, sharing_possible
from ..shared_objects import (
    SCAN_ITEMS,
    ObjectStore,
    Reference,
    dump_object,
    dumps_referencing,
    find_shared,
    first_items,
    release_when_done,
    touch,
)
from ..warmup import PoolWarmUps, WarmUps, warm_ups_at_once
from ..worker import ChunkJob, ChunkOutcome, WorkerSetup, run_chunk
from .joblib_folders import (
    InMapFolder,
    RetiredFolders,
    adopt_finalizer,
    logged,
    remove_empty_folders,
    remove_folders,
)

logger = logging.getLogger("ce_parallel.joblib")


def _drop_queued_tasks() -> None:
    # loky's manager thread, when told to kill workers, first drops its pending tasks and then
    # still reads their ids from this queue: a KeyError kills the thread, and its queue feeder
    # thread and pipes are never released. Emptying the queue first avoids that race; the
    # dropped tasks' futures are failed by the shutdown as before.
    import queue

    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    work_ids = getattr(executor, "_work_ids", None)
    if work_ids is None:
        return
    with contextlib.suppress(queue.Empty):
        while True:
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
    _results_through_files = "joblib"
    _parallel: Any = None
    _thread_executor: PooledExecutor | None = None
    _retired: RetiredFolders | None = None
    _store: ObjectStore | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As every pooled strategy."""
        super().__init__(*args, **kwargs)
        # per thread: (fn, store, refs) of the map whose warm_up shared its objects, for its
        # submit_chunks; the objects are pickled once per map
        self._shares = threading.local()

    def execute(self, call: MapCall, work: list[Any], seeds: list[Any] | None) -> list[Any]:
        """As every pooled strategy, unless an active ``joblib.parallel_config`` says otherwise.

        Inside ``joblib.parallel_config(n_jobs=1)`` (or ``backend="sequential"``) the map runs
        serially; inside a thread-based backend (``backend="threading"``) it runs on threads;
        either way a decision record says so.
        """
        try:
            from ..joblib_config import joblib_settings

            settings = joblib_settings(self.budget.count)
        except ImportError:
            # joblib is missing: starting the pool fails, and falls back, as for any strategy
            return self._on_pool(call, work, seeds)
        if settings.strategy is None:
            return self._on_pool(call, work, seeds)
        self._record_joblib_choice(settings.strategy, settings.detail, len(work))
        if settings.strategy == "sequential":
            return self.run_serially(call, work, seeds)
        return self._threads(settings.workers or self.workers).execute(call, work, seeds)

    def _on_pool(self, call: MapCall, work: list[Any], seeds: list[Any] | None) -> list[Any]:
        """The engine's map; what its warm-up shared and no chunk took is unpinned after it."""
        local = self._shares
        # a map inside fn (run here while the pool warms up) has its own
        outer, local.stash = getattr(local, "stash", None), None
        try:
            return super().execute(call, work, seeds)
        finally:
            left, local.stash = local.stash, outer
            if left is not None:
                left[1].done(list(left[2].values()))

    def _record_joblib_choice(self, strategy: str, detail: str, items: int) -> None:
        if not telemetry.wanted(self.config.telemetry, self.config.telemetry_path):
            return
        from ..gate import Ground, Question, decide
        from ..resources import Resources

        question = Question(
            n_instances=items,
            requested=strategy,
            library_serial=detail if strategy == "sequential" else None,
            warm=True,
        )
        resources = self.resources or Resources(budget=self.budget)
        decision = decide(question, Ground(self.config, resources, front_door="executor"))
        payload = decision.as_dict()
        payload.update(source="joblib.parallel_config", detail=f"{decision.detail}; {detail}")
        self._emit("decision", payload)

    def _threads(self, workers: int) -> PooledExecutor:
        """The thread executor that serves maps inside a thread-based joblib backend."""
        from .threads import ThreadExecutor

        with self._pool_lock:
            current = self._thread_executor
            if current is None or current.closed or current.workers != workers:
                stale, current = (
                    current,
                    ThreadExecutor(
                        self.config.replace(strategy="threads"),
                        max_workers=workers,
                        resources=self.resources,
                    ),
                )
                self._thread_executor = current
            else:
                stale = None
        if stale is not None:
            stale.shutdown()
        return current

    def start_pool(self) -> None:
        """Enter one managed ``joblib.Parallel`` on joblib's own loky backend (once)."""
        with self._pool_lock:
            if self._parallel is None:
                from joblib import Parallel

                parallel = Parallel(n_jobs=self.workers, backend="loky")
                with joblib_start_context():
                    # (entering creates joblib's executor, or reuses the one it has)
                    parallel.__enter__()
                workers = getattr(parallel._backend, "_workers", None)
                manager = getattr(workers, "_temp_folder_manager", None)
                if manager is not None:
                    for context_id in list(manager._finalizers):
                        adopt_finalizer(manager, context_id)
                self._parallel = parallel
                self._retired = RetiredFolders()
                self._store = ObjectStore() if sharing_possible() else None
                self._warming = PoolWarmUps()

    def submit_chunks(self, jobs: list[ChunkJob]) -> list[Future[ChunkOutcome]]:
        backend = self._parallel._backend
        workers = getattr(backend, "_workers", None)
        if workers is None:
            # joblib runs a single worker as its sequential backend, which has no pool
            return [_completed(run_chunk(job)) for job in jobs]
        manager = getattr(workers, "_temp_folder_manager", None)
        retired = self._retired
        if manager is None or retired is None:
            return [backend.submit(functools.partial(run_chunk, job)) for job in jobs]
        retired.sweep()
        folder = retired.folder_for_map(manager)
        stash = getattr(self._shares, "stash", None)
        if stash is not None and jobs and stash[0] is jobs[0].fn and stash[1] is self._store:
            # shared by this map's warm_up: its pins pass to the chunks
            self._shares.stash = None
            refs = stash[2]
        else:
            refs = self._share_objects(jobs)
        futures: list[Future[ChunkOutcome]] = []
        try:
            for job in jobs:
                futures.append(backend.submit(InMapFolder(job, folder, refs)))
        finally:
            folder.release_when_done(futures, retired)
            if refs and self._store is not None:
                release_when_done(self._store, list(refs.values()), futures)
        return futures

    def warm_up(
        self, call: MapCall, work: list[Any], setup: WorkerSetup
    ) -> Callable[[], bool] | None:
        """Warm-up tasks (``warmup``) for the map's shared objects that no worker has yet;
        with those of earlier maps still running, whether all are done."""
        store, warming = self._store, self._warming
        backend: Any = getattr(self._parallel, "_backend", None)
        if store is None or warming is None or getattr(backend, "_workers", None) is None:
            return None
        candidates = find_shared(call.fn, work[:SCAN_ITEMS])
        fresh: set[str] = set()
        pinned: list[Reference] = []
        warm = WarmUps(
            self.workers,
            warm_ups_at_once(self.budget.count),
            # the objects' files stay pinned until the last warm-up has ended
            finished=lambda: store.done(pinned),
        )

        def placed(digest: str) -> None:
            # under the store's lock: a map meeting these objects next sees the warm-up
            if not fresh:
                warming.add(warm)
            fresh.add(digest)

        try:
            refs = store.share(candidates, dump_object, placed) if candidates else {}
            # pinned for the map's chunks (submit_chunks, or released after the map)
            self._shares.stash = (call.fn, store, refs)
            if fresh:
                # and once more for the warm-ups, until the last one has ended
                store.pin(refs.values())
                pinned.extend(refs.values())
            new = [o for o in candidates if id(o) in refs and refs[id(o)][1] in fresh]
            payload = None
            if new:
                job = ChunkJob(fn=functools.partial(touch, *new), start=0, items=[], setup=setup)
                with contextlib.suppress(Exception):  # the chunks' own pickling reports it
                    payload, buffers = dumps_referencing(job, refs)
            if payload is not None:

                def submit() -> Future[ChunkOutcome]:
                    return backend.submit(functools.partial(run_shared_chunk, 0, payload, buffers))

                warm.start(submit)
        finally:
            if fresh and not warm.started:
                warm.abandon()  # unpins; later maps must not wait on it
        return warming.check()

    def _share_objects(self, jobs: list[ChunkJob]) -> dict[int, Reference]:
        """References to the objects the map's chunks share, placed in the pool's store."""
        store = self._store
        if store is None or not jobs:
            return {}
        # (every chunk of a map is submitted in one call)
        candidates = find_shared(jobs[0].fn, first_items(jobs))
        return store.share(candidates, dump_object) if candidates else {}

    def release_pool(self, kill: bool) -> None:
        with self._pool_lock:
            threads, self._thread_executor = self._thread_executor, None
        if threads is not None:
            threads.shutdown(cancel=kill)
        self._release_joblib(kill)
        # results written by a worker that died before sending them
        remove_pool_files(os.getpid(), self._token, "joblib")

    def _release_joblib(self, kill: bool) -> None:
        with self._pool_lock:
            parallel, self._parallel = self._parallel, None
            retired, self._retired = self._retired, None
        if parallel is None:
            return
        backend = parallel._backend
        workers = getattr(backend, "_workers", None)
        manager = getattr(workers, "_temp_folder_manager", None)
        if retired is not None:
            with retired.lock:
                retired.killed = retired.killed or kill
                retired.closed = True
        if kill and workers is not None:
            _drop_queued_tasks()
            # kills the workers and removes every memory-map folder of joblib's executor
            logged(backend.abort_everything, "killing joblib's workers", ensure_ready=False)
        # releases the backend, and the (empty) folder joblib made for this Parallel
        logged(parallel.__exit__, "closing joblib.Parallel", None, None, None)
        logged(_shutdown_joblib_workers, "shutting joblib's workers down", kill=kill)
        if retired is not None:
            remove_folders(retired.take(), kill)
        if manager is not None:
            remove_empty_folders(manager)
        with self._pool_lock:
            store, self._store = self._store, None
            self._warming = None
        if store is not None:
            # after the workers: a chunk still running may yet read its objects
            store.release()


def _completed(outcome: ChunkOutcome) -> Future[ChunkOutcome]:
    fut: Future[ChunkOutcome] = Future()
    fut.set_result(outcome)
    return fut
