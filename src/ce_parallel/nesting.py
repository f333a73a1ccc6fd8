"""Is this code running inside somebody else's worker? ``foreign_worker()`` names which kind.

ce-parallel marks its own workers (``worker.in_worker``). Work can also arrive inside a worker
that another library started: a joblib or loky process, a ``multiprocessing`` pool, a
``concurrent.futures.ProcessPoolExecutor``, a Dask worker, joblib's threading backend. Starting
a pool there multiplies the workers (2 joblib workers x 2 of ours on 2 CPUs), and some cannot
have children at all (daemonic processes). The markers read are the ones these libraries set
themselves, checked against joblib 1.6, loky 3.5, distributed 2025 and CPython 3.10-3.13:

========================  ===================================================================
verdict                   marker
========================  ===================================================================
``joblib``                the process runs joblib's vendored loky ``_process_worker``
``loky``                  it runs loky's ``_process_worker`` (or is named ``LokyProcess-N``)
``process-pool``          it runs ``concurrent.futures.process._process_worker``
``multiprocessing-pool``  it runs ``multiprocessing.pool.worker`` (``Pool``, joblib's
                          ``multiprocessing`` backend)
``multiprocessing``       any other daemonic ``multiprocessing`` child (it cannot have children)
``dask``                  ``distributed.get_worker()`` answers (only if distributed is already
                          imported: it is never imported here), or a nanny's worker process
``thread-pool``           this thread runs ``multiprocessing.pool.worker``: a ``ThreadPool``,
                          which is what joblib's ``threading`` backend uses
========================  ===================================================================

The process's kind is read once per process (the pid is part of the cache, so a forked child
reads its own); the thread's kind is read on every call. A ``concurrent.futures`` thread pool
is deliberately not a verdict: asyncio's default executor and ce-parallel's own thread workers
are such threads, and only the second is a worker of a parallel map (``in_worker`` knows it).
"""

from __future__ import annotations

import sys
import threading

#: What the process runs (its ``multiprocessing`` target), by module and function name.
_PROCESS_TARGETS: tuple[tuple[str, str], ...] = (
    ("joblib.externals.loky.process_executor._process_worker", "joblib"),
    ("loky.process_executor._process_worker", "loky"),
    ("concurrent.futures.process._process_worker", "process-pool"),
    ("multiprocessing.pool.worker", "multiprocessing-pool"),
)
#: Process-name prefixes set by libraries whose target is not visible (a nanny's worker).
_PROCESS_NAMES: tuple[tuple[str, str], ...] = (
    ("LokyProcess-", "loky"),
    ("Dask Worker process", "dask"),
)
#: What a thread runs, by module and function name.
_THREAD_TARGETS: tuple[tuple[str, str], ...] = (("multiprocessing.pool.worker", "thread-pool"),)

_cache: tuple[int, str | None] | None = None


def _qualified(fn: object) -> str | None:
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}"


def _process_kind() -> str | None:
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return None  # nothing started this process through multiprocessing
    process = mp.current_process()
    target = _qualified(getattr(process, "_target", None))
    for marker, kind in _PROCESS_TARGETS:
        if target == marker:
            return kind
    name = getattr(process, "name", "") or ""
    for prefix, kind in _PROCESS_NAMES:
        if name.startswith(prefix):
            return kind
    if getattr(process, "daemon", False) and mp.parent_process() is not None:
        return "multiprocessing"
    return None


def process_kind() -> str | None:
    """The kind of foreign worker this *process* is (read once per process), or None."""
    global _cache
    import os

    pid = os.getpid()
    cached = _cache
    if cached is None or cached[0] != pid:
        cached = (pid, _process_kind())
        _cache = cached
    return cached[1]


def thread_kind() -> str | None:
    """The kind of foreign worker this *thread* is, or None (never cached)."""
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        get_worker = getattr(distributed, "get_worker", None)
        if get_worker is not None:
            try:
                get_worker()
            except Exception:
                pass
            else:
                return "dask"
    target = _qualified(getattr(threading.current_thread(), "_target", None))
    for marker, kind in _THREAD_TARGETS:
        if target == marker:
            return kind
    return None


def foreign_worker() -> str | None:
    """Name the kind of worker another library started that this code runs in, or None.

    One of ``"joblib"``, ``"loky"``, ``"process-pool"``, ``"multiprocessing-pool"``,
    ``"multiprocessing"``, ``"dask"``, ``"thread-pool"`` (see the module). None in the caller's
    own process and threads.
    """
    return process_kind() or thread_kind()


__all__ = ["foreign_worker", "process_kind", "thread_kind"]
