"""``n_jobs`` as joblib spells it."""

from __future__ import annotations

import pytest

from ce_parallel import ConfigurationError, ParallelConfig, create_executor
from ce_parallel.njobs import resolve_n_jobs
from ce_parallel.resources import CpuBudget, Resources


@pytest.mark.parametrize(
    ("n_jobs", "budget", "expected"),
    [
        (None, 8, None),
        (1, 8, 1),
        (3, 8, 3),
        (16, 8, 16),
        (-1, 8, 8),
        (-2, 8, 7),
        (-8, 8, 1),
        (-20, 8, 1),
        (-1, 1, 1),
        (-2, 1, 1),
    ],
)
def test_n_jobs_means_what_joblib_means(n_jobs: int | None, budget: int, expected: int) -> None:
    assert resolve_n_jobs(n_jobs, budget) == expected


@pytest.mark.parametrize("bad", [0, True, 1.5, "2"])
def test_n_jobs_zero_and_non_integers_are_one_clear_error(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="n_jobs="):
        resolve_n_jobs(bad, 4)


def test_create_executor_accepts_n_jobs() -> None:
    resources = Resources(budget=CpuBudget(4, "affinity", {"affinity": 4}))
    config = ParallelConfig(enabled=True, strategy="threads")
    with create_executor(config, resources=resources, n_jobs=-1) as ex:
        assert ex.workers == 4
    with create_executor(config, resources=resources, n_jobs=-2) as ex:
        assert ex.workers == 3
    with create_executor(config, resources=resources, n_jobs=None) as ex:
        assert ex.workers == 4
    with pytest.raises(ConfigurationError, match="n_jobs=0"):
        create_executor(config, resources=resources, n_jobs=0)
    with pytest.raises(ConfigurationError, match="not both"):
        create_executor(config, resources=resources, n_jobs=2, max_workers=2)
