"""Where a decision is asked from: inside whose worker, under which library's own settings.

Two facts about the caller's situation that the gate weighs (``nested_worker``,
``library_config``), read cheaply: nothing is imported to find them out.
"""

from __future__ import annotations

import sys

from .worker import in_worker


def joblib_says_serial(strategy: str, budget: int) -> str | None:
    """What an active ``joblib.parallel_config`` of this thread says, when it asks the joblib
    strategy for serial work (``n_jobs=1``); joblib is not imported to find out. ``budget`` is
    the asker's CPU budget (it resolves ``n_jobs=-1``; reading the machine again per call would
    cost more than the loops a facade keeps serial)."""
    if strategy != "joblib" or "joblib" not in sys.modules:
        return None
    parallel = sys.modules.get("joblib.parallel")
    local = getattr(parallel, "_backend", None)
    if local is not None:
        active = getattr(local, "config", None)
        if active is None or active is getattr(parallel, "default_parallel_config", None):
            return None  # no parallel_config is active in this thread
    from .joblib_config import joblib_settings

    settings = joblib_settings(budget)
    return settings.detail if settings.strategy == "sequential" else None


def nested_in(env_says_worker: bool) -> str | None:
    """The kind of worker this call runs inside, if any: ours, or another library's."""
    if in_worker() or env_says_worker:
        return "ce-parallel"
    from .nesting import foreign_worker

    return foreign_worker()


__all__ = ["joblib_says_serial", "nested_in"]
