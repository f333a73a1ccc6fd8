"""Warm-up of a process pool's workers, while the caller runs the map's first items itself.

A worker's first chunk that brings a model (a fitted forest, an explainer) pays for unpickling
it, and for importing what it needs: for a calibrated-explanations explainer on a random
forest that is about 1.7 s of ``sklearn.ensemble`` imports per worker, several times the work
of a small map. A pool's first map would then cost 2-3x the serial loop.

So a strategy that shares objects (``shared_objects``) sends, for objects no worker has yet,
one warm-up task per worker: a chunk of no items whose unpickling loads them. Until every
warm-up is done the engine runs the map's items in the caller (``serial_loop``, in blocks,
stopping once the pool is ready) and sends the pool only what is left, so no item runs twice
and the map costs about what the serial loop costs. At most the CPU budget less
``WARMUP_CALLER_CPUS`` warm-ups run at once, leaving the caller a CPU; the next is sent when
one ends. A worker that is idle takes queued work in turn, so the chained warm-ups reach the
other workers; one that comes back from a worker already warm (the same pid) is sent again, up
to twice as many as there are workers. A warm-up that fails is done as well: the chunks then
meet the same failure and fall back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class WarmUps:
    """Warm-up tasks of one pool until ``total`` distinct workers (by pid) have run one, at
    most ``at_once`` running and ``2 x total`` sent. Thread-safe.

    A worker that is idle longest usually takes the next task, so the chained warm-ups reach
    the other workers; when one comes back from a worker already warm, another is sent.
    """

    def __init__(
        self, total: int, at_once: int, finished: Callable[[], None] | None = None
    ) -> None:
        """Nothing is sent before ``start``; ``finished`` is called once, when the last
        warm-up has ended (or ``abandon``)."""
        self._submit: Callable[[], Future[Any]] | None = None
        self._at_once = at_once
        self._finished = finished
        self._lock = threading.Lock()
        self._wanted = max(1, total)
        self._left_to_send = 2 * self._wanted
        self._running = 0
        self._pids: set[int] = set()
        self._ready = threading.Event()

    def start(self, submit: Callable[[], Future[Any]]) -> None:
        """Send the first warm-ups with ``submit`` (one task each)."""
        self._submit = submit
        for _ in range(max(1, min(self._at_once, self._wanted))):
            self._send()

    @property
    def started(self) -> bool:
        """``start`` or ``abandon`` has been called."""
        return self._submit is not None or self._ready.is_set()

    def abandon(self) -> None:
        """Nothing to warm after all: ready now."""
        with self._lock:
            self._left_to_send = 0
        self._set_ready()

    def _send(self) -> None:
        with self._lock:
            if self._left_to_send == 0 or self._submit is None:
                return
            self._left_to_send -= 1
            self._running += 1
        try:
            fut = self._submit()
        except Exception:
            # the pool is gone or broken: nothing more to wait for
            self._finish_all()
            return
        fut.add_done_callback(self._one_done)

    def _one_done(self, fut: Future[Any]) -> None:
        pid = None
        if not fut.cancelled() and fut.exception() is None:
            pid = getattr(fut.result(), "pid", None)
        with self._lock:
            self._running -= 1
            if pid is not None:
                self._pids.add(pid)
            # warm-ups sent so far may still reach the workers not yet warm
            unwarmed = self._wanted - len(self._pids) - self._running
            more = unwarmed > 0 and self._left_to_send > 0
            done = not more and self._running == 0
        if more:
            self._send()
        elif done:
            self._set_ready()

    def _finish_all(self) -> None:
        with self._lock:
            self._left_to_send = 0
            self._running -= 1
            done = self._running <= 0
        if done:
            self._set_ready()

    def _set_ready(self) -> None:
        with self._lock:
            if self._ready.is_set():
                return
            self._ready.set()
        if self._finished is not None:
            self._finished()

    def ready(self) -> bool:
        """Every warm-up task has ended (or the pool has gone)."""
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ready (tests, evaluation); True once ready."""
        return self._ready.wait(timeout)


class PoolWarmUps:
    """The warm-ups of one pool that may still be running. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[WarmUps] = []

    def add(self, warm: WarmUps) -> None:
        """Track a new set of warm-up tasks."""
        with self._lock:
            self._pending.append(warm)

    def check(self) -> Callable[[], bool] | None:
        """A check that is true once every warm-up running now is done; None if none runs."""
        with self._lock:
            self._pending = [w for w in self._pending if not w.ready()]
            pending = list(self._pending)
        if not pending:
            return None
        return lambda: all(w.ready() for w in pending)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every warm-up running now is done (tests, evaluation)."""
        with self._lock:
            pending = list(self._pending)
        return all(w.wait(timeout) for w in pending)


def warm_ups_at_once(cpus: int) -> int:
    """Warm-ups run side by side: the CPUs of the budget less ``WARMUP_CALLER_CPUS``, which
    the caller uses for the map's items; at least one."""
    from . import heuristics

    return max(1, cpus - heuristics.WARMUP_CALLER_CPUS)


__all__ = ["PoolWarmUps", "WarmUps", "warm_ups_at_once"]
