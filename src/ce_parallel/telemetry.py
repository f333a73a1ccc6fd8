"""Telemetry records and the sinks they go to.

Three sinks receive every record: a caller's callback ``telemetry(event, payload)`` (the same
shape calibrated-explanations uses), the ``logging`` logger ``ce_parallel.telemetry`` at DEBUG,
and, when a path is configured (``CE_PARALLEL_TELEMETRY``), a JSON-lines file. A sink that raises
is logged once and skipped: telemetry never breaks the computation.

This module imports nothing else from ce-parallel.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os
import socket
import stat
import threading
import time
import traceback
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_APPEND single writes only
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("ce_parallel.telemetry")

#: Record kinds. ``decision``: the facade chose serial or parallel. ``run``: one parallel map
#: finished (or failed). ``fallback``: the machinery failed and work was re-run or raised.
#: ``nested``: a map inside one of our workers ran serially. ``fork_hooks``: reset hooks ran.
EVENTS = ("decision", "run", "fallback", "nested", "fork_hooks")

TelemetryCallback = Callable[[str, dict[str, Any]], Any]

#: Version of the record schema written to files (``version`` on every line). 2: decision
#: records carry ``decision_id``, ``call_site`` and the cost they decided from; run and
#: fallback records carry the ``decision_id`` of the decision they executed.
RECORD_VERSION = 2

#: Fields added to every record emitted while a facade runs a decided map (see ``linked``).
_links: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "ce_parallel_telemetry_links", default=None
)
_HOST = socket.gethostname()


@contextlib.contextmanager
def linked(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (``decision_id``, ``call_site``) to every record emitted in this block,
    in this thread, by whichever executor runs the work."""
    token = _links.set({**(_links.get() or {}), **fields})
    try:
        yield
    finally:
        _links.reset(token)


_warned_lock = threading.Lock()
_warned: set[tuple[str, Any]] = set()
# Callbacks that failed, held weakly: the warning is logged once per callback while it lives,
# and a failed callback (and whatever it holds) is freed as soon as its owner drops it.
_failed_callbacks: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
#: Callbacks that cannot be held weakly (builtins, unhashable callables): at most this many
#: are remembered, the oldest forgotten first (it may then warn once more).
MAX_STRONG_FAILED_CALLBACKS = 32
_strong_failed: OrderedDict[int, Any] = OrderedDict()


def _first_failure(callback: Any) -> bool:
    """Record that ``callback`` failed; True the first time (while it lives)."""
    with _warned_lock:
        try:
            if callback in _failed_callbacks:
                return False
            _failed_callbacks[callback] = 1
            return True
        except TypeError:  # not weakly referenceable, or not hashable
            pass
        key = id(callback)
        known = _strong_failed.get(key)
        if known is callback:
            return False
        # kept alive while remembered, so that its id() is not reused by another callback
        _strong_failed[key] = callback
        while len(_strong_failed) > MAX_STRONG_FAILED_CALLBACKS:
            _strong_failed.popitem(last=False)
        return True


def _warn_once(kind: str, sink: Any, message: str, *args: Any) -> None:
    """Log ``message`` the first time ``sink`` (a callback, or a path string) fails."""
    if isinstance(sink, str):
        with _warned_lock:
            if (kind, sink) in _warned:
                return
            _warned.add((kind, sink))
    elif not _first_failure(sink):
        return
    # the record holds text only: a handler that keeps records (a test's log capture, a
    # memory handler) must not keep the failed callback, or its traceback's frames, alive
    shown = tuple(a if isinstance(a, (str, int, float)) else repr(a) for a in args)
    logger.warning(message + "\n%s", *shown, traceback.format_exc().rstrip())


def json_safe(value: Any) -> Any:
    """Return ``value`` as strict JSON data: unknown objects become ``repr``, and ``nan`` and
    the infinities become strings (``json.dumps`` would write tokens that JSON does not have).
    """
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    return repr(value)


#: How long (seconds) a file sink waits for another writer's lock before it writes anyway.
LOCK_WAIT_S = 0.5


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    """Append one JSON object as one line; safe when several processes append to ``path``.

    The line is written through a descriptor opened with ``O_APPEND`` (each write lands at the
    current end of the file) while holding an exclusive ``flock`` where the platform has one, so
    lines of concurrent writers never interleave, even when a write is split in pieces.

    It never blocks a map: the file is opened with ``O_NONBLOCK`` (a FIFO without a reader
    fails at once instead of waiting for one), anything but a regular file is refused
    (``OSError``), and the lock is waited for at most ``LOCK_WAIT_S``.
    """
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0)
    flags |= getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"telemetry path {path!r} is not a regular file")
        if fcntl is not None:
            _lock_briefly(fd)
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        # closing the descriptor releases the lock
        os.close(fd)


def _lock_briefly(fd: int) -> None:
    # some network file systems refuse locks, and a writer may hold one for too long; O_APPEND
    # alone still keeps each single-write line whole on a local disk, so write rather than
    # lose the record or wait
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)
        except OSError:
            return


def run_record(
    *,
    strategy: str,
    items: int,
    chunks: int | None,
    workers: int,
    wall_time_s: float,
    busy_time_s: float | None,
    fallbacks: int = 0,
    error: BaseException | None = None,
    serial: bool = False,
    caller_items: int = 0,
) -> dict[str, Any]:
    """The payload of a ``run`` record: one map, finished or failed.

    ``serial`` says whether the map ran serially (the facade decided so), as opposed to on a
    pool (where fallbacks may still have re-run some of it serially). ``caller_items``: the
    first items, run by the caller while the pool's workers warmed up.

    ``utilisation_pct`` is busy time / (workers x wall time), capped at 100 (None when the
    busy time is unknown, as on a caller's own executor); ``error`` is the class name of the
    exception that ended the map, or None.
    """
    capacity = workers * wall_time_s
    if busy_time_s is None:
        utilisation: float | None = None
    else:
        utilisation = 0.0 if capacity <= 0 else round(min(100.0, 100.0 * busy_time_s / capacity), 2)
    return {
        "strategy": strategy,
        "items": items,
        "chunks": chunks,
        "workers": workers,
        "wall_time_s": round(wall_time_s, 6),
        "busy_time_s": None if busy_time_s is None else round(busy_time_s, 6),
        "utilisation_pct": utilisation,
        "fallbacks": fallbacks,
        "error": None if error is None else type(error).__name__,
        "serial": serial,
        "caller_items": caller_items,
    }


def fallback_record(
    *,
    strategy: str,
    cause: str,
    failure: BaseException,
    action: str,
    items: int,
    chunks: list[int] | None = None,
    stage: str = "run",
) -> dict[str, Any]:
    """The payload of a ``fallback`` record: the machinery failed while running ``strategy``.

    ``cause`` names the failure's kind (``WorkerCrashedError``, ``SerializationError``,
    ``BackendUnavailableError``, ...), ``detail`` the exception behind it. ``stage`` is
    ``"start"`` when the pool could not start and ``"run"`` when work was lost while running;
    ``items`` counts the items not completed and ``chunks`` lists their chunks (None: all).
    ``action`` says what happened next: ``"serial"`` (they re-ran serially in the caller), the
    name of the strategy that took over, or ``"raise"``.
    """
    return {
        "strategy": strategy,
        "stage": stage,
        "cause": cause,
        "detail": f"{type(failure).__name__}: {failure}",
        "action": action,
        "items": items,
        "chunks": chunks,
    }


def wanted(callback: TelemetryCallback | None, path: str | None) -> bool:
    """Whether any sink would receive a record, so callers can skip building one."""
    return callback is not None or bool(path) or logger.isEnabledFor(logging.DEBUG)


def emit(
    event: str,
    payload: dict[str, Any],
    *,
    callback: TelemetryCallback | None = None,
    path: str | None = None,
) -> None:
    """Send one record to every sink. Never raises."""
    if not wanted(callback, path):
        return
    links = _links.get()
    if links:
        payload = {**{k: v for k, v in links.items() if k not in payload}, **payload}
    record = json_safe(payload)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s %s", event, json.dumps(record, sort_keys=True))
    if callback is not None:
        try:
            # a copy, so that a callback that edits its record cannot change the file sink's
            callback(event, dict(record))
        except Exception:
            _warn_once(
                "callback",
                callback,
                "ce-parallel telemetry callback %s failed; it is skipped for this record",
                callback,
            )
    if path:
        try:
            line = {
                "event": event,
                "time": time.time(),
                "version": RECORD_VERSION,
                "pid": os.getpid(),
                "host": _HOST,
                **record,
            }
            append_jsonl(path, line)
        except Exception:
            _warn_once("path", path, "ce-parallel telemetry file %r could not be written", path)


__all__ = [
    "EVENTS",
    "RECORD_VERSION",
    "TelemetryCallback",
    "append_jsonl",
    "emit",
    "fallback_record",
    "json_safe",
    "linked",
    "logger",
    "run_record",
    "wanted",
]
