"""Large arrays in a process worker's results come back through shared memory, not a pipe.

A chunk's results are pickled in the worker (``worker.pack_results``). Through loky's result
pipe every buffer of a large array is copied five times (into the pickle, into loky's pickle of
the outcome, through the pipe, out of loky's unpickled outcome, into the rebuilt array): 32
results of 8 MB took 16x the serial loop. Here each buffer of at least
``heuristics.RESULT_SEGMENT_MIN_BYTES`` is written once by the worker into a file under
``/dev/shm`` (pickle protocol 5, out of band) and the outcome carries only its name.

The caller claims the files the moment loky rebuilds the outcome (``ChunkOutcome``'s
``__setstate__``, in the pool's result thread), whether or not anyone will read the results:
each file is mapped copy-on-write (``MAP_PRIVATE``: the array is private and writeable, as the
serial loop's result is, and a later ``fork`` does not share it) and unlinked at once, so its
memory lives exactly as long as the arrays built on it. A file of a worker that died between
writing it and sending its outcome is removed with the pool (``remove_pool_files``); each file
is registered with the loky resource tracker the pool's workers share before it exists, so a
caller killed meanwhile leaves nothing once its workers are gone.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
from typing import Any, Literal

from . import heuristics
from .shared_arrays import SHM_DIR, _write_all, files_named, new_file

#: Every result file's name starts with this, then the caller's pid and the pool's token.
RESULT_PREFIX = "ce-parallel-res-"
#: Characters of the pool token in a result file's name.
_TOKEN_CHARS = 12

#: (file name, bytes) of one buffer sent out of band
ResultFile = tuple[str, int]
#: Which resource tracker the pool's workers share with the caller: the loky package's
#: (``processes``) or the one joblib vendors (``joblib``'s workers hold only that one).
Tracker = Literal["loky", "joblib"]


def tracker(kind: Tracker) -> Any:
    """The resource tracker module of ``kind``."""
    if kind == "joblib":
        from joblib.externals.loky.backend import resource_tracker
    else:
        from loky.backend import resource_tracker
    return resource_tracker


def pool_prefix(caller_pid: int, token: str) -> str:
    """The name prefix of the result files of the pool ``token`` of process ``caller_pid``."""
    return f"{RESULT_PREFIX}{caller_pid}-{token[:_TOKEN_CHARS]}-"


class FileBuffers:
    """A ``buffer_callback`` for a worker's results pickler: large buffers go to files.

    ``files`` lists what was written, in the order the unpickler needs them. ``remove()``
    deletes them again (the pickling failed after some were written).
    """

    def __init__(self, prefix: str, kind: Tracker = "loky") -> None:
        self.prefix = prefix
        self.kind: Tracker = kind
        self.files: list[ResultFile] = []

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        """True keeps ``buffer`` in the pickle; False means it went to a file."""
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: pickled in band
            return True
        nbytes = view.nbytes
        if nbytes < heuristics.RESULT_SEGMENT_MIN_BYTES:
            return True
        # the caller's pid comes first in the prefix, so that its sweep finds the file
        created = new_file(self.prefix, nbytes, tracker(self.kind))
        if created is None:  # no room on the file system: the pipe it is
            return True
        fd, name = created
        try:
            _write_all(fd, view)
        except OSError:
            _unlink(os.path.join(SHM_DIR, name), self.kind)
            return True
        finally:
            os.close(fd)
        self.files.append((name, nbytes))
        return False

    def remove(self) -> None:
        """Delete every file written so far."""
        for name, _ in self.files:
            _unlink(os.path.join(SHM_DIR, name), self.kind)
        self.files.clear()


def claim(files: list[ResultFile], kind: Tracker = "loky") -> list[mmap.mmap]:
    """Map every file copy-on-write and unlink it (and tell the ``kind`` of tracker the
    worker registered it with); the maps, in order.

    Every file is unlinked even when one cannot be mapped; then this raises ``OSError``.
    """
    maps: list[mmap.mmap] = []
    failure: OSError | None = None
    for name, nbytes in files:
        path = os.path.join(SHM_DIR, name)
        if failure is None:
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    # not MAP_POPULATE: on a writeable private map it copies every page now
                    prot = mmap.PROT_READ | mmap.PROT_WRITE
                    maps.append(mmap.mmap(fd, nbytes, flags=mmap.MAP_PRIVATE, prot=prot))
                finally:
                    os.close(fd)
            except OSError as exc:
                failure = exc
        _unlink(path, kind)
    if failure is not None:
        for mapped in maps:
            with contextlib.suppress(BufferError):
                mapped.close()
        raise failure
    return maps


def _unlink(path: str, kind: Tracker) -> None:
    # a file already gone was unregistered by whoever removed it: the tracker must not hear
    # of it twice
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    tracker(kind).unregister(path, "file")


def remove_pool_files(caller_pid: int, token: str, kind: Tracker = "loky") -> int:
    """Remove the result files of a pool that no outcome claimed (a worker died after writing
    them); returns how many there were."""
    start = pool_prefix(caller_pid, token)
    left = [p for p in result_files(caller_pid) if os.path.basename(p).startswith(start)]
    for path in left:
        _unlink(path, kind)
    return len(left)


def result_files(pid: int | None = None) -> list[str]:
    """Paths of result files of process ``pid``'s pools (any process when None) that exist."""
    return files_named(RESULT_PREFIX, pid)


__all__ = [
    "RESULT_PREFIX",
    "FileBuffers",
    "claim",
    "pool_prefix",
    "remove_pool_files",
    "result_files",
]
