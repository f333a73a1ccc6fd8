"""Fork-safety hooks for caches and other per-process state.

The contract for a cache (or a connection, a lock, a random state) that must not be shared with
a child process:

* register it once, usually at import of the module that owns it:
  ``register_fork_hook(cache)`` for an object with a ``forksafe_reset()`` method, or
  ``register_fork_hook(clear_function)`` for a plain callable;
* the hook runs in the *child* only: right after ``os.fork`` (through ``os.register_at_fork``)
  and once at the start of every spawned or loky worker process of ours, before the worker's
  first chunk. It never runs in the parent;
* hooks are held by weak reference: registering does not keep a cache alive, and a collected
  cache drops out of the registry. A hook that is a ``lambda`` or a local function must be kept
  alive by its owner;
* a hook must be cheap, must not start threads or processes, and must leave the object usable
  (empty, not closed). A hook that raises is logged and skipped; the others still run;
* every run is counted: ``hook_runs()`` in the child, and a ``fork_hooks`` telemetry record
  (strategy, worker pid, hooks run) that the executor emits when a worker reports its hooks.

Forking a process that has live threads can deadlock the child (a lock held by another thread
at fork time stays locked forever). When a fork happens while ce-parallel is imported and other
threads are alive, one ``RuntimeWarning`` says so; our own process strategies never fork bare
(loky starts workers with fork+exec).
"""

from __future__ import annotations

import logging
import os
import threading
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from . import telemetry

logger = logging.getLogger("ce_parallel.forksafety")

#: Environment variable of the JSON-lines telemetry file; a bare ``os.fork`` child has no
#: executor configuration, so its ``fork_hooks`` record goes to this file (and the logger).
TELEMETRY_PATH_ENV = "CE_PARALLEL_TELEMETRY"


class ForkSafe(Protocol):
    """An object that can drop state which must not be shared with a child process."""

    def forksafe_reset(self) -> None: ...


_HookRef = Callable[[], Callable[[], Any] | None]

_lock = threading.Lock()
_hooks: list[_HookRef] = []
_runs = 0
_failures = 0
_warned_fork_with_threads = False


def _reference(target: ForkSafe | Callable[[], Any]) -> _HookRef:
    reset = getattr(target, "forksafe_reset", None)
    if reset is not None and callable(reset):
        return _weak_callable(reset)
    if not callable(target):
        raise TypeError(
            "register_fork_hook() accepts an object with a forksafe_reset() method or a "
            f"callable; got {type(target).__name__}: {target!r}"
        )
    return _weak_callable(target)


def _weak_callable(target: Callable[[], Any]) -> _HookRef:
    if isinstance(target, types.MethodType):
        # a bound method object dies at once; this follows its instance instead
        return weakref.WeakMethod(target)
    try:
        return weakref.ref(target)
    except TypeError:
        # builtins (and other objects without weak reference support) live for the whole
        # process anyway: a strong reference keeps nothing alive that would otherwise go
        return lambda: target


def register_fork_hook(target: ForkSafe | Callable[[], Any]) -> None:
    """Run ``target.forksafe_reset()`` (or ``target()``) in every child process of ours.

    The hook runs after ``fork`` in the child and once at the start of each spawned or loky
    worker, never in the parent. It is held weakly: when the object is garbage-collected the
    hook disappears. Registering the same object twice runs it twice.
    """
    ref = _reference(target)
    with _lock:
        _hooks.append(ref)


def registered_hooks() -> int:
    """How many hooks are registered and still alive in this process."""
    with _lock:
        return sum(1 for ref in _hooks if ref() is not None)


def run_fork_hooks() -> int:
    """Run every live hook in this process; return how many ran without error.

    A failing hook is logged with its traceback and skipped. Meant for child processes: the
    worker setup and the after-fork handler call it; calling it in a parent resets the caches.
    """
    return _run_hooks()[0]


def _run_hooks() -> tuple[int, int]:
    global _runs, _failures
    with _lock:
        live = [(ref, ref()) for ref in _hooks]
        _hooks[:] = [ref for ref, fn in live if fn is not None]
    ran = failed = 0
    for _, fn in live:
        if fn is None:
            continue
        try:
            fn()
        except Exception:
            failed += 1
            logger.warning("fork-safety hook %r failed in the child", fn, exc_info=True)
        else:
            ran += 1
    _runs += ran
    _failures += failed
    return ran, failed


def hook_runs() -> int:
    """How many hook calls this process has made without error (counted in telemetry)."""
    return _runs


def hook_failures() -> int:
    """How many hook calls raised in this process (each one was logged)."""
    return _failures


def _live_other_threads() -> list[str]:
    current = threading.current_thread()
    return [t.name for t in threading.enumerate() if t is not current and t.is_alive()]


def warn_if_threads_at_fork() -> bool:
    """Warn (once per process) that a fork happens while other threads are alive.

    Returns True when it warned. Called before every ``os.fork`` of this process; a child forked
    while another thread holds a lock (logging, an allocator, a BLAS pool) can hang forever.
    """
    global _warned_fork_with_threads
    if _warned_fork_with_threads:
        return False
    others = _live_other_threads()
    if not others:
        return False
    _warned_fork_with_threads = True
    shown = ", ".join(others[:5]) + (f", ... ({len(others)} in all)" if len(others) > 5 else "")
    warnings.warn(
        f"ce-parallel: this process forks while {len(others)} other thread(s) are alive "
        f"({shown}); the child may deadlock on a lock one of them held. Use the 'spawn' or "
        "'forkserver' start method, or ce-parallel's 'processes' strategy (loky, fork+exec).",
        RuntimeWarning,
        stacklevel=3,
    )
    return True


def _before_fork() -> None:
    try:
        warn_if_threads_at_fork()
    except Exception:
        # warnings configured as errors must not make os.fork itself fail
        logger.warning("fork with live threads", exc_info=True)


def _after_fork_in_child() -> None:
    global _lock
    # the parent's lock may have been held by another thread at fork time
    _lock = threading.Lock()
    ran, failed = _run_hooks()
    if ran or failed:
        telemetry.emit(
            "fork_hooks",
            {"strategy": "fork", "pid": os.getpid(), "hooks": ran, "failed": failed},
            path=os.environ.get(TELEMETRY_PATH_ENV) or None,
        )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


__all__ = [
    "ForkSafe",
    "hook_failures",
    "hook_runs",
    "register_fork_hook",
    "registered_hooks",
    "run_fork_hooks",
    "warn_if_threads_at_fork",
]
