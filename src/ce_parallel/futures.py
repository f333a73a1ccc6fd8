"""``CeFuturesExecutor``: a ce-parallel executor as a real ``concurrent.futures.Executor``.

``ParallelExecutor.as_executor()`` returns one, for anything that takes an ``Executor``:
``asyncio``'s ``loop.run_in_executor``, libraries that accept one, ``as_completed`` and
``wait``. It is a view of the executor: it runs on that executor's pool, with its worker
set-up (nested guard, numeric-thread caps, ``worker_initializer``), and its ``shutdown``
releases only what the view itself started; the pool is the executor's, released by the
executor's own ``shutdown()``.

* ``submit(fn, *args, **kwargs)`` sends one one-item chunk through the pooled engine's public
  hooks and returns a ``Future``. A user exception becomes the future's exception, with the
  note ``ce-parallel: raised by item 0 (strategy ...)``. A task the machinery lost (a dead
  worker, an unpicklable function or argument) is re-run serially on a helper thread and
  recorded as a fallback, as ``map`` does; with ``fallback="raise"`` the future fails with the
  typed error instead.
* ``map(fn, *iterables, timeout=None, chunksize=1)`` has the standard semantics: the
  iterables are collected and every chunk submitted at once, results come back lazily in
  input order, ``timeout`` counts from the call, an error is raised when its result is
  reached, and closing the iterator early cancels what has not started.
* ``shutdown(wait=True, *, cancel_futures=False)`` as in the standard library.

``sequential`` (and a caller inside one of our workers) runs each task at once in the calling
thread and returns a completed future; ``auto`` runs tasks on a ``threads`` executor of its
configuration (see ``handoff``), which this view owns and shuts down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import (
    CancelledError,
    Executor,
    Future,
    InvalidStateError,
    ThreadPoolExecutor,
)
from concurrent.futures import wait as wait_futures
from typing import Any

from .errors import (
    BackendUnavailableError,
    MapCancelledError,
    ParallelExecutionError,
    SerializationError,
)
from .executor import MapCall, ParallelExecutor, annotate_chunk_error
from .handoff import (
    Target,
    check_open,
    lost_chunks_error,
    record_fallback,
    resolve_target,
    submits_incrementally,
)
from .serial_loop import run_serially
from .worker import ChunkJob, ChunkOutcome

__all__ = ["CeFuturesExecutor"]


def apply_call(fn: Callable[..., Any], call: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    """``fn(*args, **kwargs)`` for one submitted task (importable by reference in workers)."""
    args, kwargs = call
    return fn(*args, **kwargs)


def apply_star(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``fn(*args)`` for one item of ``map`` over several iterables."""
    return fn(*args)


class _TaskFuture(Future):
    """The caller's future; cancelling it cancels the chunk that runs it, if not started."""

    def __init__(self) -> None:
        super().__init__()
        self._inner: Future[Any] | None = None
        #: set while cancel() cancels the chunk: the chunk's done-callback, which runs inside
        #: that call, must not take the cancelled chunk for one the pool lost
        self.cancelling = False

    def cancel(self) -> bool:
        inner = self._inner
        self.cancelling = True
        try:
            if inner is not None and not inner.done() and not inner.cancel():
                return False
            return super().cancel()
        finally:
            self.cancelling = False


def _settle(fut: Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    with contextlib.suppress(InvalidStateError):
        if not fut.set_running_or_notify_cancel():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)


def _settle_serially(owner: Any, job: ChunkJob, outer: Future[Any], single: bool) -> None:
    """Run the chunk with the one serial loop, in this thread, into the caller's future."""
    try:
        results = run_serially(
            MapCall(job.fn),
            job.items,
            None,
            strategy=owner.name,
            metrics=owner.metrics,
            offset=job.start,
        )
    except Exception as exc:
        _settle(outer, error=exc)
    else:
        _settle(outer, results[0] if single else results)


class _Batches:
    """Sends chunks in whole batches, each awaited before the next, from one thread.

    For strategies whose ``submit_chunks`` replaces the work in flight (see
    ``handoff.submits_incrementally``): whatever was submitted while a batch ran goes out as
    the next batch.
    """

    def __init__(self, executor: Any) -> None:
        self._executor = executor
        self._queue: queue.SimpleQueue[tuple[ChunkJob, Future[ChunkOutcome]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(
            target=self._run, name="ce-parallel-futures-batches", daemon=True
        )
        self._thread.start()

    def submit(self, job: ChunkJob) -> Future[ChunkOutcome]:
        fut: Future[ChunkOutcome] = Future()
        self._queue.put((job, fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            live = [(job, fut) for job, fut in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                inner = self._executor.submit_chunks([job for job, _ in live])
            except Exception as exc:
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            wait_futures(inner)
            for (_, fut), done in zip(live, inner, strict=True):
                if done.cancelled():
                    fut.set_exception(BackendUnavailableError("the pool dropped the chunk"))
                elif done.exception() is not None:
                    fut.set_exception(done.exception())
                else:
                    fut.set_result(done.result())


class CeFuturesExecutor(Executor):
    """A ``concurrent.futures.Executor`` that runs on a ce-parallel executor (see the module)."""

    def __init__(self, executor: ParallelExecutor) -> None:
        if not isinstance(executor, ParallelExecutor):
            raise TypeError(f"CeFuturesExecutor needs a ParallelExecutor; got {executor!r}")
        self._executor = executor
        self._lock = threading.Lock()
        self._target: Target | None = None
        self._shutdown = False
        self._outstanding: set[Future[Any]] = set()
        self._helper: ThreadPoolExecutor | None = None
        self._batches: _Batches | None = None

    @property
    def executor(self) -> ParallelExecutor:
        """The ce-parallel executor this view runs on."""
        return self._executor

    def __repr__(self) -> str:
        return f"CeFuturesExecutor({self._executor!r})"

    # -- the Executor API -------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on the executor's pool; a ``Future`` of its result."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable; got {type(fn).__name__}: {fn!r}")
        job = ChunkJob(fn=functools.partial(apply_call, fn), start=0, items=[(args, kwargs)])
        return self._run(job, single=True)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """``fn(*args)`` for each tuple of the iterables, in order (standard semantics)."""
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        argsets = list(zip(*iterables, strict=False))
        star = functools.partial(apply_star, fn)
        futures = [
            self._run(ChunkJob(fn=star, start=a, items=argsets[a : a + chunksize]), single=False)
            for a in range(0, len(argsets), chunksize)
        ]
        del argsets

        def result_iterator() -> Iterator[Any]:
            try:
                futures.reverse()
                while futures:
                    fut = futures.pop()
                    if end_time is None:
                        part = fut.result()
                    else:
                        part = fut.result(end_time - time.monotonic())
                    yield from part
                    del part, fut
            finally:
                for fut in futures:
                    fut.cancel()

        return result_iterator()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new tasks; optionally cancel queued ones; release what this view started."""
        with self._lock:
            self._shutdown = True
            outstanding = list(self._outstanding)
        if cancel_futures:
            for fut in outstanding:
                fut.cancel()
        if wait:
            wait_futures(outstanding)
            self._release()
        else:
            threading.Thread(
                target=self._release_after,
                args=(outstanding,),
                name="ce-parallel-futures-shutdown",
                daemon=True,
            ).start()

    # -- running one chunk ------------------------------------------------------------------

    def _release_after(self, outstanding: list[Future[Any]]) -> None:
        wait_futures(outstanding)
        self._release()

    def _release(self) -> None:
        with self._lock:
            batches, self._batches = self._batches, None
            helper, self._helper = self._helper, None
            target, self._target = self._target, None
        if batches is not None:
            batches.close()
        if helper is not None:
            helper.shutdown(wait=True)
        if target is not None:
            target.close()

    def _resolve(self) -> Target:
        # under self._lock
        if self._target is None:
            self._target = resolve_target(self._executor, 1)
        return self._target

    def _run(self, job: ChunkJob, single: bool) -> Future[Any]:
        outer = _TaskFuture()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            check_open(self._executor)
            target = self._resolve()
            ex = target.executor
            if ex is not None and not submits_incrementally(ex) and self._batches is None:
                self._batches = _Batches(ex)
            batches = self._batches
            self._outstanding.add(outer)
        outer.add_done_callback(self._forget)
        if ex is None:
            self._run_here(job, outer, single)
            return outer
        job = dataclasses.replace(job, setup=ex.worker_setup(), check_pickle=ex.record.pickles_work)
        try:
            ex.start_pool()
            inner = batches.submit(job) if batches is not None else ex.submit_chunks([job])[0]
        except Exception as exc:
            self._fall_back(ex, job, outer, single, exc)
            return outer
        outer._inner = inner
        inner.add_done_callback(lambda done: self._finish(ex, job, outer, single, done))
        return outer

    def _forget(self, fut: Future[Any]) -> None:
        with self._lock:
            self._outstanding.discard(fut)

    def _run_here(self, job: ChunkJob, outer: Future[Any], single: bool) -> None:
        """Run the chunk in the calling thread (sequential, nested), the future completed."""
        from .engine import PooledExecutor

        owner = self._executor
        own_loop = not isinstance(owner, PooledExecutor) and not owner.record.chooses
        if not (job.start == 0 and own_loop):
            _settle_serially(owner, job, outer, single)
            return
        try:
            # the strategy's own execute: its once-per-worker initializer runs as for map
            results = owner.execute(MapCall(job.fn), list(job.items), None)
        except Exception as exc:
            _settle(outer, error=exc)
        else:
            _settle(outer, results[0] if single else results)

    def _finish(
        self, ex: Any, job: ChunkJob, outer: Future[Any], single: bool, done: Future[Any]
    ) -> None:
        """Unwrap a finished chunk into the caller's future (runs in the pool's thread)."""
        if outer.cancelled() or getattr(outer, "cancelling", False):
            return
        try:
            outcome: ChunkOutcome = done.result()
        except CancelledError:
            if self._shutdown:
                # cancelled by this view's shutdown(cancel_futures=True): not lost, not re-run
                if not outer.cancel():
                    _settle(outer, error=MapCancelledError("cancelled by shutdown(cancel_futures)"))
                return
            failure: BaseException = BackendUnavailableError("the pool dropped the task")
            self._fall_back(ex, job, outer, single, failure)
            return
        except Exception as exc:
            self._fall_back(ex, job, outer, single, exc)
            return
        if outcome.machinery_error is not None:
            self._fall_back(ex, job, outer, single, outcome.machinery_error)
            return
        if outcome.error is not None:
            ex.metrics.add(failures=1)
            _settle(outer, error=annotate_chunk_error(outcome, ex.name))
            return
        try:
            results = outcome.take_results()
        except SerializationError as exc:
            self._fall_back(ex, job, outer, single, exc)
            return
        if results is None or len(results) != len(job.items):
            failure = ParallelExecutionError(
                f"a task returned {0 if results is None else len(results)} results for "
                f"{len(job.items)} items"
            )
            self._fall_back(ex, job, outer, single, failure)
            return
        ex.metrics.add(tasks_submitted=len(results), tasks_completed=len(results))
        _settle(outer, results[0] if single else results)

    def _fall_back(
        self, ex: Any, job: ChunkJob, outer: Future[Any], single: bool, failure: BaseException
    ) -> None:
        """The machinery lost the task: record it, then re-run it serially on a helper thread."""
        if ex.closed or self._executor.closed:
            _settle(outer, error=MapCancelledError("the executor was shut down"))
            return
        recover = ex.config.fallback_to_serial
        error_type = record_fallback(
            ex, failure, action="serial" if recover else "raise", items=len(job.items)
        )
        if not recover:
            incomplete = range(job.start, job.start + len(job.items))
            _settle(outer, error=lost_chunks_error(error_type, ex.name, failure, incomplete))
            return
        with self._lock:
            if self._helper is None:
                self._helper = ThreadPoolExecutor(1, thread_name_prefix="ce-parallel-fallback")
            helper = self._helper
        broken = error_type.__name__ == "WorkerCrashedError"
        helper.submit(self._rerun, ex, job, outer, single, broken)

    def _rerun(
        self, ex: Any, job: ChunkJob, outer: Future[Any], single: bool, broken: bool
    ) -> None:
        if broken:
            # a pool with a dead worker is replaced; the next task starts a fresh one
            ex.release_pool(kill=True)
        _settle_serially(ex, job, outer, single)
