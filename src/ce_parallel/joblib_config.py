"""What an active ``joblib.parallel_config`` asks for, read without starting anything.

A user inside ``with joblib.parallel_config(n_jobs=1):`` or ``(backend="threading"):`` has
told joblib how to run; the joblib strategy and the joblib backend honour it. joblib is
imported only when asked (the joblib strategy has imported it already).
"""

from __future__ import annotations

from dataclasses import dataclass

from .njobs import resolve_n_jobs
from .resources import cpu_budget

#: The strategy a thread-based joblib backend maps to.
THREAD_STRATEGY = "threads"


@dataclass(frozen=True)
class JoblibSettings:
    """What an active ``joblib.parallel_config`` asks of a ce-parallel strategy.

    ``strategy`` is ``"sequential"`` (``n_jobs=1``, ``backend="sequential"``), ``"threads"``
    (a thread-based backend such as ``"threading"``) or None (keep the strategy); ``workers``
    the count its ``n_jobs`` asks for on the budget (None: not set); ``detail`` says why, for
    the decision record.
    """

    strategy: str | None
    workers: int | None
    detail: str


def joblib_settings(budget: int | None = None) -> JoblibSettings:
    """Read the active ``joblib.parallel_config`` (or ``parallel_backend``) of this thread.

    Outside any such context the answer is ``JoblibSettings(None, None, "")``. ``budget``
    (default: ``cpu_budget().count``) resolves ``n_jobs=-1`` and friends.
    """
    from joblib._parallel_backends import SequentialBackend
    from joblib.parallel import get_active_backend

    backend, n_jobs = get_active_backend()
    count = cpu_budget().count if budget is None else budget
    workers = resolve_n_jobs(n_jobs, count, setting="joblib.parallel_config(n_jobs)")
    kind = type(backend).__name__
    if isinstance(backend, SequentialBackend):
        return JoblibSettings("sequential", 1, f"joblib.parallel_config(backend=...) is {kind}")
    if workers == 1:
        return JoblibSettings("sequential", 1, f"joblib.parallel_config(n_jobs={n_jobs})")
    if getattr(backend, "uses_threads", False):
        return JoblibSettings(
            THREAD_STRATEGY, workers, f"joblib.parallel_config(backend=...) is {kind} (threads)"
        )
    detail = "" if n_jobs is None else f"joblib.parallel_config(n_jobs={n_jobs})"
    return JoblibSettings(None, workers, detail)


__all__ = ["THREAD_STRATEGY", "JoblibSettings", "joblib_settings"]
