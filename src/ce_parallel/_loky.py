"""One process, two copies of loky: joblib's own (``joblib.externals.loky``) and the loky package.

Both register their start method under the same names (``"loky"``, ``"loky_init_main"``) in
multiprocessing's process-wide registry of start contexts, and the copy imported last wins.
joblib's reusable executor takes its start method from that registry (``joblib.Parallel`` offers
no way to pass one), so once the loky package has been imported after joblib, joblib starts its
workers with the package's copy, which hands them the package's resource tracker instead of
joblib's. Those workers then report the memory maps they release to a joblib tracker of their own
that never saw the files (the ``KeyError: '/dev/shm/joblib_memmapping_folder_...'`` tracebacks
printed by ``resource_tracker``), the parent's tracker never deletes the files, and every
``joblib.Parallel`` call waits for a folder that never empties before giving up on it.

The loky package therefore gets its own context explicitly and is imported without taking the
registry from joblib; joblib's executor is created with joblib's contexts in the registry.
"""

from __future__ import annotations

import contextlib
import multiprocessing.context
import threading
from collections.abc import Iterator
from typing import Any

_NAMES = ("loky", "loky_init_main")
# held while the registry may name the loky package's contexts, and while joblib creates its
# executor, so that a pool started in another thread of ours never sees the wrong one
_LOCK = threading.Lock()


def _registry() -> dict[str, Any]:
    return multiprocessing.context._concrete_contexts  # type: ignore[attr-defined]


def _is_joblibs(context: Any) -> bool:
    return type(context).__module__.startswith("joblib.")


def loky_package_context() -> Any:
    """The loky package's start context; importing the package leaves joblib's registered."""
    with _LOCK:
        registry = _registry()
        saved = {name: registry.get(name) for name in _NAMES}
        from loky.backend import context

        for name, previous in saved.items():
            if previous is not None and _is_joblibs(previous):
                registry[name] = previous
        return context.ctx_loky


@contextlib.contextmanager
def joblib_start_context() -> Iterator[None]:
    """While joblib creates its executor, the registry names joblib's own start contexts."""
    with _LOCK:
        from joblib.externals.loky.backend import context

        registry = _registry()
        if not _is_joblibs(registry.get("loky")):
            registry["loky"] = context.ctx_loky
        if not _is_joblibs(registry.get("loky_init_main")):
            registry["loky_init_main"] = context.LokyInitMainContext()
        yield
