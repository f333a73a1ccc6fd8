"""The contract suite runs every test against every strategy."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import minimal_strategy
import pytest
from leakcheck import assert_no_leaks, snapshot
from workfns import make_config

from ce_parallel import ParallelExecutor, create_executor
from ce_parallel.registry import StrategyRecord, strategy_records


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


minimal_strategy.register()


def _param(name: str, record: StrategyRecord) -> Any:
    marks = []
    if name == "dask":
        marks.append(pytest.mark.dask)
    if not record.available():
        marks.append(
            pytest.mark.skipif(True, reason=f"{name}: {', '.join(record.requires)} not installed")
        )
    return pytest.param(name, marks=marks, id=name)


#: Every registered strategy, the one registered by this suite (``minimal_strategy``) included.
STRATEGIES = [_param(name, record) for name, record in strategy_records().items()]


@pytest.fixture(scope="session", autouse=True)
def _warm_helpers() -> None:
    # loky and joblib start one resource-tracker helper per process on first use; start them
    # before any baseline is taken so that leak checks count only workers.
    for strategy in ("processes", "joblib"):
        with create_executor(make_config(strategy)) as ex:
            ex.map(abs, [1, 2])
    if _has("distributed"):
        # distributed keeps a process-wide offload thread once anything has used it
        from distributed.utils import _offload_executor

        _offload_executor.submit(abs, 1).result()


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """One 2-worker LocalCluster for the whole suite: starting one per test costs ~10 s."""
    distributed = pytest.importorskip("distributed", reason="dask extra not installed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster, set_as_default=False)
    # The client pools its connections to the scheduler and workers and grows the pool with
    # concurrency; fill it before any baseline so leak checks count only what an executor keeps.
    from ce_parallel.strategies.dask import DaskExecutor

    with DaskExecutor(make_config("dask"), client=client) as warm:
        for size in (1, 8, 64, 200) * 3:
            warm.map(abs, range(size))
            warm.map(abs, range(size), chunksize=1)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def build(strategy: str, request: pytest.FixtureRequest) -> Callable[..., ParallelExecutor]:
    """Make an executor of the strategy from config changes (dask runs on the shared cluster)."""

    def make(**changes: Any) -> ParallelExecutor:
        config = make_config(strategy, **changes)
        if strategy == "dask":
            from ce_parallel.strategies.dask import DaskExecutor

            return DaskExecutor(config, client=request.getfixturevalue("dask_client"))
        return create_executor(config)

    return make


@pytest.fixture
def executor(build: Callable[..., ParallelExecutor], strategy: str) -> Iterator[ParallelExecutor]:
    """A fresh executor of the strategy; after the test it is shut down and leaks are checked.

    On dask the executor runs on the suite's shared client, whose connection pool to the
    cluster grows with concurrency: its sockets are not the executor's to release (the dask
    integration tests check that an executor's own cluster leaves nothing behind).
    """
    ex = build()
    shared_client = strategy == "dask"
    before = snapshot(ignore_sockets=shared_client)
    try:
        yield ex
    finally:
        ex.shutdown()
    assert_no_leaks(before, ignore_sockets=shared_client)
