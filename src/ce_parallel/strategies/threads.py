"""``ThreadExecutor``: a reused pool of daemon threads in this process.

Threads win when the work releases the GIL (NumPy, I/O) or carries large arguments that a
process pool would have to pickle. A running thread cannot be killed: after an error, timeout,
cancel or Ctrl-C its worker finishes the item it is running, takes no new one, and its result
is discarded.

The pool is a small one of our own rather than ``concurrent.futures.ThreadPoolExecutor``, whose
threads the interpreter joins at exit: a worker busy with a long item (or a hanging
``worker_initializer``) would then keep a Ctrl-C'd or SIGTERM'd program alive until the item
ends. Our workers are daemon threads, and ``shutdown(cancel=True)`` never waits for them.
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
        """One ``run_chunk`` task per job."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("the thread pool was released")
        return [pool.submit(run_chunk, job) for job in jobs]

    def release_pool(self, kill: bool) -> None:
        """Shut the thread pool down; queued chunks are dropped; ``kill`` does not wait.

        Without ``kill`` it waits for each worker to finish the item it is running (a worker
        whose map has ended takes no new item).
        """
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=not kill, cancel_futures=True)
