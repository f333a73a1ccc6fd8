"""Exception types raised by ce-parallel.

User exceptions raised by the mapped function are never wrapped: they reach the caller with
their own type. The classes here describe configuration mistakes and failures of the parallel
machinery itself.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from concurrent.futures import BrokenExecutor, CancelledError


class ConfigurationError(ValueError):
    """A setting has a value that is not accepted.

    The message names the setting, the value given and what is accepted.
    """


class ParallelExecutionError(RuntimeError):
    """The parallel machinery failed (not the user's function).

    ``incomplete`` holds the indices of the items whose results were not produced.
    """

    def __init__(self, message: str, *, incomplete: Sequence[int] = ()) -> None:
        self.incomplete = tuple(incomplete)
        if self.incomplete:
            shown = ", ".join(str(i) for i in self.incomplete[:20])
            more = "" if len(self.incomplete) <= 20 else f", ... ({len(self.incomplete)} in all)"
            message = f"{message} (items not completed: {shown}{more})"
        super().__init__(message)


class WorkerCrashedError(ParallelExecutionError):
    """A worker process died (killed, segfault, ``os._exit``, out of memory)."""


class SerializationError(ParallelExecutionError):
    """The function, an item or a result could not be pickled to cross a process boundary."""


class BackendUnavailableError(ParallelExecutionError):
    """An optional backend (joblib, dask, ...) is missing or its pool could not start."""


class MapCancelledError(CancelledError):
    """A running ``map`` was stopped by ``executor.cancel()`` or ``shutdown()``."""


class ExecutorClosedError(RuntimeError):
    """A ``map`` reached an executor (or facade) after ``shutdown()`` / ``close()``.

    Nothing was started for it: no pool, no worker, no thread.
    """


class RemoteError(Exception):
    """Stands in for a user exception that could not travel back from a worker process.

    Raised in place of an exception that cannot be pickled (it holds a lock, a socket, ...) or
    cannot be rebuilt from its pickle (its ``__init__`` needs arguments it does not keep in
    ``args``). It keeps what can travel: the original type's name (``type_name``, module
    included), its message, the worker's traceback text and the failing item's index. It is
    itself always picklable.
    """

    def __init__(
        self,
        type_name: str,
        message: str,
        traceback_text: str = "",
        item_index: int | None = None,
    ) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        self.item_index = item_index
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (self.type_name, self.message, self.traceback_text, self.item_index),
        )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def classify_failure(exc: BaseException) -> type[ParallelExecutionError]:
    """The typed error that describes an infrastructure failure, told by exception *type*.

    The exception and its causes are looked at in turn: one of ours keeps its type; a pickling
    error means the work could not cross a process boundary; a broken executor (loky's
    ``TerminatedWorkerError``, ``BrokenProcessPool``, ...) means a worker died; an import error
    means a backend is missing. Anything else is a plain ``ParallelExecutionError``.
    """
    for link in _chain(exc):
        if isinstance(link, ParallelExecutionError):
            return type(link)
        if isinstance(link, (pickle.PicklingError, pickle.UnpicklingError)):
            return SerializationError
        if isinstance(link, BrokenExecutor):
            return WorkerCrashedError
        if isinstance(link, ImportError):
            return BackendUnavailableError
    return ParallelExecutionError


__all__ = [
    "BackendUnavailableError",
    "ConfigurationError",
    "ExecutorClosedError",
    "MapCancelledError",
    "ParallelExecutionError",
    "RemoteError",
    "SerializationError",
    "WorkerCrashedError",
    "classify_failure",
]
