"""What the dask strategy scatters: pickles every worker keeps for the executor's life.

A Dask worker may be on another node, so the ``/dev/shm`` files of ``shared_objects`` cannot
reach it; ``client.scatter(..., broadcast=True)`` can. The objects the chunks share (bound into
``fn`` or met in two or more items, as ``shared_objects.find_shared`` names them) and a large
pickled function are scattered once per content, keyed by the BLAKE2 digest of their pickle,
and the futures are kept across maps: a later map with the same content sends nothing again,
an object changed in place pickles to other bytes and is scattered anew. Each task gets the
futures of its map (resolved by Dask to the bytes already on its worker) and the worker
unpickles each object once (``shared_objects.cached_object``).

At most ``STORE_MAX_FILES`` pickles and ``STORE_MAX_BYTES`` bytes are kept; the oldest go
first. Dropping a future never takes data from a task that still needs it: Dask keeps a task's
inputs until it has run.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from ..shared_objects import (
    REFERENCE_TAG,
    STORE_MAX_BYTES,
    STORE_MAX_FILES,
    Reference,
    dumps_referencing,
    pickled_if_worth_sharing,
)


def _dumps_inline(obj: Any) -> bytes:
    return dumps_referencing(obj, {}, out_of_band=False)[0]


def digest_of(blob: bytes) -> str:
    """The content key of a pickle."""
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


class ScatteredObjects:
    """Futures of pickles scattered to every worker, by digest. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    def scatter(self, client: Any, blob: bytes) -> tuple[str, Any]:
        """``(digest, future)`` of ``blob`` on every worker; scattered only if not yet kept."""
        digest = digest_of(blob)
        with self._lock:
            hit = self._entries.get(digest)
            if hit is not None:
                self._entries.move_to_end(digest)
                return digest, hit[0]
        future = client.scatter(blob, broadcast=True, hash=False)
        with self._lock:
            known = self._entries.get(digest)
            if known is not None:  # another map scattered the same bytes meanwhile
                return digest, known[0]
            self._entries[digest] = (future, len(blob))
            self._bytes += len(blob)
            while len(self._entries) > 1 and (
                len(self._entries) > STORE_MAX_FILES or self._bytes > STORE_MAX_BYTES
            ):
                _, (_, nbytes) = self._entries.popitem(last=False)
                self._bytes -= nbytes
        return digest, future

    def share(self, client: Any, objects: Iterable[Any]) -> tuple[dict[int, Reference], dict]:
        """References for the objects worth sending once, and the futures they name.

        An object that does not pickle, or pickles below ``SHARED_OBJECT_MIN_BYTES``, is left
        to the chunks' own pickling (which reports a pickling error as it would have).
        """
        refs: dict[int, Reference] = {}
        futures: dict[str, Any] = {}
        for obj in objects:
            blob = pickled_if_worth_sharing(obj, _dumps_inline)
            if blob is None:
                continue
            digest, future = self.scatter(client, blob)
            refs[id(obj)] = (REFERENCE_TAG, digest, "")
            futures[digest] = future
        return refs, futures

    def digests(self) -> list[str]:
        """The digests of the pickles kept scattered, oldest first."""
        with self._lock:
            return list(self._entries)

    @property
    def kept(self) -> int:
        """How many pickles are kept scattered."""
        with self._lock:
            return len(self._entries)

    def clear(self) -> list[str]:
        """Drop every future (the pool is released); the digests that were kept."""
        with self._lock:
            digests = list(self._entries)
            self._entries.clear()
            self._bytes = 0
        return digests


__all__ = ["ScatteredObjects", "digest_of"]
