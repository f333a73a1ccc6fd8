"""Arrays changed in place between two maps on the same executor give the new results.

An executor may avoid sending the same data twice (joblib memory-maps large arrays, and a pool
may cache arguments in its workers), but such a cache must follow the data's content: a map
after ``a[:] += 1`` computes on the changed array, on every strategy.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from ce_parallel import ParallelConfig, create_executor

np = pytest.importorskip("numpy")

STRATEGIES = ["sequential", "threads", "processes", "joblib"]

#: 2 MB of float64: above joblib's 1 MB threshold, so joblib sends it as a memory-mapped file
SIZE = 250_000


def _total(array: Any) -> float:
    return float(array.sum())


def _scaled_total(factor: Any, array: Any) -> float:
    return float((factor * array).sum())


def _config(strategy: str) -> ParallelConfig:
    return ParallelConfig(enabled=True, strategy=strategy, full_matrix=True, max_workers=2)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_items_changed_in_place_between_maps(strategy: str) -> None:
    arrays = [np.full(SIZE, float(i)) for i in range(4)]
    with create_executor(_config(strategy)) as ex:
        assert ex.map(_total, [np.ones(3), np.ones(5)]) == [3.0, 5.0]  # too small to map
        assert ex.map(_total, arrays) == [SIZE * float(i) for i in range(4)]
        for a in arrays:
            a[:] += 1
        assert ex.map(_total, arrays) == [SIZE * (i + 1.0) for i in range(4)]
        arrays[2][:] = -1.0
        assert ex.map(_total, arrays) == [SIZE * 1.0, SIZE * 2.0, -SIZE * 1.0, SIZE * 4.0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_array_bound_into_fn_changed_in_place_between_maps(strategy: str) -> None:
    factor = np.full(SIZE, 2.0)
    arrays = [np.full(SIZE, float(i)) for i in range(4)]
    with create_executor(_config(strategy)) as ex:
        fn = functools.partial(_scaled_total, factor)
        assert ex.map(fn, arrays) == [2.0 * SIZE * i for i in range(4)]
        factor[:] = 3.0
        assert ex.map(fn, arrays) == [3.0 * SIZE * i for i in range(4)]
