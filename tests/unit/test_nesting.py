"""``foreign_worker()`` tells which library's worker it runs in."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import multiprocessing

import pytest

from ce_parallel.nesting import foreign_worker


def test_the_callers_own_process_and_threads_are_no_foreign_worker() -> None:
    assert foreign_worker() is None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # a plain thread pool (asyncio's default executor, ours) is deliberately no verdict
        assert pool.submit(foreign_worker).result() is None


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_process_pool_executor_worker(method: str) -> None:
    context = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        assert pool.submit(foreign_worker).result() == "process-pool"


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_multiprocessing_pool_worker(method: str) -> None:
    with multiprocessing.get_context(method).Pool(1) as pool:
        assert pool.apply(foreign_worker) == "multiprocessing-pool"


def test_joblib_workers_of_each_backend() -> None:
    joblib = pytest.importorskip("joblib")
    from joblib.externals.loky import get_reusable_executor

    def run(backend: str) -> str | None:
        out = joblib.Parallel(n_jobs=2, backend=backend)(
            joblib.delayed(foreign_worker)() for _ in range(2)
        )
        assert len(set(out)) == 1
        return out[0]

    try:
        assert run("loky") == "joblib"
        assert run("threading") == "thread-pool"
        assert run("multiprocessing") == "multiprocessing-pool"
    finally:
        get_reusable_executor().shutdown(wait=True)


def test_a_loky_worker() -> None:
    loky = pytest.importorskip("loky")
    with loky.ProcessPoolExecutor(1) as pool:
        assert pool.submit(foreign_worker).result() == "loky"


@pytest.mark.dask
@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="no distributed")
@pytest.mark.parametrize("processes", [True, False], ids=["worker-process", "worker-thread"])
def test_a_dask_worker(processes: bool) -> None:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=processes, dashboard_address=None
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        assert client.submit(foreign_worker, pure=False).result() == "dask"
    assert foreign_worker() is None  # the caller's thread is not a dask worker
