"""The dask strategy's parent side: dask futures bridged to ``concurrent.futures`` ones, and
dask's failures told apart by type and stage.

``Bridge`` completes one ``concurrent.futures.Future`` per dask future from one thread, woken
by ``distributed.as_completed`` as tasks finish: no polling interval is added to a map.
``machinery_error`` names a failure for the engine's fallback by its type and where it happened
(submitting, the task, gathering its result), never by its message.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from ..errors import (
    BackendUnavailableError,
    ParallelExecutionError,
    SerializationError,
    WorkerCrashedError,
)
from ..worker import ChunkOutcome

#: Exception type names (distributed's and tornado's) that mean a worker or the connection to
#: it was lost. Told by name: the classes live in modules that may not be importable here.
_LOST_WORKER_ERRORS = frozenset({"KilledWorker", "CommClosedError", "StreamClosedError"})
#: Where a dask failure happened. ``submit``: the client serializes the task (a comm failure
#: there is a lost connection; anything else means the work cannot be pickled). ``task``: the
#: task itself failed; ``run_chunk`` returns every error of the user's code as data, so what is
#: left is the worker or scheduler failing to load the task (deserialization). ``gather``: the
#: finished chunk's result could not be fetched or loaded here.
_STAGES = ("submit", "task", "gather")


def machinery_error(exc: BaseException, stage: str) -> BaseException:
    """Name a dask failure as the typed error the engine classifies for fallback.

    Told apart by exception type and by the ``stage`` it happened in (see ``_STAGES``), never
    by the text of its message: one of ours keeps its type, a lost worker or connection is a
    ``WorkerCrashedError``, and anything else at these stages is work that could not cross to
    the worker or back (``SerializationError``).
    """
    assert stage in _STAGES
    if isinstance(exc, ParallelExecutionError):
        return exc
    name = type(exc).__name__
    lost = any(cls.__name__ in _LOST_WORKER_ERRORS for cls in type(exc).__mro__)
    if lost:
        error: BaseException = WorkerCrashedError(f"dask lost a worker: {name}: {exc}")
    else:
        error = SerializationError(f"dask could not move a chunk ({stage}): {name}: {exc}")
    error.__cause__ = exc
    return error


def settle(target: Future[ChunkOutcome], setter: Callable[[Any], None], value: Any) -> None:
    # A future dropped by the caller may have been cancelled meanwhile; its value is not needed.
    with contextlib.suppress(InvalidStateError):
        setter(value)


class Bridge:
    """Completes one ``concurrent.futures.Future`` per dask future, from one thread.

    The thread iterates ``distributed.as_completed``, which the client's event loop wakes as
    each task finishes (or is cancelled): no timer, no polling interval added to a map.
    """

    def __init__(
        self,
        loop: Any,
        pairs: list[tuple[Any, Future[ChunkOutcome]]],
        keep: Any = None,
        done: Callable[[Bridge], None] | None = None,
    ) -> None:
        from distributed import as_completed

        # keep: the map's scattered function, alive while its chunks run; done: called when
        # the thread ends, so the executor forgets a finished map's bridge
        self._keep, self._done = keep, done
        self._lock = threading.Lock()
        self._remaining: dict[Any, Future[ChunkOutcome]] = dict(pairs)
        self._stop = threading.Event()
        self._completed = as_completed(list(self._remaining), loop=loop)
        self._thread = threading.Thread(
            target=self._run, name="ce-parallel-dask-bridge", daemon=True
        )
        self._thread.start()

    def drop(self, targets: Iterable[Future[ChunkOutcome]]) -> list[Any]:
        """Stop tracking ``targets``; return their dask futures (for the caller to cancel)."""
        wanted = set(targets)
        with self._lock:
            lost = [d for d, f in self._remaining.items() if f in wanted]
            for d in lost:
                del self._remaining[d]
        return lost

    def stop(self) -> list[Any]:
        """Stop the thread; fail every chunk still tracked; return their dask futures."""
        self._stop.set()
        with self._lock:
            left, self._remaining = self._remaining, {}
        for fut in left.values():
            settle(fut, fut.set_exception, BackendUnavailableError("the dask pool was released"))
        # an empty as_completed ends its iteration; wake the thread instead of letting it
        # notice on its own
        self._completed.clear()
        with self._completed.thread_condition:
            self._completed.thread_condition.notify_all()
        self._thread.join()
        return list(left)

    def _run(self) -> None:
        try:
            for dfut in self._completed:
                if self._stop.is_set():
                    return
                self._resolve(dfut)
                with self._lock:
                    if not self._remaining:
                        return  # dropped futures need not be waited for
        finally:
            self._keep = None
            if self._done is not None:
                self._done(self)

    def _resolve(self, dfut: Any) -> None:
        with self._lock:
            target = self._remaining.pop(dfut, None)
        if target is None:
            return
        status = dfut.status
        try:
            if status == "finished":
                settle(target, target.set_result, dfut.result())
                return
            if status == "error":
                failure: BaseException = machinery_error(dfut.exception(), "task")
            else:
                failure = WorkerCrashedError(f"dask reported the chunk's task as {status}")
        except Exception as exc:  # gathering the result failed: the data or its worker is gone
            failure = machinery_error(exc, "gather")
        settle(target, target.set_exception, failure)


__all__ = ["Bridge", "machinery_error", "settle"]
