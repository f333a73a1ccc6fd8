"""The contract suite runs every test against every strategy.

Every executor the suite builds checks each of its maps: a map that returns must not have
fallen back, and, for a strategy that runs its work elsewhere, every item must have run
elsewhere (in another process when the strategy's registry record says it pickles work, in a
worker thread for a thread pool). A strategy that quietly runs serially in the caller gives the
right results, and fails here. A test that expects a fallback says so with
``@pytest.mark.expects_fallback``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import minimal_strategy
import pytest
from leakcheck import assert_no_leaks, snapshot
from workfns import make_config

from ce_parallel import ParallelExecutor, create_executor
from ce_parallel.registry import StrategyRecord, strategy_record, strategy_records

EXPECTS_FALLBACK = "expects_fallback"


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


minimal_strategy.register()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{EXPECTS_FALLBACK}: the test makes the strategy fall back on purpose"
    )


def where_items_must_run(strategy: str) -> str | None:
    """``"process"``, ``"thread"`` or None (may run in the caller), from the registry record.

    A strategy that pickles its work runs it in other processes (the suite's dask cluster has
    worker processes); one that does not, and starts a thread pool, runs it in worker threads.
    The serial loop and ``auto`` (which may choose it) run in the caller.
    """
    record = strategy_record(strategy)
    if record.chooses:
        return None
    if record.pickles_work:
        return "process"
    if record.start_cost == "thread_pool":
        return "thread"
    return None


def _traced(fn: Callable[..., Any]) -> Callable[..., Any]:
    # a closure, so that cloudpickle sends it by value to any worker
    def traced(*args: Any, **kwargs: Any) -> tuple[Any, int, str]:
        return fn(*args, **kwargs), os.getpid(), threading.current_thread().name

    return traced


def check_every_map(ex: ParallelExecutor, strategy: str) -> ParallelExecutor:
    """Make ``ex.map`` check that each map that returns ran where the strategy runs work.

    The mapped function is wrapped to report the pid and thread name of every item; the
    wrapper is removed from the results before they are returned. A map may not add a fallback
    (the test's ``expects_fallback`` marker lifts both checks).
    """
    real_map = ex.map
    where = where_items_must_run(strategy)
    caller_pid, caller_thread = os.getpid(), threading.current_thread().name

    @functools.wraps(real_map)
    def checked_map(fn: Any, items: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if not callable(fn):
            return real_map(fn, items, *args, **kwargs)  # let the executor reject it
        fallbacks = ex.metrics.fallbacks
        traced = real_map(_traced(fn), items, *args, **kwargs)
        assert ex.metrics.fallbacks == fallbacks, f"{strategy}: a healthy map fell back"
        if where == "process":
            pids = {pid for _, pid, _ in traced}
            assert caller_pid not in pids, f"{strategy}: items ran in the caller's process"
        elif where == "thread":
            names = {name for _, _, name in traced}
            assert caller_thread not in names, f"{strategy}: items ran in the caller's thread"
        return [value for value, _, _ in traced]

    ex.map = checked_map  # type: ignore[method-assign]
    return ex


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
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},  # no clash with another cluster's 8787
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
def build(
    strategy: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ParallelExecutor]]:
    """Make an executor of the strategy from config changes (dask runs on the shared cluster).

    Every map of these executors is checked (``check_every_map``), and after the test none of
    them may have fallen back, unless the test is marked ``expects_fallback``.
    """
    healthy = request.node.get_closest_marker(EXPECTS_FALLBACK) is None
    built: list[ParallelExecutor] = []

    def make(**changes: Any) -> ParallelExecutor:
        config = make_config(strategy, **changes)
        if strategy == "dask":
            from ce_parallel.strategies.dask import DaskExecutor

            ex: ParallelExecutor = DaskExecutor(
                config, client=request.getfixturevalue("dask_client")
            )
        else:
            ex = create_executor(config)
        built.append(ex)
        return check_every_map(ex, strategy) if healthy else ex

    yield make
    if healthy:
        for ex in built:
            assert ex.metrics.fallbacks == 0, f"{strategy}: fell back in a healthy test"


@pytest.fixture
def checked(strategy: str) -> Callable[[ParallelExecutor], ParallelExecutor]:
    """``check_every_map`` for an executor a test builds itself."""
    return functools.partial(check_every_map, strategy=strategy)


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
