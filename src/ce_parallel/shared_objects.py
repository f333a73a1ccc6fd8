"""Objects that many tasks share reach each process worker once per pool, not once per chunk.

calibrated-explanations puts its explainer (model and calibration data) into every task; a
``functools.partial`` binds a fitted model into ``fn``. Pickled with each chunk, such an object
is pickled in the parent, piped and unpickled in a worker once per chunk. Here:

Parent side: ``find_shared(fn, items)`` names the candidates: objects bound into ``fn`` (a
partial's arguments, a bound method's object, a closure's cells, a callable object itself) and
objects met by identity in two or more items (looked for inside tuples, lists and dicts, three
levels deep). Containers, NumPy arrays (``shared_arrays`` places those) and small atoms are never
candidates, nor is an object holding a large array (its arrays go through the map's read-only
segments instead). ``ObjectStore`` (one per process executor) pickles each candidate once per
map, keys it by the BLAKE2 digest of those bytes and keeps the bytes in a file under
``/dev/shm`` for the pool's life; the map's chunks carry only ``(digest, file name)``
references, through the pickler's ``persistent_id``. Keyed by content, never by identity: an
object changed between two maps pickles to other bytes, so the workers get the new one.

Worker side: ``load_object`` unpickles a referenced object once per worker and keeps it in a
small cache keyed by digest, dropped with the worker (with the pool) or once its file is gone.
As in the serial loop, where every item sees the one object, later items on that worker see
what an item changed in it.

Files follow the segments' rules (``shared_arrays``): registered with loky's resource tracker
before they exist, removed on shutdown, and at most ``STORE_MAX_FILES`` files and
``STORE_MAX_BYTES`` bytes are kept; the oldest not used by a running map goes first.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

from . import heuristics
from .shared_arrays import (
    SEGMENT_PREFIX,
    SHM_DIR,
    _array_reducers,
    _HoldsLargeArray,
    _referencing,
    _remove,
    _write_all,
    files_named,
    new_file,
    worth_segment,
)

#: Every object file's name starts with this, then the creating process's id.
OBJECT_PREFIX = SEGMENT_PREFIX + "obj-"

#: Most object files one executor keeps.
STORE_MAX_FILES = 16
#: Most bytes of object files one executor keeps.
STORE_MAX_BYTES = 512 * 1024 * 1024
#: Most shared objects one worker keeps unpickled.
WORKER_CACHE_SIZE = 8
#: Most items of a map (and elements of a container) looked at for shared objects.
SCAN_ITEMS = 32
#: How deep ``find_shared`` looks into an item's tuples, lists and dicts.
SCAN_DEPTH = 3
#: Most candidates a map shares.
MAX_SHARED = 8
#: Tag of a reference in a pickle stream.
REFERENCE_TAG = "ce-parallel-object"

# (tag, digest, file name)
Reference = tuple[str, str, str]

_ATOMS = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    range,
    slice,
)
_CONTAINERS = (tuple, list, dict, set, frozenset)


def _candidate(value: Any) -> bool:
    if isinstance(value, (_ATOMS, _CONTAINERS)):
        return False
    module = type(value).__module__
    # arrays go through shared_arrays' segments; numpy scalars are small
    return not (module == "numpy" or module.startswith("numpy."))


def bound_objects(fn: Callable[..., Any]) -> list[Any]:
    """The candidates bound into ``fn``: what pickling ``fn`` drags along."""
    found: list[Any] = []
    seen: set[int] = set()

    def add(value: Any) -> None:
        if _candidate(value) and id(value) not in seen:
            seen.add(id(value))
            found.append(value)

    target: Any = fn
    for _ in range(SCAN_DEPTH):
        if isinstance(target, types.MethodType):
            add(target.__self__)
            break
        if hasattr(target, "func") and hasattr(target, "args") and hasattr(target, "keywords"):
            # functools.partial (and look-alikes): its arguments, then what it wraps
            for value in (*target.args, *target.keywords.values()):
                add(value)
            target = target.func
            continue
        if isinstance(target, types.FunctionType):
            for cell in target.__closure__ or ():
                with contextlib.suppress(ValueError):  # an empty cell
                    add(cell.cell_contents)
            break
        add(target)  # a callable object: the object is what travels
        break
    return found


def find_shared(fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
    """Objects worth sending once: bound into ``fn``, or met in two or more items."""
    found = bound_objects(fn)
    seen = {id(v) for v in found}
    counts: dict[int, int] = {}
    first: dict[int, Any] = {}
    for item in items[:SCAN_ITEMS]:
        met: set[int] = set()
        for value in _walk(item, SCAN_DEPTH):
            key = id(value)
            if key in met:
                continue
            met.add(key)
            counts[key] = counts.get(key, 0) + 1
            first.setdefault(key, value)
    for key, count in counts.items():
        if count >= 2 and key not in seen:
            seen.add(key)
            found.append(first[key])
    return found[:MAX_SHARED]


def first_items(jobs: Iterable[Any]) -> list[Any]:
    """The first ``SCAN_ITEMS`` items of a map's chunk jobs, where ``find_shared`` looks."""
    return list(islice(chain.from_iterable(job.items for job in jobs), SCAN_ITEMS))


def _walk(value: Any, depth: int) -> Iterable[Any]:
    if _candidate(value):
        yield value
        return
    if depth <= 0:
        return
    if isinstance(value, dict):
        children: Iterable[Any] = list(islice(value.values(), SCAN_ITEMS))
    elif isinstance(value, (tuple, list)):
        children = value[:SCAN_ITEMS]
    else:
        return
    for child in children:
        yield from _walk(child, depth - 1)


def pickled_if_worth_sharing(obj: Any, dumps: Callable[[Any], bytes]) -> bytes | None:
    """``dumps(obj)``, or None when it fails (the chunk's own pickling then reports it, as it
    would have without sharing) or is below ``SHARED_OBJECT_MIN_BYTES``."""
    try:
        blob = dumps(obj)
    except Exception:
        return None
    return blob if len(blob) >= heuristics.SHARED_OBJECT_MIN_BYTES else None


@dataclass
class _Entry:
    name: str
    nbytes: int
    users: int = 0


class ObjectStore:
    """The object files of one executor's pool: placed once per content, kept until shutdown.

    Thread-safe; maps running at once share it. ``share`` pins the files a map uses until the
    map calls ``done``, so a file is never removed while a chunk that names it may still run.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._closed = False

    def share(
        self,
        objects: Iterable[Any],
        dumps: Callable[[Any], bytes],
        on_placed: Callable[[str], None] | None = None,
    ) -> dict[int, Reference]:
        """Place the objects worth it; ``id(object) -> reference`` for each one placed.

        ``dumps`` pickles an object as a chunk would (large arrays inline: a file outlives the
        map whose segments an array would otherwise name). An object that fails to pickle, or
        is below ``SHARED_OBJECT_MIN_BYTES``, is left to the chunks' own pickling. ``on_placed``
        is called with the digest of each object this call places first (no worker of the
        pool has it), under the store's lock: a map that meets the same object afterwards
        sees whatever the callback recorded (a warm-up under way).
        """
        refs: dict[int, Reference] = {}
        for obj in objects:
            blob = pickled_if_worth_sharing(obj, dumps)
            if blob is None:
                continue
            digest = hashlib.blake2b(blob, digest_size=16).hexdigest()
            name = self._pin(digest, blob, on_placed)
            if name is not None:
                refs[id(obj)] = (REFERENCE_TAG, digest, name)
        return refs

    def _pin(
        self, digest: str, blob: bytes, on_placed: Callable[[str], None] | None = None
    ) -> str | None:
        with self._lock:
            if self._closed:
                return None
            entry = self._entries.get(digest)
            if entry is not None:
                entry.users += 1
                self._entries.move_to_end(digest)
                return entry.name
        name = _write(blob)
        if name is None:
            return None
        with self._lock:
            if self._closed:
                _remove(os.path.join(SHM_DIR, name))
                return None
            known = self._entries.get(digest)
            if known is not None:  # another map placed the same bytes meanwhile
                known.users += 1
                duplicate = name
                name = known.name
            else:
                duplicate = None
                self._entries[digest] = _Entry(name, len(blob), users=1)
                self._bytes += len(blob)
                if on_placed is not None:
                    on_placed(digest)
            evicted = self._evict()
        for path in evicted + ([duplicate] if duplicate else []):
            _remove(os.path.join(SHM_DIR, path))
        return name

    def _evict(self) -> list[str]:
        evicted: list[str] = []
        for digest in list(self._entries):
            if len(self._entries) <= STORE_MAX_FILES and self._bytes <= STORE_MAX_BYTES:
                break
            entry = self._entries[digest]
            if entry.users == 0:
                del self._entries[digest]
                self._bytes -= entry.nbytes
                evicted.append(entry.name)
        return evicted

    def pin(self, refs: Iterable[Reference]) -> None:
        """Pin placed references once more (each pin is undone by one ``done``)."""
        with self._lock:
            for _, digest, _ in refs:
                entry = self._entries.get(digest)
                if entry is not None:
                    entry.users += 1

    def done(self, refs: Iterable[Reference]) -> None:
        """A map that pinned these references has ended and its chunks are done."""
        with self._lock:
            for _, digest, _ in refs:
                entry = self._entries.get(digest)
                if entry is not None and entry.users > 0:
                    entry.users -= 1
            evicted = self._evict()
        for name in evicted:
            _remove(os.path.join(SHM_DIR, name))

    @property
    def files(self) -> int:
        """How many object files are placed."""
        with self._lock:
            return len(self._entries)

    def release(self) -> None:
        """Remove every file (shutdown); later maps pickle their objects into the chunks."""
        with self._lock:
            self._closed = True
            names = [entry.name for entry in self._entries.values()]
            self._entries.clear()
            self._bytes = 0
        for name in names:
            _remove(os.path.join(SHM_DIR, name))


def dump_object(obj: Any) -> bytes:
    """``obj`` pickled for the store with loky's pickler, its small arrays inline.

    Raises when it holds an array that ``worth_segment``: such arrays travel through a map's
    segments (or joblib's memory-maps), which a file kept for the pool's life cannot name.
    """
    from loky.backend.reduction import get_loky_pickler

    def inline(array: Any) -> Any:
        if worth_segment(array):
            raise _HoldsLargeArray
        return array.__reduce_ex__(pickle.HIGHEST_PROTOCOL)

    buffer = io.BytesIO()
    pickler = get_loky_pickler()(
        buffer, reducers=_array_reducers(inline), protocol=pickle.HIGHEST_PROTOCOL
    )
    pickler.dump(obj)
    return buffer.getvalue()


def release_when_done(
    store: ObjectStore, refs: Sequence[Reference], futures: Sequence[Any]
) -> None:
    """Unpin ``refs`` in ``store`` once every one of ``futures`` is done."""
    if not refs:
        return
    lock = threading.Lock()
    left = [len(futures)]

    def one_done(_: Any) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            store.done(refs)

    if not futures:
        store.done(refs)
    for fut in futures:
        fut.add_done_callback(one_done)


def dumps_referencing(
    obj: Any, refs: dict[int, Reference], out_of_band: bool = True
) -> tuple[bytes, list[Any]]:
    """``obj`` pickled with cloudpickle, shared objects by reference, large arrays out of band.

    For a pool whose own pickler must still see the large arrays (joblib memory-maps them): the
    buffers of arrays that ``worth_segment`` come back beside the bytes as flat ``uint8``
    arrays, for that pickler to send as it sends any array; ``shared_arrays.run_shared_chunk``
    takes both. With ``out_of_band=False`` every array is inside the bytes. Small arrays are
    pickled with ``array_reduce.reduce_array``.
    """
    buffers: list[Any] = []
    numpy = sys.modules.get("numpy")

    def keep_large(view: pickle.PickleBuffer) -> bool:
        raw = view.raw()
        if numpy is None or raw.nbytes < heuristics.SHARED_ARRAY_MIN_BYTES:
            return True  # in band
        buffers.append(numpy.frombuffer(raw, dtype=numpy.uint8))
        return False

    stream = io.BytesIO()
    pickler = _referencing(_fast_array_cloudpickler())(
        stream,
        protocol=pickle.HIGHEST_PROTOCOL,
        buffer_callback=keep_large if out_of_band else None,
    )
    pickler.refs = refs
    pickler.dump(obj)
    return stream.getvalue(), buffers


_cloudpickler: type | None = None


def _fast_array_cloudpickler() -> type:
    global _cloudpickler
    if _cloudpickler is None:
        import cloudpickle

        from .array_reduce import reduce_array

        class FastArrayPickler(cloudpickle.Pickler):
            def reducer_override(self, obj: Any) -> Any:
                numpy = sys.modules.get("numpy")
                if numpy is not None and type(obj) is numpy.ndarray and not obj.dtype.hasobject:
                    return reduce_array(obj)
                return super().reducer_override(obj)

        _cloudpickler = FastArrayPickler
    return _cloudpickler


def touch(*objects: Any) -> None:
    """The warm-up task's function: its arguments, shared objects, are loaded on unpickling."""


def object_files(pid: int | None = None) -> list[str]:
    """Paths of the object files created by process ``pid`` (any process when None)."""
    return files_named(OBJECT_PREFIX, pid)


def _write(blob: bytes) -> str | None:
    created = new_file(OBJECT_PREFIX, len(blob))
    if created is None:
        return None
    fd, name = created
    try:
        try:
            _write_all(fd, memoryview(blob))
        finally:
            os.close(fd)
    except OSError:
        _remove(os.path.join(SHM_DIR, name))
        return None
    return name


# -- worker side --------------------------------------------------------------------------

_cache: OrderedDict[str, tuple[str | None, Any]] = OrderedDict()
_cache_lock = threading.Lock()
_loads = 0


def load_object(reference: Reference) -> Any:
    """The object a reference names, unpickled once per worker (``persistent_load``)."""
    tag, digest, name = reference
    if tag != REFERENCE_TAG:
        raise pickle.UnpicklingError(f"unknown persistent reference {reference!r}")

    def read() -> bytes:
        with open(os.path.join(SHM_DIR, name), "rb") as file:
            return file.read()

    obj = cached_object(digest, read, name)
    from .shared_arrays import _start_janitor

    _start_janitor()
    return obj


def cached_object(digest: str, read: Callable[[], bytes], name: str | None = None) -> Any:
    """The object pickled as ``read()``'s bytes, unpickled once per process while cached.

    ``name``: the file the bytes came from; the entry is dropped once that file is gone
    (``drop_released_objects``). Without one it stays until newer objects push it out.
    """
    global _loads
    with _cache_lock:
        hit = _cache.get(digest)
        if hit is not None:
            _cache.move_to_end(digest)
            return hit[1]
    blob = read()
    from .worker import gc_paused

    with gc_paused():
        obj = pickle.loads(blob)
    with _cache_lock:
        _loads += 1
        obj = _cache.setdefault(digest, (name, obj))[1]
        while len(_cache) > WORKER_CACHE_SIZE:
            _cache.popitem(last=False)
    return obj


def worker_loads() -> int:
    """How many shared objects this process has unpickled (a worker's count, for tests)."""
    return _loads


def forget_objects(digests: Iterable[str]) -> int:
    """Drop these shared objects from this process's cache; how many are still cached."""
    with _cache_lock:
        for digest in digests:
            _cache.pop(digest, None)
        return len(_cache)


def cached_digests() -> list[str]:
    """Digests of the shared objects this process keeps unpickled (tests)."""
    with _cache_lock:
        return list(_cache)


def drop_released_objects() -> int:
    """Forget cached objects whose file is gone; returns how many are still cached."""
    with _cache_lock:
        named = [(digest, name) for digest, (name, _) in _cache.items()]
    gone = [d for d, n in named if n is not None and not os.path.exists(os.path.join(SHM_DIR, n))]
    with _cache_lock:
        for digest in gone:
            _cache.pop(digest, None)
        return len(_cache)


class _Loader(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        return load_object(pid)


class _MappingLoader(pickle.Unpickler):
    objects: Mapping[str, bytes] = {}

    def persistent_load(self, pid: Any) -> Any:
        tag, digest, _ = pid
        if tag != REFERENCE_TAG or digest not in self.objects:
            raise pickle.UnpicklingError(f"unknown persistent reference {pid!r}")
        return cached_object(digest, lambda: self.objects[digest])


def loads_with(payload: bytes, objects: Mapping[str, bytes]) -> Any:
    """Unpickle ``payload`` whose references name pickles in ``objects`` (by digest); each is
    unpickled once per process while cached (``cached_object``)."""
    loader = _MappingLoader(io.BytesIO(payload))
    loader.objects = objects
    return loader.load()


def loads(payload: bytes, buffers: Sequence[Any] = ()) -> Any:
    """Unpickle a chunk whose shared objects travel as references (and large arrays, when
    ``dumps_referencing`` packed it, as ``buffers``)."""
    return _Loader(io.BytesIO(payload), buffers=buffers).load()


__all__ = [
    "ObjectStore",
    "Reference",
    "bound_objects",
    "cached_digests",
    "cached_object",
    "drop_released_objects",
    "dump_object",
    "dumps_referencing",
    "find_shared",
    "first_items",
    "forget_objects",
    "load_object",
    "loads",
    "loads_with",
    "object_files",
    "pickled_if_worth_sharing",
    "release_when_done",
    "touch",
    "worker_loads",
]
