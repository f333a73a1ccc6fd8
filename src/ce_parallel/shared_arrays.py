"""Large NumPy arrays reach process workers through shared memory, not one pickled copy a task.

Parent side: ``MapSegments`` belongs to one map of a process executor. It pickles that map's
chunks with loky's own pickler and a reducer for ``numpy.ndarray``: an array of at least
``heuristics.SHARED_ARRAY_MIN_BYTES`` is written once (per map, by identity) into a file under
``/dev/shm`` and the chunk carries only a handle (name, shape, dtype, order). Whether the array
is an item, sits inside a tuple, list or dict, or is bound into ``fn`` (a ``functools.partial``,
a bound method's object, a closure cell) makes no difference: the reducer is called wherever
the pickler meets the array.

Why the chunks are pickled here rather than through loky's ``job_reducers``: loky pickles a
task later, in its queue feeder thread, so a reducer there cannot know which map the array
belongs to, and a task whose unpickling fails in a worker (a segment already released after an
error) kills that worker and breaks the pool for the next map. Pickled here, in the map's own
thread, every segment is known to its map, and the worker unpickles inside ``run_shared_chunk``
where a failure is one lost chunk.

A segment is per map, never reused across maps: an array changed in place between two maps is
sent again. The map's segments are released once the map has ended and every chunk it
submitted is done (a chunk it dropped after an error may still be running), and at the latest
by the executor's ``shutdown()``. Each file is registered with the loky package's resource
tracker (the one the pool's workers share), which removes it if this process dies first; the
workers only open and map the files, so the tracker has exactly one owner to hear from.

Worker side: ``attach`` maps a segment read-only, once per segment per worker, and keeps it in
a small cache; a daemon thread drops entries whose file is gone (the map ended), so an idle
worker does not keep a released segment's memory. numpy is imported only when an array is met.
"""

from __future__ import annotations

import contextlib
import functools
import io
import mmap
import os
import pickle
import secrets
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from . import heuristics

#: Where segments live: a RAM-backed file system that workers open by name.
SHM_DIR = "/dev/shm"
#: Every segment's file name starts with this, then the creating process's id.
SEGMENT_PREFIX = "ce-parallel-"
#: Most segments a worker keeps mapped; older ones are dropped first (a view still in use
#: keeps its mapping alive, so dropping is always safe).
WORKER_CACHE_SIZE = 32
#: How often (seconds) a worker's janitor drops cached segments whose file is gone.
JANITOR_INTERVAL_S = 0.5
#: Free space to leave on the shared-memory file system when placing a segment.
SHM_RESERVE_BYTES = 64 * 1024 * 1024

# (name, shape, dtype, order, nbytes)
Handle = tuple[str, tuple[int, ...], Any, str, int]


def sharing_possible() -> bool:
    """True when arrays and objects may be shared: ``SHM_DIR`` exists (a POSIX system).

    Arrays are looked for only once numpy is imported (an array can only be met then), so
    ``import ce_parallel`` never imports it.
    """
    return os.name == "posix" and os.path.isdir(SHM_DIR)


def _array_reducers(reduce: Callable[[Any], Any]) -> dict[type, Callable[[Any], Any]]:
    numpy = sys.modules.get("numpy")
    # a memmap is a subclass, which a pickler's table does not match by its base class
    return {} if numpy is None else {numpy.ndarray: reduce, numpy.memmap: reduce}


def segment_files(pid: int | None = None) -> list[str]:
    """Paths of the segments created by process ``pid`` (any process when None) that exist."""
    return files_named(SEGMENT_PREFIX, pid)


def files_named(prefix: str, pid: int | None) -> list[str]:
    """Paths under ``SHM_DIR`` of files ``prefix`` + ``pid`` names (any pid when None)."""
    start = prefix + ("" if pid is None else f"{pid}-")
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(os.path.join(SHM_DIR, n) for n in names if n.startswith(start))


def _tracker() -> Any:
    # the loky package's tracker, not multiprocessing's: the pool's workers already share it,
    # and it cleans up plain files (multiprocessing's would start one more helper process)
    from loky.backend import resource_tracker

    return resource_tracker


class MapSegments:
    """The shared-memory segments of one map, and the pickling that creates them.

    Thread-safe: chunks are pickled in the map's thread, futures finish in the pool's thread.
    ``on_release`` is called once, after every segment has been removed.
    """

    def __init__(self, on_release: Callable[[MapSegments], None] | None = None) -> None:
        self._lock = threading.Lock()
        # id(array) -> (array, handle); the array is kept so that its id is not reused
        self._by_id: dict[int, tuple[Any, Handle]] = {}
        self._paths: list[str] = []
        self._futures: list[Future[Any]] = []
        self._finished = 0
        self._ended = False
        self._released = False
        self._on_release = on_release
        # shared objects (``shared_objects``): id -> reference, the objects kept alive
        self._store: Any = None
        self._refs: dict[int, tuple[str, str, str]] = {}
        self._shared: list[Any] = []
        self._fresh: list[Any] = []
        self._objects_prepared = False
        # arrays sent by the name of the file they live in (``file_arrays``)
        self._kept: list[Any] = []

    @property
    def count(self) -> int:
        """How many segments this map has placed."""
        return len(self._paths)

    def share_objects(
        self,
        store: Any,
        fn: Callable[..., Any],
        items: list[Any],
        on_placed: Callable[[], None] | None = None,
    ) -> None:
        """Send the objects ``fn`` and ``items`` share through ``store`` (once per map).

        ``store`` is the executor's ``shared_objects.ObjectStore``; the references it hands
        out are pinned until this map is released. ``on_placed`` is called (under the store's
        lock) when this map is the first to place one of them.
        """
        from .shared_objects import dump_object, find_shared

        with self._lock:
            if self._objects_prepared or self._released:
                return
            self._objects_prepared = True
        candidates = find_shared(fn, items)
        if not candidates:
            return
        fresh: set[str] = set()

        def placed(digest: str) -> None:
            fresh.add(digest)
            if on_placed is not None:
                on_placed()

        refs = store.share(candidates, dump_object, placed)
        with self._lock:
            if self._released:
                store.done(refs.values())
                return
            self._store, self._refs = store, refs
            self._shared = [obj for obj in candidates if id(obj) in refs]
            self._fresh = [obj for obj in self._shared if refs[id(obj)][1] in fresh]

    def warm_up_job(self, setup: Any) -> Any:
        """A chunk of no items whose unpickling loads the objects this map placed first in the
        pool's store (no worker has them yet), or None when there are none."""
        from .shared_objects import touch
        from .worker import ChunkJob

        with self._lock:
            fresh = list(self._fresh)
        if not fresh:
            return None
        return ChunkJob(fn=functools.partial(touch, *fresh), start=0, items=[], setup=setup)

    @property
    def shared_objects(self) -> int:
        """How many objects this map sends by reference."""
        return len(self._refs)

    def dumps(self, obj: Any) -> bytes:
        """``obj`` pickled as loky would pickle it, large arrays replaced by segment handles
        and shared objects by references."""
        from loky.backend.reduction import get_loky_pickler

        buffer = io.BytesIO()
        base = get_loky_pickler()
        reducers = _array_reducers(self._reduce)
        refs = self._refs
        if refs:
            pickler = _referencing(base)(
                buffer, reducers=reducers, protocol=pickle.HIGHEST_PROTOCOL
            )
            pickler.refs = refs
        else:
            pickler = base(buffer, reducers=reducers, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.dump(obj)
        return buffer.getvalue()

    def _reduce(self, array: Any) -> Any:
        if array.base is not None:
            from .file_arrays import attach_file, file_handle

            # already in a file (whatever its size: a shared array is always seen read-only):
            # sent by name, the file kept while a chunk may open it
            found = file_handle(array)
            if found is not None:
                named, root = found
                with self._lock:
                    self._kept.append(root)
                return attach_file, (named,)
        handle = self._share(array)
        if handle is None:
            from .array_reduce import reduce_array

            return reduce_array(array)
        return attach, (handle,)

    def _share(self, array: Any) -> Handle | None:
        if not worth_segment(array):
            return None
        with self._lock:
            known = self._by_id.get(id(array))
            if known is not None:
                return known[1]
            if self._released:
                return None
        handle = _place(array)
        if handle is None:
            return None
        with self._lock:
            if self._released:
                # released meanwhile (shutdown): this segment is ours alone to remove
                _remove(os.path.join(SHM_DIR, handle[0]))
                return None
            self._by_id[id(array)] = (array, handle)
            self._paths.append(os.path.join(SHM_DIR, handle[0]))
        return handle

    def watch(self, futures: list[Future[Any]]) -> None:
        """The segments outlive these futures: a chunk may still be running after its map."""
        with self._lock:
            if not self._paths and not self._refs and not self._kept:
                return  # nothing placed: nothing to keep for these chunks
            self._futures.extend(futures)
        for fut in futures:
            fut.add_done_callback(self._one_done)

    def _one_done(self, _: Future[Any]) -> None:
        with self._lock:
            self._finished += 1
            due = self._ended and self._finished >= len(self._futures)
        if due:
            self.release()

    def end(self) -> None:
        """The map has ended: release now, or once its last submitted chunk is done."""
        with self._lock:
            self._ended = True
            futures = list(self._futures)
        # done() is set before the pool's thread runs the callbacks: a map that has seen every
        # result releases at once, not when the last callback gets round to it
        if all(fut.done() for fut in futures):
            self.release()

    def release(self) -> None:
        """Remove every segment now (idempotent); later pickling sends arrays by copy."""
        with self._lock:
            if self._released:
                return
            self._released = True
            paths, self._paths = self._paths, []
            self._by_id.clear()
            store, refs = self._store, list(self._refs.values())
            self._store, self._shared, self._fresh = None, [], []
            self._kept = []
        for path in paths:
            _remove(path)
        if store is not None:
            store.done(refs)
        if self._on_release is not None:
            self._on_release(self)


def worth_segment(array: Any) -> bool:
    """Whether ``array`` travels through a shared segment rather than inside a pickle."""
    # small, or holds pointers that mean nothing in another process: pickled
    return array.nbytes >= heuristics.SHARED_ARRAY_MIN_BYTES and not array.dtype.hasobject


class _HoldsLargeArray(Exception):
    """An object is not shared whole: it holds an array that travels through a segment."""


_referencing_classes: dict[type, type] = {}


def _referencing(base: type) -> Any:
    """``base`` (loky's pickler class) with a ``persistent_id`` that sends shared objects by
    reference; made once per base class."""
    made = _referencing_classes.get(base)
    if made is None:

        class ReferencingPickler(base):
            refs: dict[int, Any] = {}

            def persistent_id(self, obj: Any) -> Any:
                return self.refs.get(id(obj))

        made = _referencing_classes.setdefault(base, ReferencingPickler)
    return made


def _place(array: Any) -> Handle | None:
    """Write ``array`` into a new segment; None when the file system has no room for it."""
    import numpy as np

    nbytes = int(array.nbytes)
    order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
    created = new_file(SEGMENT_PREFIX, nbytes)
    if created is None:
        return None
    fd, name = created
    path = os.path.join(SHM_DIR, name)
    try:
        try:
            if array.flags.c_contiguous or array.flags.f_contiguous:
                # a full file system fails pwrite with ENOSPC; one copy, no page faults here
                _write_all(fd, memoryview(array.reshape(-1, order="A").view(np.uint8)))
            else:
                # reserve the pages first: a full tmpfs then fails here, not with SIGBUS later
                os.posix_fallocate(fd, 0, nbytes)
                with mmap.mmap(fd, nbytes) as mapped:
                    target = np.ndarray(array.shape, array.dtype, buffer=mapped, order=order)  # type: ignore[arg-type]
                    np.copyto(target, array)
                    del target
        finally:
            os.close(fd)
    except (OSError, ValueError, TypeError, BufferError):
        _remove(path)
        return None
    return name, tuple(array.shape), array.dtype, order, nbytes


def new_file(prefix: str, nbytes: int, tracker: Any = None) -> tuple[int, str] | None:
    """A new file under ``SHM_DIR`` for ``nbytes``, open for writing: ``(fd, name)``.

    None when the file system lacks room (``SHM_RESERVE_BYTES`` kept free) or refuses. The file
    is registered with ``tracker`` (a resource tracker module; default the loky package's).
    """
    try:
        stats = os.statvfs(SHM_DIR)
    except OSError:
        return None
    if stats.f_bavail * stats.f_frsize < nbytes + SHM_RESERVE_BYTES:
        return None
    name = f"{prefix}{os.getpid()}-{secrets.token_hex(8)}"
    path = os.path.join(SHM_DIR, name)
    tracker = tracker or _tracker()
    # registered before the file exists: a parent killed in between leaves the tracker a name
    # to remove, never a file nobody will remove
    tracker.register(path, "file")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        tracker.unregister(path, "file")
        return None
    return fd, name


def _write_all(fd: int, data: memoryview) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], done)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    _tracker().unregister(path, "file")


# -- worker side --------------------------------------------------------------------------

_cache: dict[str, Any] = {}
_cache_lock = threading.Lock()
_janitor: threading.Thread | None = None


def attach(handle: Handle) -> Any:
    """The read-only ndarray a handle names, mapped once per segment in this process.

    Called by the unpickler in a worker. Raises ``FileNotFoundError`` when the segment has been
    released (its map ended), which ``run_shared_chunk`` reports as a lost chunk.
    """
    name, shape, dtype, order, nbytes = handle
    with _cache_lock:
        cached = _cache.get(name)
    if cached is not None:
        return cached
    import numpy as np

    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY)
    try:
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapped = mmap.mmap(fd, nbytes, flags=flags, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    # a view of a read-only mapping: writeable is False and cannot be set True
    array = np.frombuffer(mapped, dtype=dtype).reshape(shape, order=order)  # type: ignore[call-overload]
    with _cache_lock:
        array = _cache.setdefault(name, array)
        while len(_cache) > WORKER_CACHE_SIZE:
            del _cache[next(iter(_cache))]
    _start_janitor()
    return array


def _start_janitor() -> None:
    global _janitor
    with _cache_lock:
        if _janitor is not None:
            return
        _janitor = threading.Thread(target=_sweep_forever, name="ce-parallel-shm", daemon=True)
    _janitor.start()


def _sweep_forever() -> None:
    import time

    from .file_arrays import drop_gone_files
    from .shared_objects import drop_released_objects

    while True:
        time.sleep(JANITOR_INTERVAL_S)
        drop_released_segments()
        drop_released_objects()
        drop_gone_files()


def drop_released_segments() -> int:
    """Forget cached segments whose file is gone; returns how many are still cached."""
    with _cache_lock:
        names = list(_cache)
    gone = [n for n in names if not os.path.exists(os.path.join(SHM_DIR, n))]
    with _cache_lock:
        for name in gone:
            _cache.pop(name, None)
        return len(_cache)


def run_shared_chunk(start: int, payload: bytes, buffers: Sequence[Any] = ()) -> Any:
    """Unpickle a chunk that ``MapSegments.dumps`` (or ``shared_objects.dumps_referencing``,
    with its out-of-band ``buffers``) packed, then run it as ``run_chunk`` does.

    A chunk that cannot be unpickled here (a released segment, an item whose ``__setstate__``
    fails) is reported as lost by the machinery, never raised: loky would otherwise treat the
    task as undeliverable and break the whole pool.
    """
    from .shared_objects import loads
    from .worker import ChunkOutcome, run_chunk

    try:
        job = loads(payload, buffers)
    except Exception as exc:
        from .errors import SerializationError

        error = SerializationError(
            f"the chunk at item {start} could not be unpickled in the worker "
            f"({type(exc).__name__}: {exc})"
        )
        return ChunkOutcome(start, None, 0.0, pid=os.getpid(), machinery_error=error)
    return run_chunk(job)


__all__ = [
    "MapSegments",
    "attach",
    "drop_released_segments",
    "run_shared_chunk",
    "segment_files",
    "sharing_possible",
]
