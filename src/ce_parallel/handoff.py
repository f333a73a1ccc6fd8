"""Where work that arrives a task or a chunk at a time runs, and the records it leaves.

``futures.CeFuturesExecutor`` (``submit``) and ``streaming`` (``imap``) do not hand a whole list
to ``execute``: they send chunks one by one through the pooled engine's public hooks
(``start_pool``, ``worker_setup``, ``submit_chunks``, ``abort``). ``resolve_target`` says which
pooled executor takes them, following the same start-up fallback chain as the engine, or that
they run in the calling thread:

* a pooled strategy runs them on its own pool;
* ``sequential``, a caller inside one of our workers, or a chain that ends serially: the
  calling thread (``Target.executor is None``);
* a strategy that ``chooses`` per map (``auto``) has nothing to measure when items arrive one
  at a time: it hands them to a ``threads`` executor of the same configuration (any function
  runs there, nothing is pickled, and it starts in about a millisecond). That is the chooser's
  own executor for ``threads`` (``executor_for(name)``), released by the chooser's
  ``shutdown()``; a chooser without one gets a new executor, owned by the caller of
  ``resolve_target`` and shut down with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import telemetry
from .errors import BackendUnavailableError, ParallelExecutionError, classify_failure
from .executor import ParallelExecutor, create_executor
from .worker import in_worker

if TYPE_CHECKING:
    import threading

    from .engine import PooledExecutor

#: The strategy that runs tasks and streams for a strategy that ``chooses`` per map (``auto``).
CHOOSER_DELEGATE = "threads"

#: Strategies whose ``submit_chunks`` replaces the work still in flight rather than adding to it
#: (dask's bridge thread follows one batch at a time). Chunks reach them in whole batches, each
#: awaited before the next is sent. A strategy may also say so itself with a class attribute
#: ``submits_incrementally = False``.
_BATCH_ONLY = frozenset({"dask"})


def submits_incrementally(executor: ParallelExecutor) -> bool:
    """Whether ``submit_chunks`` may be called again while earlier chunks are still running."""
    declared = getattr(executor, "submits_incrementally", None)
    if declared is not None:
        return bool(declared)
    return executor.name not in _BATCH_ONLY


def emit(owner: ParallelExecutor, event: str, payload: dict[str, Any]) -> None:
    """Send one record to ``owner``'s telemetry sinks (never raises)."""
    telemetry.emit(
        event, payload, callback=owner.config.telemetry, path=owner.config.telemetry_path
    )


def record_fallback(
    owner: ParallelExecutor,
    failure: BaseException,
    *,
    action: str,
    items: int,
    chunks: list[int] | None = None,
    stage: str = "run",
) -> type[ParallelExecutionError]:
    """Count one fallback on ``owner`` and emit its record; return the failure's typed error."""
    if stage == "start":
        error_type: type[ParallelExecutionError] = (
            type(failure)
            if isinstance(failure, ParallelExecutionError)
            else BackendUnavailableError
        )
    else:
        error_type = classify_failure(failure)
    owner.metrics.add(fallbacks=1)
    emit(
        owner,
        "fallback",
        telemetry.fallback_record(
            strategy=owner.name,
            cause=error_type.__name__,
            failure=failure,
            action=action,
            items=items,
            chunks=chunks,
            stage=stage,
        ),
    )
    return error_type


def lost_chunks_error(
    error_type: type[ParallelExecutionError],
    strategy: str,
    failure: BaseException,
    incomplete: Sequence[int],
) -> ParallelExecutionError:
    """The error a map raises when the machinery lost chunks and the fallback is ``raise``.

    It keeps the failure as its cause and, when the failure named one item (a result that
    cannot be unpickled), that item's ``item_index``.
    """
    error = error_type(
        f"strategy {strategy!r} failed: {type(failure).__name__}: {failure}",
        incomplete=incomplete,
    )
    if hasattr(failure, "item_index"):
        error.item_index = failure.item_index  # type: ignore[attr-defined]
    error.__cause__ = failure
    return error


def start_failed(owner: ParallelExecutor, failure: BaseException, items: int) -> str:
    """``owner``'s pool could not start: record the fallback step, and return the strategy the
    chain goes on with (``owner``'s ``start_fallback``), or raise the typed error listing every
    item when the config's fallback is ``raise``."""
    recover = owner.config.fallback_to_serial
    following = owner.record.start_fallback if recover else "raise"
    # whatever the failure, no worker ran: the backend is what is unavailable
    error_type = record_fallback(
        owner,
        failure,
        action="serial" if following == "sequential" else following,
        items=items,
        stage="start",
    )
    if not recover:
        raise error_type(
            f"strategy {owner.name!r} could not start its pool: "
            f"{type(failure).__name__}: {failure}",
            incomplete=range(items),
        ) from failure
    return following


@dataclass
class Target:
    """The pooled executor that runs the chunks, or None for the calling thread.

    ``owned``: created by ``resolve_target`` (auto's delegate, a start-up fallback), so the
    caller shuts it down when done; otherwise it is the caller's own executor.
    """

    executor: PooledExecutor | None
    owned: bool = False

    def close(self, cancel: bool = False) -> None:
        """Shut an owned executor down (idempotent); the caller's own is left alone."""
        executor, self.executor = self.executor, None
        if executor is not None and self.owned:
            executor.shutdown(cancel=cancel)


def resolve_target(executor: ParallelExecutor, items: int = 0) -> Target:
    """Which executor runs chunks for ``executor`` (pool started), or the calling thread.

    ``items`` is what a start-up fallback record counts as not completed (0: not known yet).
    With ``fallback="raise"`` a pool that cannot start raises ``BackendUnavailableError``.
    """
    from .engine import PooledExecutor

    if in_worker() and executor.workers > 1:
        emit(executor, "nested", {"items": items, "reason": "nested_worker"})
        return Target(None)
    current: ParallelExecutor = executor
    owned = False
    if executor.record.chooses:
        # auto keeps one executor per strategy it hands work to and releases them with its own
        # shutdown(): use that one, so nothing outlives the executor the caller shuts down
        keeper = getattr(executor, "executor_for", None)
        if callable(keeper):
            current = keeper(CHOOSER_DELEGATE)
        else:
            current = create_executor(
                executor.config.replace(strategy=CHOOSER_DELEGATE),
                max_workers=executor.workers,
                resources=executor.resources,
            )
            owned = True
    while isinstance(current, PooledExecutor):
        try:
            current.start_pool()
        except Exception as exc:
            if owned:
                current.shutdown(cancel=True)
            following = start_failed(current, exc, items)
            if following in ("sequential", current.name):
                return Target(None)
            current = create_executor(
                current.config.replace(strategy=following),
                max_workers=current.workers,
                resources=current.resources,
            )
            owned = True
        else:
            return Target(current, owned)
    if owned:
        current.shutdown()
    return Target(None)


def tracked(executor: ParallelExecutor, flag: threading.Event) -> Any:
    """Register a call's cancel flag with ``executor`` while it runs, as ``map`` does, so that
    ``cancel()`` and ``shutdown(cancel=True)`` reach it; refuses a shut-down executor."""
    return executor.tracking(flag)


def check_open(executor: ParallelExecutor) -> None:
    """Raise ``RuntimeError`` if ``executor`` has been shut down (the message ``map`` gives)."""
    if executor.closed:
        raise RuntimeError(f"this {type(executor).__name__} has been shut down; create a new one")


__all__ = [
    "CHOOSER_DELEGATE",
    "Target",
    "check_open",
    "emit",
    "lost_chunks_error",
    "record_fallback",
    "resolve_target",
    "start_failed",
    "submits_incrementally",
    "tracked",
]
