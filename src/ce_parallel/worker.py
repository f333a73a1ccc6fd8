"""What runs inside a worker: one chunk of items, the once-per-worker setup, the nested guard.

Everything here must be importable and picklable by reference in a fresh interpreter, because
process workers receive ``run_chunk`` and ``ChunkJob`` objects by pickle.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import pickle
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import length_hint
from typing import TYPE_CHECKING, Any

from .errors import RemoteError

if TYPE_CHECKING:
    from .result_segments import FileBuffers, Tracker

#: Set in the environment of process workers we start, so that anything they launch in turn
#: also knows it is inside a ce-parallel worker. Deliberately not ``CE_``-prefixed: libraries
#: such as calibrated-explanations warn about ``CE_*`` variables they do not know.
IN_WORKER_ENV = "CEPARALLEL_IN_WORKER"

#: How often (seconds) a process worker checks that its parent is still alive. A worker whose
#: parent was killed (SIGKILL, out of memory) exits within about this long; loky workers would
#: otherwise keep running, or sit idle, for as long as their machine is up.
PARENT_POLL_INTERVAL_S = 0.25
#: Exit status of a process worker that stopped because its parent is gone.
PARENT_GONE_EXIT_CODE = 70


class _WorkerState(threading.local):
    """Per-thread worker state; class defaults make the reads cheap (``in_worker()`` runs on
    every map, where a missing thread-local attribute would cost a caught AttributeError)."""

    depth: int = 0
    setups: set[str] | None = None


_local = _WorkerState()
_process_worker = False
_done_setups: set[str] = set()
#: tokens whose process-wide part (parent watch, fork hooks, numeric caps) has run
_process_setups: set[str] = set()
_setup_lock = threading.Lock()
_init_lock = threading.RLock()
_blas_limits: list[Any] = []
_watched_parent: int | None = None
_hooks_done = False
#: (hooks run, hooks failed) by this process's one-time setup, until a chunk reports it
_hook_report: tuple[int, int] | None = None


#: The marker is set before a worker's interpreter starts, so reading it once is enough (and
#: keeps ``in_worker()``, which every map calls, cheap).
_started_as_worker = os.environ.get(IN_WORKER_ENV) == "1"


def in_worker() -> bool:
    """True inside a worker thread or process of ours (a map there runs serially)."""
    return _local.depth > 0 or _process_worker or _started_as_worker


@dataclass(frozen=True)
class WorkerSetup:
    """Once-per-worker preparation, identified by ``token`` (one per executor pool).

    ``per_thread`` runs it once in each thread (thread workers); otherwise once per process,
    and only where the process is not the caller's own (a cluster whose workers live in the
    caller's process gets the per-thread set-up instead: its threads are not ours to mark).
    ``watch_parent``: the worker is a child process of the caller and exits when the caller
    dies; never set for workers someone else started (a Dask worker's parent is its nanny).
    """

    token: str
    per_thread: bool
    blas_threads: int | None = None
    initializer: Callable[..., Any] | None = None
    init_args: tuple[Any, ...] = ()
    #: pid of the process that owns the pool
    caller_pid: int = 0
    watch_parent: bool = False
    #: large arrays in results come back through files the caller maps (``result_segments``),
    #: registered with this kind of resource tracker; None: through the pool's pipe
    share_results: Tracker | None = None


@dataclass
class ChunkJob:
    """A contiguous slice of the input: items ``start .. start + len(items) - 1``."""

    fn: Callable[..., Any]
    start: int
    items: Sequence[Any]
    seeds: Sequence[Any] | None = None
    setup: WorkerSetup | None = None
    check_pickle: bool = False
    mark_worker: bool = True
    #: set once the map that sent this chunk has ended; checked before every item (thread
    #: workers only: an event does not pickle)
    stop: threading.Event | None = None


@dataclass
class ChunkOutcome:
    """What a chunk produced: all its results, or the first user error and its item index.

    ``error_index`` is None with an error when the worker initializer failed.
    """

    start: int
    results: list[Any] | None
    busy_seconds: float
    error: BaseException | None = None
    error_index: int | None = None
    remote_traceback: str | None = None
    pid: int = 0
    #: (hooks run, hooks failed) when this chunk's worker ran its fork-safety hooks
    fork_hooks: tuple[int, int] | None = None
    #: the results, pickled in the worker (see ``pack_results``); ``results`` is then None
    packed: bytes | None = None
    #: how many results ``packed`` holds
    packed_count: int = 0
    #: a failure of the machinery in the worker (results that cannot be pickled back): the
    #: chunk is lost, not failed by the user's code
    machinery_error: BaseException | None = None
    #: the files holding ``packed``'s out-of-band buffers (``result_segments``)
    result_files: tuple[tuple[str, int], ...] = ()
    #: the resource tracker the worker registered them with
    result_tracker: Tracker = "loky"

    def __setstate__(self, state: dict[str, Any]) -> None:
        # rebuilt in the caller (the pool's result thread): claim the result files now, so that
        # none outlives its outcome, whoever reads it; never raise here (loky would break the
        # pool), a file that cannot be claimed makes the chunk lost
        self.__dict__.update(state)
        self._buffers: list[Any] = []
        if self.result_files:
            from .result_segments import claim

            try:
                self._buffers = claim(list(self.result_files), self.result_tracker)
            except OSError as exc:
                from .errors import SerializationError

                self.packed = None
                self.machinery_error = SerializationError(
                    f"the results of the chunk at item {self.start} could not be read back "
                    f"from shared memory ({type(exc).__name__}: {exc})"
                )

    def take_results(self) -> list[Any] | None:
        """The chunk's results, unpickled here if the worker packed them.

        A result that pickled in the worker but cannot be rebuilt here raises a
        ``SerializationError`` whose ``item_index`` is that result's item (``unpack_results``).
        """
        if self.packed is None:
            return self.results
        buffers = getattr(self, "_buffers", None)
        return unpack_results(self.packed, self.packed_count, self.start, buffers)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a moment.

    (Un)pickling a result made of many small objects (explanations, rules, dicts) allocates
    faster than the collector's thresholds, which then scan the growing heap again and again:
    unpickling a 1.7 MB calibrated-explanations chunk took 0.15 s with the collector and 0.04 s
    without it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def pack_results(results: list[Any], files: FileBuffers | None = None) -> bytes | None:
    """Pickle a process worker's results here, the collector paused.

    The pool then sends one bytes object and the parent unpickles it with the collector paused
    too (``unpack_results``), in ce-parallel's code: a result that pickles but cannot be rebuilt
    is then a typed ``SerializationError`` naming its item, never a failure inside the pool's
    own result handling (loky marks its whole pool broken when a result does not unpickle).

    The results are dumped one after another by one pickler rather than as one list: the memo
    is shared, so objects shared between results stay shared, and the parent loads them one by
    one, so it knows which result failed. That costs about 0.3 us a result on each side, small
    against a process round trip. The standard pickler is tried first (fastest); cloudpickle
    takes what it cannot (a class defined in ``__main__`` of the caller). None when neither can.
    With ``files``, the standard pickler sends large buffers out of band through them
    (``result_segments``); ``files.files`` then lists them.
    """
    try:
        return _dump_each(pickle.Pickler, results, fast_arrays=True, files=files)
    except Exception:
        if files is not None:
            files.remove()
    try:
        import cloudpickle

        return _dump_each(cloudpickle.Pickler, results)
    except Exception:
        return None


def _dump_each(
    pickler: Any, results: list[Any], fast_arrays: bool = False, files: FileBuffers | None = None
) -> bytes:
    buffer = io.BytesIO()
    made = pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=files)
    if fast_arrays:
        # (not for cloudpickle, whose own table must stay in place)
        from .array_reduce import use_fast_arrays

        use_fast_arrays(made)
    dump = made.dump
    with gc_paused():
        for value in results:
            dump(value)
    return buffer.getvalue()


def unpack_results(
    packed: bytes, count: int, start: int, buffers: Sequence[Any] | None = None
) -> list[Any]:
    """The ``count`` results ``pack_results`` packed for the chunk starting at item ``start``;
    ``buffers`` are the ones it sent out of band, in order.

    Raises ``SerializationError`` (``item_index`` the failing result's item, ``incomplete`` the
    whole chunk, whose results are all withheld) when a result cannot be rebuilt, or when the
    bytes hold another number of results than the chunk has items.
    """
    buffer = io.BytesIO(packed)
    load = pickle.Unpickler(buffer, buffers=buffers or None).load
    results: list[Any] = []
    with gc_paused():
        for offset in range(count):
            try:
                results.append(load())
            except Exception as exc:
                raise _unreadable(exc, start, offset, count) from exc
    if buffer.tell() != len(packed):
        from .errors import SerializationError

        raise SerializationError(
            f"the worker packed more results than the {count} items of the chunk at item {start}",
            incomplete=range(start, start + count),
        )
    return results


def _unreadable(exc: Exception, start: int, offset: int, count: int) -> BaseException:
    from .errors import SerializationError

    error = SerializationError(
        f"the result of item {start + offset} was pickled by the worker but cannot be unpickled "
        f"here ({type(exc).__name__}: {exc}); a result's __reduce__ or __setstate__ must "
        "rebuild it",
        incomplete=range(start, start + count),
    )
    error.item_index = start + offset  # type: ignore[attr-defined]
    return error


def _ensure_setup(setup: WorkerSetup) -> None:
    """Run ``setup`` once in this worker (thread or process).

    The token is recorded only once the initializer has returned: an initializer that raised
    is run again before the next chunk of this worker, so ``fn`` never runs without it.
    """
    global _process_worker
    if setup.per_thread or os.getpid() == setup.caller_pid:
        done: set[str] = _local.setups or set()
        _local.setups = done
        if setup.token in done:
            return
        if setup.initializer is not None:
            setup.initializer(*setup.init_args)
        done.add(setup.token)
        return
    with _setup_lock:
        if setup.token in _done_setups:
            return
        first = setup.token not in _process_setups
        _process_setups.add(setup.token)
    if first:
        # the process-wide part runs once, whatever the initializer does
        _process_worker = True
        if setup.watch_parent:
            watch_parent(setup.caller_pid)
        _run_fork_hooks_once()
        if setup.blas_threads is not None:
            _limit_numeric_threads(setup.blas_threads)
    # one initializer run per process at a time (a Dask worker runs chunks on several threads);
    # this lock lives in the worker and is never one a map waits on
    with _init_lock:
        if setup.token in _done_setups:
            return
        if setup.initializer is not None:
            setup.initializer(*setup.init_args)
        with _setup_lock:
            _done_setups.add(setup.token)


def _run_fork_hooks_once() -> None:
    # once per process, not per pool: joblib's workers are shared by every executor
    global _hooks_done, _hook_report
    with _setup_lock:
        if _hooks_done:
            return
        _hooks_done = True
    from .forksafety import hook_failures, run_fork_hooks

    failed_before = hook_failures()
    ran = run_fork_hooks()
    failed = hook_failures() - failed_before
    if ran or failed:
        _hook_report = (ran, failed)


def _take_hook_report() -> tuple[int, int] | None:
    global _hook_report
    report, _hook_report = _hook_report, None
    return report


def watch_parent(parent_pid: int) -> None:
    """Make this process exit on its own when ``parent_pid`` (its parent) dies.

    A daemon thread polls the parent pid every ``PARENT_POLL_INTERVAL_S``: when the process has
    been re-parented (its parent was killed), it exits at once with ``PARENT_GONE_EXIT_CODE``.
    Polling rather than ``PR_SET_PDEATHSIG``: that signal fires when the *thread* that started
    the worker ends, and joblib starts workers from whichever thread submits work. Idempotent;
    0 means "the current parent". Also the loky ``initializer`` of the process strategy, so the
    watch starts with the worker, not with its first chunk.
    """
    global _watched_parent, _process_worker
    _process_worker = True
    if os.name != "posix":  # pragma: no cover - a Windows parent's death is not observable so
        return
    expected = parent_pid or os.getppid()
    with _setup_lock:
        if _watched_parent is not None:
            return
        _watched_parent = expected
    if os.getppid() != expected:
        os._exit(PARENT_GONE_EXIT_CODE)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_INTERVAL_S)
            if os.getppid() != expected:
                os._exit(PARENT_GONE_EXIT_CODE)

    threading.Thread(target=watch, name="ce-parallel-parent-watch", daemon=True).start()


def _limit_numeric_threads(threads: int) -> None:
    # The environment caps libraries loaded after this point; threadpoolctl caps those that the
    # worker already loaded (for example numpy imported while unpickling the first job).
    from .resources import numeric_thread_env

    os.environ.update(numeric_thread_env(threads))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return
    _blas_limits.append(threadpool_limits(limits=threads))


def _portable(exc: BaseException, index: int | None = None, tb: str | None = None) -> BaseException:
    """``exc`` if the caller can rebuild it from its pickle, else a ``RemoteError`` standing in.

    The round trip is tried here, in the worker: an exception that pickles but cannot be
    unpickled (an ``__init__`` with required arguments it does not keep) would otherwise fail
    in the caller as a raw ``TypeError``, with no item index.
    """
    for dumps in _dumpers():
        try:
            pickle.loads(dumps(exc))
        except Exception:
            continue
        return exc
    try:
        message = str(exc)
    except Exception:  # a __str__ that raises
        message = f"<{type(exc).__name__} whose message cannot be shown>"
    return RemoteError(
        f"{type(exc).__module__}.{type(exc).__qualname__}",
        message,
        tb if tb is not None else _format(exc),
        index,
    )


def _dumpers() -> list[Callable[[Any], bytes]]:
    dumpers: list[Callable[[Any], bytes]] = [pickle.dumps]
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - cloudpickle is a dependency
        return dumpers
    dumpers.append(cloudpickle.dumps)
    return dumpers


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def call_with_rng(fn: Callable[..., Any], item: Any, seed: Any) -> Any:
    """Call ``fn(item, rng=...)`` with a generator built from one spawned ``SeedSequence``."""
    import numpy as np

    return fn(item, rng=np.random.default_rng(seed))


def run_items(
    fn: Callable[..., Any],
    items: Sequence[Any],
    seeds: Sequence[Any] | None,
    stop: threading.Event | None = None,
) -> tuple[list[Any], int | None, BaseException | None]:
    """Run ``fn`` over ``items`` in order; stop at the first exception.

    Returns ``(results, None, None)`` or ``(partial, offset_of_failing_item, exception)``. The
    loop is a comprehension, not ``list(map(...))``: a ``StopIteration`` raised by ``fn`` must
    propagate as an error, not end the chunk as if its items had run out. The failing item's
    offset is read back from the iterator's remaining length.

    ``stop`` (thread workers only) is checked before every item: once the map that sent the
    chunk has ended (an error, a timeout, ``cancel()``, Ctrl-C), the worker takes no new item
    and returns ``MapCancelledError`` at the offset of the first item it did not run.
    """
    if stop is not None:
        return _run_items_stoppable(fn, items, seeds, stop)
    it = iter(items)
    try:
        if seeds is None:
            return [fn(item) for item in it], None, None
        paired = zip(it, seeds, strict=True)
        return [call_with_rng(fn, item, seed) for item, seed in paired], None, None
    except Exception as exc:
        return [], len(items) - length_hint(it) - 1, exc


def _run_items_stoppable(
    fn: Callable[..., Any],
    items: Sequence[Any],
    seeds: Sequence[Any] | None,
    stop: threading.Event,
) -> tuple[list[Any], int | None, BaseException | None]:
    out: list[Any] = []
    for offset, item in enumerate(items):
        if stop.is_set():
            from .errors import MapCancelledError

            return out, offset, MapCancelledError("the map that sent this chunk has ended")
        try:
            out.append(fn(item) if seeds is None else call_with_rng(fn, item, seeds[offset]))
        except Exception as exc:
            return [], offset, exc
    return out, None, None


def _unpicklable_result(results: list[Any]) -> BaseException | None:
    """A ``SerializationError`` naming the first result the pool's pickler cannot send back."""
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - cloudpickle is a dependency
        return None
    for offset, value in enumerate(results):
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            from .errors import SerializationError

            error = SerializationError(
                f"the result of item {offset} of the chunk cannot be pickled back to the "
                f"caller: {type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
            return error
    return None


def _result_files(job: ChunkJob) -> FileBuffers | None:
    """Where a process worker sends its results' large buffers, if anywhere."""
    setup = job.setup
    if not job.check_pickle or setup is None or not setup.share_results:
        return None
    if os.getpid() == setup.caller_pid:  # a thread of the caller: the outcome is not pickled
        return None
    if "numpy" not in sys.modules:  # no array can be in the results
        return None
    from .result_segments import FileBuffers, pool_prefix

    return FileBuffers(pool_prefix(setup.caller_pid, setup.token), setup.share_results)


def run_chunk(job: ChunkJob) -> ChunkOutcome:
    """Run one chunk in a worker. User exceptions come back as data, never as a raise."""
    started = time.perf_counter()
    depth = _local.depth
    if job.mark_worker:
        _local.depth = depth + 1
    try:
        if job.setup is not None:
            try:
                _ensure_setup(job.setup)
            except Exception as init_error:
                init_tb = _format(init_error)
                error = _portable(init_error, None, init_tb) if job.check_pickle else init_error
                return ChunkOutcome(job.start, None, 0.0, error, None, init_tb, os.getpid())
        results, offset, exc = run_items(job.fn, job.items, job.seeds, job.stop)
    finally:
        _local.depth = depth
    busy = time.perf_counter() - started
    hooks = _take_hook_report() if _hook_report is not None else None
    if exc is None:
        files = _result_files(job)
        packed = pack_results(results, files) if job.check_pickle else None
        if job.check_pickle and packed is None:
            unsendable = _unpicklable_result(results)
            if unsendable is not None:
                return ChunkOutcome(
                    job.start,
                    None,
                    busy,
                    pid=os.getpid(),
                    fork_hooks=hooks,
                    machinery_error=unsendable,
                )
        return ChunkOutcome(
            job.start,
            None if packed is not None else results,
            busy,
            pid=os.getpid(),
            fork_hooks=hooks,
            packed=packed,
            packed_count=len(results),
            result_files=() if files is None else tuple(files.files),
            result_tracker="loky" if files is None else files.kind,
        )
    assert offset is not None
    remote_tb = _format(exc) if job.check_pickle else None
    error = _portable(exc, job.start + offset, remote_tb) if job.check_pickle else exc
    return ChunkOutcome(
        job.start, None, busy, error, job.start + offset, remote_tb, os.getpid(), hooks
    )


__all__ = [
    "ChunkJob",
    "ChunkOutcome",
    "RemoteError",
    "WorkerSetup",
    "in_worker",
    "run_chunk",
    "watch_parent",
]
