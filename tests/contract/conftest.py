"""The contract suite runs every test against every strategy."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
from leakcheck import assert_no_leaks, snapshot
from workfns import make_config

from ce_parallel import ParallelExecutor, create_executor


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


STRATEGIES = [
    "sequential",
    "threads",
    "processes",
    "joblib",
    pytest.param(
        "auto",
        marks=pytest.mark.skipif(
            not _has("ce_parallel.strategies.auto"), reason="the auto strategy is not installed"
        ),
    ),
    pytest.param(
        "dask",
        marks=[
            pytest.mark.dask,
            pytest.mark.skipif(
                not (_has("distributed") and _has("ce_parallel.strategies.dask")),
                reason="dask extra not installed (pip install ce-parallel[dask])",
            ),
        ],
    ),
]


@pytest.fixture(scope="session", autouse=True)
def _warm_helpers() -> None:
    # loky and joblib start one resource-tracker helper per process on first use; start them
    # before any baseline is taken so that leak checks count only workers.
    for strategy in ("processes", "joblib"):
        with create_executor(make_config(strategy)) as ex:
            ex.map(abs, [1, 2])


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def executor(strategy: str) -> Iterator[ParallelExecutor]:
    """A fresh executor of the strategy; after the test it is shut down and leaks are checked."""
    before = snapshot()
    ex = create_executor(make_config(strategy))
    try:
        yield ex
    finally:
        ex.shutdown()
    assert_no_leaks(before)
