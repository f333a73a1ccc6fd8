"""Arrays that already live in a file reach process workers by the file's name, never copied.

Copying an array into shared memory costs more than one pass over it (``large_arrays.md``): a
map that only sums 32 arrays of 8 MB cannot beat the loop that way. Data that many maps read
(a design matrix, a calibration set) can instead live in shared memory from the start:
``shared_empty`` and ``as_shared`` make an ``numpy.memmap`` of a file under ``/dev/shm`` that
this process owns. Such an array, a view of it, or any ``numpy.memmap`` of a file the caller
opened itself (``mode`` ``"r"``, ``"r+"`` or ``"w+"``, not the private ``"c"``), of any size,
travels to ``processes`` workers as ``(path, offset, shape, strides, dtype)``: the worker maps
the file read-only, once per file, and sees the caller's pages themselves, so a change the
caller makes between two maps is what the next map reads (there is no copy to go stale).
``joblib`` passes memmaps by name itself (its workers get them writeable, as joblib does).

A file ``shared_empty`` made is registered with the loky resource tracker before it exists and
removed when the last array on it is collected (or by the tracker if the process dies first).
A map keeps the arrays it sends alive until its chunks are done, so a stream's items may be
dropped by the caller as soon as they are sent.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from typing import Any

from .shared_arrays import SHM_DIR, _remove, new_file

#: Every owned file's name starts with this, then the creating process's id.
FILE_PREFIX = "ce-parallel-arr-"
#: Files a worker keeps mapped at most; the oldest mapping is dropped first (a view in use
#: keeps its mapping alive, so dropping is always safe).
WORKER_FILE_MAPS = 32

# (path, inode, bytes of the file, offset of the array's first element, shape, strides, dtype)
FileHandle = tuple[str, int, int, int, tuple[int, ...], tuple[int, ...], Any]

_SHAREABLE_MODES = ("r", "r+", "w+", "readonly", "readwrite", "write")


def shared_empty(shape: int | tuple[int, ...], dtype: Any = float, order: str = "C") -> Any:
    """A new, uninitialised array in a ``/dev/shm`` file owned by this process.

    Process workers of ``processes`` (and ``joblib``) read it without a copy: see the module.
    The file goes when the last array on it is collected. Raises ``OSError`` when
    ``/dev/shm`` is missing or lacks room for it (``SHM_RESERVE_BYTES`` kept free).
    """
    import numpy as np

    if order not in ("C", "F"):
        raise ValueError(f"shared_empty(order={order!r}): give 'C' or 'F'")
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(not isinstance(d, int) or d < 0 for d in dims):
        raise ValueError(f"shared_empty(shape={shape!r}): give non-negative ints")
    kind = np.dtype(dtype)
    if kind.hasobject:
        raise TypeError(f"shared_empty(dtype={kind}): an array of Python objects cannot be shared")
    nbytes = int(np.prod(dims, dtype=np.int64)) * kind.itemsize
    if nbytes == 0:
        return np.empty(dims, kind, order=order)  # type: ignore[call-overload]
    created = new_file(FILE_PREFIX, nbytes)
    if created is None:
        raise OSError(f"shared_empty: no room for {nbytes} bytes under {SHM_DIR}")
    fd, name = created
    path = os.path.join(SHM_DIR, name)
    try:
        try:
            # reserve the pages now: a full tmpfs fails here, not with SIGBUS on first write
            os.posix_fallocate(fd, 0, nbytes)
        finally:
            os.close(fd)
        array = np.memmap(path, dtype=kind, mode="r+", shape=dims, order=order)  # type: ignore[call-overload]
    except BaseException:
        _remove(path)
        raise
    weakref.finalize(array._mmap, _remove, path)
    return array


def as_shared(array: Any) -> Any:
    """A copy of ``array`` in a ``/dev/shm`` file owned by this process (see ``shared_empty``)."""
    import numpy as np

    source = np.asarray(array)
    order = "F" if source.flags.f_contiguous and not source.flags.c_contiguous else "C"
    out = shared_empty(source.shape, source.dtype, order)
    out[...] = source
    return out


def file_handle(array: Any) -> tuple[FileHandle, Any] | None:
    """The handle that names ``array``'s memory in its file, and the object to keep alive
    while a worker may open it; None when ``array`` is not a view of a shareable memmap."""
    import numpy as np

    root = array
    while isinstance(root, np.ndarray):
        if isinstance(root, np.memmap) and isinstance(root.base, mmap.mmap):
            break
        root = root.base
    else:
        return None
    if root.mode not in _SHAREABLE_MODES or not root.filename:
        return None
    try:
        inode = os.stat(root.filename).st_ino
    except OSError:
        return None
    start = array.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    handle: FileHandle = (
        root.filename,
        inode,
        int(root.offset + root.nbytes),
        int(root.offset + start),
        tuple(array.shape),
        tuple(array.strides),
        array.dtype,
    )
    return handle, root


# -- worker side --------------------------------------------------------------------------

_maps: dict[tuple[str, int, int], mmap.mmap] = {}
_maps_lock = threading.Lock()


def attach_file(handle: FileHandle) -> Any:
    """The read-only view a handle names, its file mapped once per worker (``processes``).

    Raises ``OSError`` when the file is gone or is no longer the one the caller sent (another
    inode, a shorter file); the chunk is then lost and re-run by the caller.
    """
    import numpy as np

    path, inode, least, offset, shape, strides, dtype = handle
    stat = os.stat(path)
    if stat.st_ino != inode or stat.st_size < least:
        raise FileNotFoundError(f"{path} is not the file the caller sent")
    key = (path, stat.st_ino, stat.st_size)
    with _maps_lock:
        mapped = _maps.get(key)
    if mapped is None:
        fd = os.open(path, os.O_RDONLY)
        try:
            mapped = mmap.mmap(fd, stat.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        with _maps_lock:
            mapped = _maps.setdefault(key, mapped)
            while len(_maps) > WORKER_FILE_MAPS:
                del _maps[next(iter(_maps))]
        from .shared_arrays import _start_janitor

        _start_janitor()
    return np.ndarray(shape, dtype, buffer=mapped, offset=offset, strides=strides)


def drop_gone_files() -> int:
    """Forget mapped files that are gone or replaced; returns how many are still mapped."""
    with _maps_lock:
        keys = list(_maps)
    gone = []
    for key in keys:
        try:
            stat = os.stat(key[0])
        except OSError:
            gone.append(key)
            continue
        if (stat.st_ino, stat.st_size) != key[1:]:
            gone.append(key)
    with _maps_lock:
        for key in gone:
            _maps.pop(key, None)
        return len(_maps)


def owned_files(pid: int | None = None) -> list[str]:
    """Paths of the files ``shared_empty`` made in process ``pid`` (any when None) that exist."""
    from .shared_arrays import files_named

    return files_named(FILE_PREFIX, pid)


__all__ = [
    "FILE_PREFIX",
    "as_shared",
    "attach_file",
    "drop_gone_files",
    "file_handle",
    "owned_files",
    "shared_empty",
]
