"""``ThreadExecutor``: a reused pool of daemon threads in this process.

Threads win when the work releases the GIL (NumPy, I/O) or carries large arguments that a
process pool would have to pickle. A running thread cannot be killed: after an error, timeout,
cancel or Ctrl-C its worker finishes the item it is running, takes no new one, and its result
is discarded.

The pool is a small one of our own rather than ``concurrent.futures.ThreadPoolExecutor``, whose
threads the interpreter joins at exit: a worker busy with a long item (or a hanging
``worker_initializer``) would then keep a Ctrl-C'd or SIGTERM'd program alive until the item
ends. Our workers are daemon threads, and ``shutdown(cancel=True)`` never waits for them.

A map's chunks do not go through the pool's queue one by one: at most one task per worker runs
them, each claiming the next chunk in input order when it is free (``_Claims``). A chunk then
costs its future and no queue hand-off or wake-up of a sleeping thread; the claiming keeps the
workers balanced however uneven the chunks are.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..engine import PooledExecutor
from ..worker import ChunkJob, ChunkOutcome, run_chunk

_Task = tuple[Future[Any], Callable[[Any], Any], Any]


class DaemonThreadPool:
    """A minimal thread pool: ``submit(fn, arg)`` -> ``Future``; daemon workers, started on demand.

    ``shutdown(wait, cancel_futures)`` behaves like ``ThreadPoolExecutor.shutdown``, except
    that a worker thread calling it never waits for itself.
    """

    _counter = itertools.count()

    def __init__(self, workers: int, prefix: str) -> None:
        self._workers = max(1, workers)
        self._prefix = prefix
        self._queue: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._closed = False
        self._pool_id = next(self._counter)

    @property
    def closed(self) -> bool:
        """Whether ``shutdown`` was called: a task running chunks claims no new one."""
        return self._closed

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a thread pool that was shut down")
            self._queue.put((fut, fn, arg))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._workers:
                thread = threading.Thread(
                    target=self._work,
                    name=f"{self._prefix}_{self._pool_id}_{len(self._threads)}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
        return fut

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            fut, fn, arg = task
            if fut.set_running_or_notify_cancel():
                try:
                    result = fn(arg)
                except BaseException as exc:
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)
            del task, fut, arg
            self._idle.release()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    task = self._queue.get_nowait()
                except queue.Empty:
                    break
                if task is not None:
                    task[0].cancel()
        for _ in threads:
            self._queue.put(None)
        if wait:
            current = threading.current_thread()
            for thread in threads:
                if thread is not current:
                    thread.join()


class _Claims:
    """A map's chunks and their futures, claimed one at a time by the tasks that run them."""

    def __init__(self, jobs: list[ChunkJob], futures: list[Future[ChunkOutcome]]) -> None:
        self._lock = threading.Lock()
        self._next = zip(jobs, futures, strict=True)

    def _take(self) -> tuple[ChunkJob, Future[ChunkOutcome]] | None:
        with self._lock:
            return next(self._next, None)

    def claim(self) -> tuple[ChunkJob, Future[ChunkOutcome]] | None:
        """The next chunk whose future was not cancelled (marked running), or None."""
        while (pair := self._take()) is not None:
            if pair[1].set_running_or_notify_cancel():
                return pair
        return None

    def drop_rest(self) -> None:
        """Cancel every chunk not yet claimed: no task is left to run it."""
        while (pair := self._take()) is not None:
            pair[1].cancel()

    def run(self, pool: DaemonThreadPool) -> None:
        """Run claimed chunks until none is left (or the pool is shut down)."""
        while not pool.closed:
            pair = self.claim()
            if pair is None:
                return
            job, fut = pair
            try:
                outcome = run_chunk(job)
            except BaseException as exc:  # run_chunk returns user errors; this is the machinery
                fut.set_exception(exc)
            else:
                fut.set_result(outcome)
            del pair, job, fut
        self.drop_rest()

    def dropped(self, runner: Future[Any]) -> None:
        """A task that was to run chunks was cancelled by the pool's shutdown: so are they."""
        if runner.cancelled():
            self.drop_rest()


class ThreadExecutor(PooledExecutor):
    """Runs chunks on a pool of daemon threads in this process."""

    name = "threads"
    _pool: DaemonThreadPool | None = None

    def start_pool(self) -> None:
        """Create the pool of ``workers`` threads named ``ce-parallel-thread_*`` (once)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = DaemonThreadPool(self.workers, "ce-parallel-thread")

    def submit_chunks(self, jobs: list[ChunkJob]) -> list[Future[ChunkOutcome]]:
        """A future per job; at most one pool task per worker runs the jobs (``_Claims``)."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("the thread pool was released")
        futures: list[Future[ChunkOutcome]] = [Future() for _ in jobs]
        claims = _Claims(jobs, futures)
        for _ in range(min(self.workers, len(jobs))):
            pool.submit(claims.run, pool).add_done_callback(claims.dropped)
        return futures

    def release_pool(self, kill: bool) -> None:
        """Shut the thread pool down; queued chunks are dropped; ``kill`` does not wait.

        Without ``kill`` it waits for each worker to finish the item it is running (a worker
        whose map has ended takes no new item).
        """
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=not kill, cancel_futures=True)
