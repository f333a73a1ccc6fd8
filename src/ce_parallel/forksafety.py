"""Fork-safety hooks for caches and other per-process state.

A registered hook runs in a *child* process: right after ``os.fork`` (through
``os.register_at_fork``) and once at the start of every spawned or loky worker of ours. It never
runs in the parent. Hooks are held by weak reference so registering does not keep a cache alive.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger("ce_parallel.forksafety")


class ForkSafe(Protocol):
    """An object that can drop state which must not be shared with a child process."""

    def forksafe_reset(self) -> None: ...


_lock = threading.Lock()
_hooks: list[Callable[[], Callable[[], Any] | None]] = []
_runs = 0


def _reference(target: ForkSafe | Callable[[], Any]) -> Callable[[], Callable[[], Any] | None]:
    reset = getattr(target, "forksafe_reset", None)
    if reset is not None and callable(reset):
        method_ref = weakref.WeakMethod(reset)
        return method_ref
    if not callable(target):
        raise TypeError(
            "register_fork_hook() accepts an object with a forksafe_reset() method or a callable; "
            f"got {type(target).__name__}"
        )
    if hasattr(target, "__self__"):
        return weakref.WeakMethod(target)  # type: ignore[arg-type]
    try:
        return weakref.ref(target)
    except TypeError:
        # builtins and some callables cannot be weakly referenced: keep them strongly
        return lambda: target


def register_fork_hook(target: ForkSafe | Callable[[], Any]) -> None:
    """Run ``target.forksafe_reset()`` (or ``target()``) in every child process of ours.

    The hook runs after ``fork`` in the child and at the start of each spawned worker. It is held
    weakly: when the object is garbage-collected the hook disappears.
    """
    ref = _reference(target)
    with _lock:
        _hooks.append(ref)


def run_fork_hooks() -> int:
    """Run every live hook in this process; return how many ran. A failing hook is logged."""
    global _runs
    with _lock:
        live = [(ref, ref()) for ref in _hooks]
        _hooks[:] = [ref for ref, fn in live if fn is not None]
    ran = 0
    for _, fn in live:
        if fn is None:
            continue
        try:
            fn()
            ran += 1
        except Exception:
            logger.warning("fork-safety hook %r failed in the child", fn, exc_info=True)
    _runs += ran
    return ran


def hook_runs() -> int:
    """How many hook calls this process has made (counted in telemetry)."""
    return _runs


def _after_fork_in_child() -> None:
    global _lock
    # the parent's lock may have been held by another thread at fork time
    _lock = threading.Lock()
    run_fork_hooks()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = ["ForkSafe", "hook_runs", "register_fork_hook", "run_fork_hooks"]
