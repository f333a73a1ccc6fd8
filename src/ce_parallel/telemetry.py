"""Telemetry records and the sinks they go to.

Three sinks receive every record: a caller's callback ``telemetry(event, payload)`` (the same
shape calibrated-explanations uses), the ``logging`` logger ``ce_parallel.telemetry`` at DEBUG,
and, when a path is configured (``CE_PARALLEL_TELEMETRY``), a JSON-lines file. A sink that raises
is logged once and skipped: telemetry never breaks the computation.

This module imports nothing else from ce-parallel.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("ce_parallel.telemetry")

#: Record kinds. ``decision``: the facade chose serial or parallel. ``run``: one parallel map
#: finished (or failed). ``fallback``: the machinery failed and work was re-run or raised.
#: ``nested``: a map inside one of our workers ran serially. ``fork_hooks``: reset hooks ran.
EVENTS = ("decision", "run", "fallback", "nested", "fork_hooks")

TelemetryCallback = Callable[[str, dict[str, Any]], Any]

_warned_lock = threading.Lock()
_warned: set[tuple[str, int]] = set()


def _warn_once(kind: str, key: int, message: str, *args: Any) -> None:
    with _warned_lock:
        if (kind, key) in _warned:
            return
        _warned.add((kind, key))
    logger.warning(message, *args, exc_info=True)


def json_safe(value: Any) -> Any:
    """Return ``value`` as something ``json.dumps`` accepts (unknown objects become ``repr``)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    return repr(value)


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    """Append one JSON object as one line; safe when several processes append to ``path``.

    The line is written with a single ``os.write`` on a descriptor opened with ``O_APPEND``,
    which POSIX makes atomic with respect to other appenders for regular files.
    """
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def emit(
    event: str,
    payload: dict[str, Any],
    *,
    callback: TelemetryCallback | None = None,
    path: str | None = None,
) -> None:
    """Send one record to every sink. Never raises."""
    record = json_safe(payload)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s %s", event, json.dumps(record, sort_keys=True))
    if callback is not None:
        try:
            callback(event, record)
        except Exception:
            _warn_once(
                "callback",
                id(callback),
                "ce-parallel telemetry callback %r failed; it is skipped for this record",
                callback,
            )
    if path:
        try:
            append_jsonl(path, {"event": event, "time": time.time(), **record})
        except Exception:
            _warn_once(
                "path", hash(path), "ce-parallel telemetry file %r could not be written", path
            )


__all__ = ["EVENTS", "TelemetryCallback", "append_jsonl", "emit", "json_safe", "logger"]
