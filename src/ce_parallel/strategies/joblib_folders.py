"""The joblib strategy's memory-map folders: one per map, released when its workers let go.

joblib memory-maps large array arguments into a temporary folder and, within one folder, reuses
the file of an array it has seen by identity. The strategy keeps its ``joblib.Parallel`` entered
across maps, so a folder per map is what keeps an array changed in place between two maps from
being read back as its old content. A map's folder is released when its last chunk is done and
removed once the workers let go of its files; folders still in use are removed later or at
shutdown.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any

from ..shared_arrays import run_shared_chunk
from ..shared_objects import Reference, dumps_referencing
from ..worker import ChunkJob, ChunkOutcome, run_chunk

logger = logging.getLogger("ce_parallel.joblib")


class InMapFolder:
    """A chunk whose large arrays are memory-mapped into its map's own folder.

    loky pickles submitted work later, in its queue feeder thread (one per executor, so one
    pickling at a time): selecting the folder there, right before the chunk's arrays are
    pickled, is what ``joblib.Parallel`` does with its batches too.
    """

    __slots__ = ("folder", "job", "refs")

    def __init__(
        self, job: ChunkJob, folder: MapFolder, refs: dict[int, Reference] | None = None
    ) -> None:
        self.job = job
        self.folder = folder
        self.refs = refs

    def __call__(self) -> ChunkOutcome:
        return run_chunk(self.job)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        self.folder.manager.set_current_context(self.folder.context_id)
        if not self.refs:
            return functools.partial, (run_chunk, self.job)
        # shared objects by reference (``shared_objects``); the large arrays come out as
        # buffers that loky's pickler, joblib's reducers in place, memory-maps as it would
        payload, buffers = dumps_referencing(self.job, self.refs)
        return functools.partial, (run_shared_chunk, self.job.start, payload, buffers)


class MapFolder:
    """The memory-mapping folder of one map, released when the map's last chunk is done.

    Releasing gives up the reference the parent holds on each file, so the resource tracker
    deletes a file as soon as the workers have dropped their maps of it, and removes the folder
    if it is empty by then; a folder still in use is removed later (``sweep``).
    """

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.context_id = f"ce{uuid.uuid4().hex}"
        manager.register_new_context(self.context_id)
        self.path: str = manager._cached_temp_folders[self.context_id]
        self._left = 0
        self._lock = threading.Lock()
        adopt_finalizer(manager, self.context_id)

    def release_when_done(
        self, futures: list[Future[ChunkOutcome]], retired: RetiredFolders
    ) -> None:
        self._left = len(futures)
        if not futures:
            self.release(retired)
            return

        def done(_: Future[ChunkOutcome]) -> None:
            with self._lock:
                self._left -= 1
                last = self._left == 0
            if last:
                self.release(retired)

        for fut in futures:
            fut.add_done_callback(done)

    def release(self, retired: RetiredFolders) -> None:
        # Runs once, after every chunk of the map was pickled (or cancelled before it was).
        with retired.lock:
            if retired.killed:
                pass  # joblib drops every reference to the files of killed workers itself
            elif retired.keep_as_spare(self):
                return
            else:
                try:
                    self._drop_parent_references()
                except Exception:
                    logger.warning(
                        "releasing the memory maps of %s failed", self.path, exc_info=True
                    )
        if not self.try_remove():
            retired.add(self)

    def is_unused(self) -> bool:
        """True if no array was written here (the parent holds every file until release)."""
        try:
            return not os.listdir(self.path)
        except FileNotFoundError:
            return False

    def _drop_parent_references(self) -> None:
        from joblib.externals.loky.backend import resource_tracker

        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return  # no array of this map was large enough to be memory-mapped
        reducer = array_reducer(self.manager)
        for name in names:
            filename = os.path.join(self.path, name)
            # joblib registers each new file once more than the workers will release it
            # (Parallel releases that extra reference at the end of each call)
            resource_tracker.maybe_unlink(filename, "file")
            if reducer is not None:
                reducer._temporary_memmaped_filenames.discard(filename)

    def try_remove(self) -> bool:
        """Remove the folder if no file is left in it; True once it is gone and forgotten."""
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False  # workers still map some of its files
            logger.warning("could not remove memory-map folder %s: %s", self.path, exc)
            return False
        self.forget()
        return True

    def forget(self) -> None:
        from joblib.externals.loky.backend import resource_tracker

        manager = self.manager
        if manager._cached_temp_folders.pop(self.context_id, None) is None:
            return
        resource_tracker.unregister(self.path, "folder")
        finalizer = manager._finalizers.pop(self.context_id, None)
        if finalizer is not None:
            atexit.unregister(finalizer)

    def remove_now(self, force: bool) -> None:
        """Remove the folder whatever is left in it (every worker has exited)."""
        if force:
            # killed workers never release their maps: give up their references too, as
            # joblib does when it kills its workers
            from joblib.externals.loky.backend import resource_tracker

            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(self.path):
                    resource_tracker.unregister(os.path.join(self.path, name), "file")
        import shutil

        try:
            shutil.rmtree(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove memory-map folder %s: %s", self.path, exc)
            return
        self.forget()


class RetiredFolders:
    """Folders of finished maps that workers still used when the map ended.

    A folder into which its map wrote nothing (no array was large enough) is kept as the spare
    for the next map: it holds no file an array could be confused with, and most maps of
    small items then cost no folder of their own.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: set (under ``lock``) when the workers are killed or the pool is released
        self.killed = False
        self.closed = False
        self._spare: MapFolder | None = None
        self._folders: list[MapFolder] = []

    def keep_as_spare(self, folder: MapFolder) -> bool:
        """Keep ``folder`` for the next map if nothing was written into it (``lock`` held)."""
        if self.closed or self._spare is not None or not folder.is_unused():
            return False
        self._spare = folder
        return True

    def folder_for_map(self, manager: Any) -> MapFolder:
        with self.lock:
            spare, self._spare = self._spare, None
        if spare is not None and spare.manager is manager:
            return spare
        if spare is not None:
            self.add(spare)
        return MapFolder(manager)

    def add(self, folder: MapFolder) -> None:
        with self.lock:
            self._folders.append(folder)

    def sweep(self) -> None:
        with self.lock:
            folders, self._folders = self._folders, []
        left = [f for f in folders if not f.try_remove()]
        if left:
            with self.lock:
                self._folders.extend(left)

    def take(self) -> list[MapFolder]:
        """Every folder left, spare included; later releases no longer keep a spare."""
        with self.lock:
            self.closed = True
            folders, self._folders = self._folders, []
            if self._spare is not None:
                folders.append(self._spare)
                self._spare = None
        return folders


def array_reducer(manager: Any) -> Any:
    # joblib's ndarray reducer remembers every file name it ever wrote; the names of a released
    # folder are dropped so that a long-lived executor does not accumulate them
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    if getattr(executor, "_temp_folder_manager", None) is not manager:
        return None
    reducers = getattr(getattr(executor, "_call_queue", None), "_reducers", None) or {}
    for reducer in reducers.values():
        if hasattr(reducer, "_temporary_memmaped_filenames"):
            return reducer
    return None


def logged(call: Any, what: str, *args: Any, **kwargs: Any) -> None:
    # Releasing continues past a failing step (the next steps free what is left); the failure
    # is logged, never hidden.
    try:
        call(*args, **kwargs)
    except Exception:
        logger.warning("%s failed", what, exc_info=True)


#: After the workers have exited, how long the resource tracker is given to delete the files
#: they released, before their folders are removed with whatever is left in them.
RELEASE_WAIT_S = 2.0


def remove_folders(folders: list[MapFolder], kill: bool) -> None:
    """Remove the folders of finished maps once the workers that mapped their files are gone."""

    deadline = time.monotonic() + (0.0 if kill else RELEASE_WAIT_S)
    while True:
        folders = [f for f in folders if not f.try_remove()]
        if not folders or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    for folder in folders:
        # killed workers never release their maps; workers that exited released theirs,
        # but the tracker has not deleted the files yet (it ignores files already gone)
        folder.remove_now(force=kill)


def adopt_finalizer(manager: Any, context_id: str) -> None:
    """Make joblib's exit hook for a folder forget the folder once it has removed it.

    The hook deletes the folder and unregisters it from the resource tracker, but leaves it in
    the manager's table. It runs before the exit hook that shuts shared pools down (atexit runs
    the last registered first), whose release of the folder then unregistered it a second time:
    a ``KeyError`` traceback from loky's resource tracker at every exit. The hook is replaced by
    one that runs it and then drops the folder from the table, so nothing is released twice.
    """
    finalizer = manager._finalizers.get(context_id)
    if finalizer is None or getattr(finalizer, "ce_parallel_adopted", False):
        return

    def run_then_forget() -> None:
        try:
            finalizer()
        finally:
            manager._cached_temp_folders.pop(context_id, None)
            manager._finalizers.pop(context_id, None)

    run_then_forget.ce_parallel_adopted = True  # type: ignore[attr-defined]
    atexit.unregister(finalizer)
    atexit.register(run_then_forget)
    manager._finalizers[context_id] = run_then_forget


def remove_empty_folders(manager: Any) -> None:
    """Remove joblib's own empty folders of this executor (it creates one per context)."""
    from joblib.externals.loky.backend import resource_tracker

    for context_id, path in list(manager._cached_temp_folders.items()):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                logger.warning("could not remove memory-map folder %s: %s", path, exc)
            # a folder with files belongs to a joblib.Parallel still using this executor
            logger.debug("left memory-map folder %s in place: %s", path, exc)
            continue
        manager._cached_temp_folders.pop(context_id, None)
        resource_tracker.unregister(path, "folder")
        finalizer = manager._finalizers.pop(context_id, None)
        if finalizer is not None:
            atexit.unregister(finalizer)


__all__ = [
    "InMapFolder",
    "MapFolder",
    "RetiredFolders",
    "adopt_finalizer",
    "array_reducer",
    "logged",
    "remove_empty_folders",
    "remove_folders",
]
