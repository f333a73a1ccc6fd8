"""``n_jobs`` as joblib and scikit-learn spell it, turned into a worker count.

``-1`` means all of the CPU budget, ``-2`` all but one (``budget + 1 + n_jobs``, at least 1),
``None`` the default (whatever the caller does without a count: ce-parallel's default is the
budget), a positive number that many workers (honoured even above the budget, as
``max_workers`` is). ``0`` has no meaning and is an error, as in joblib.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigurationError


def resolve_n_jobs(n_jobs: Any, budget: int, *, setting: str = "n_jobs") -> int | None:
    """The worker count ``n_jobs`` asks for on a CPU budget of ``budget``; None for the default.

    Raises ``ConfigurationError`` for ``0``, a bool or anything that is not an integer.
    """
    if n_jobs is None:
        return None
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int):
        raise ConfigurationError(
            f"{setting}={n_jobs!r} is not accepted; expected an integer (-1: all of the CPU "
            "budget, -2: all but one, N > 0: N workers) or None"
        )
    if n_jobs == 0:
        raise ConfigurationError(
            f"{setting}=0 is not accepted: it has no meaning (as in joblib); use 1 for serial "
            "work, -1 for all of the CPU budget or None for the default"
        )
    if n_jobs > 0:
        return n_jobs
    return max(1, max(1, budget) + 1 + n_jobs)


__all__ = ["resolve_n_jobs"]
