"""``ProcessExecutor``: a private loky process pool, reused across maps.

loky starts workers with fork+exec (never a bare ``fork`` of a parent that may hold threads),
pickles functions with cloudpickle (so lambdas and closures work) and reports dead workers as
broken futures, which ``ParallelExecutor`` turns into a recorded fallback. Each worker caps
numeric libraries at ``budget // workers`` threads, so workers x BLAS threads fit the budget.
Large NumPy arrays travel through shared memory owned by the map that sends them
(``ce_parallel.shared_arrays``): each distinct one is copied once per map, not once per chunk;
a stream's batch or a futures view's task owns its segments the same way. Objects the chunks
share (a model or explainer in every item, an object bound into ``fn``) are placed once per
content in the pool's ``ObjectStore`` and unpickled once per worker (``shared_objects``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .._loky import loky_package_context
from ..engine import PooledExecutor
from ..executor import MapCall
from ..resources import numeric_thread_env, threads_per_worker
from ..result_segments import remove_pool_files
from ..shared_arrays import MapSegments, run_shared_chunk, sharing_possible
from ..shared_objects import SCAN_ITEMS, ObjectStore, first_items
from ..warmup import PoolWarmUps, WarmUps, warm_ups_at_once
from ..worker import (
    IN_WORKER_ENV,
    ChunkJob,
    ChunkOutcome,
    WorkerSetup,
    run_chunk,
    watch_parent,
)


class ProcessExecutor(PooledExecutor):
    """Runs chunks in worker processes (loky), for GIL-bound Python work."""

    name = "processes"
    _results_through_files = "loky"
    _pool: Any = None
    _map_local: threading.local | None = None
    _live_segments: set[MapSegments] | None = None
    _store: ObjectStore | None = None

    def execute(self, call: MapCall, work: list[Any], seeds: list[Any] | None) -> list[Any]:
        """Run the map with its own shared-memory segments, released once it has ended."""
        segments = self._open_segments()
        local = self._map_local
        assert local is not None
        # submit_chunks runs in this thread, inside the engine's execute
        outer, local.segments = getattr(local, "segments", None), segments
        try:
            return super().execute(call, work, seeds)
        finally:
            local.segments = outer
            segments.end()

    def _open_segments(self) -> MapSegments:
        """New segments, released on shutdown if their map has not released them."""
        segments = MapSegments(on_release=self._forget_segments)
        with self._pool_lock:
            if self._live_segments is None:
                self._live_segments = set()
                self._map_local = threading.local()
            self._live_segments.add(segments)
        return segments

    def _forget_segments(self, segments: MapSegments) -> None:
        with self._pool_lock:
            if self._live_segments is not None:
                self._live_segments.discard(segments)

    def shutdown(self, cancel: bool = False) -> None:
        """Release the pool, then every segment still held (their maps' chunks are gone)."""
        super().shutdown(cancel)
        with self._pool_lock:
            live = list(self._live_segments or ())
        for segments in live:
            segments.release()

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
                self._store = ObjectStore()
                self._warming = PoolWarmUps()

    def warm_up(
        self, call: MapCall, work: list[Any], setup: WorkerSetup
    ) -> Callable[[], bool] | None:
        """Warm-up tasks (``warmup``) for the map's shared objects that no worker has yet;
        with those of earlier maps still running, whether all are done."""
        pool, store, warming = self._pool, self._store, self._warming
        segments = getattr(self._map_local, "segments", None)
        if pool is None or store is None or warming is None or segments is None:
            return None
        if not sharing_possible():
            return None
        warm = WarmUps(self.workers, warm_ups_at_once(self.budget.count))
        registered: list[bool] = []

        def placed() -> None:
            # under the store's lock: a map meeting these objects next sees the warm-up
            if not registered:
                registered.append(True)
                warming.add(warm)

        try:
            segments.share_objects(store, call.fn, work[:SCAN_ITEMS], placed)
            if registered:
                job = segments.warm_up_job(setup)
                payload = None
                if job is not None:
                    with contextlib.suppress(Exception):  # the chunks' own pickling reports it
                        payload = segments.dumps(job)
                if payload is not None:

                    def submit() -> Future[ChunkOutcome]:
                        fut = pool.submit(run_shared_chunk, 0, payload)
                        # the map's segments (and its objects' files) stay while it runs
                        segments.watch([fut])
                        return fut

                    warm.start(submit)
        finally:
            if not warm.started:
                # (nothing to send, or an error, even Ctrl-C): later maps must not wait on it
                warm.abandon()
        return warming.check()

    def submit_chunks(self, jobs: list[ChunkJob]) -> list[Future[ChunkOutcome]]:
        pool = self._pool
        assert pool is not None
        if not sharing_possible():
            return [pool.submit(run_chunk, job) for job in jobs]
        segments = getattr(self._map_local, "segments", None)
        # a stream's batch or a futures view's task (no map around it) gets segments of its
        # own, released once its chunks are done
        own = segments is None
        if segments is None:
            segments = self._open_segments()
        futures: list[Future[ChunkOutcome]] = []
        try:
            store = self._store
            if store is not None and jobs:
                # (every chunk of a map is submitted in one call)
                segments.share_objects(store, jobs[0].fn, first_items(jobs))
            for job in jobs:
                # pickled and sent one by one: workers start while later arrays are copied
                try:
                    payload = segments.dumps(job)
                except Exception as exc:
                    futures.append(_unsendable(exc))
                    continue
                futures.append(pool.submit(run_shared_chunk, job.start, payload))
        finally:
            segments.watch(futures)
            if own:
                segments.end()
        return futures

    def release_pool(self, kill: bool) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
            store, self._store = self._store, None
            self._warming = None
        if pool is not None:
            pool.shutdown(wait=True, kill_workers=kill)
            # results written by a worker that died before sending them
            remove_pool_files(os.getpid(), self._token)
        if store is not None:
            # after the workers: a chunk still running may yet read its objects
            store.release()


def _unsendable(exc: Exception) -> Future[ChunkOutcome]:
    # the error loky gives a task it cannot pickle, so the chunk is lost the same way
    error = pickle.PicklingError("Could not pickle the task to send it to the workers.")
    error.__cause__ = exc
    fut: Future[ChunkOutcome] = Future()
    fut.set_exception(error)
    return fut
