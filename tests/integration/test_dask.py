"""DaskExecutor on real LocalClusters: the contract, worker loss, addresses, clean shutdown."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.dask

distributed = pytest.importorskip("distributed")

from leakcheck import assert_no_leaks, snapshot, worker_children  # noqa: E402
from workfns import boom_at, sleep_then_return, square  # noqa: E402

from ce_parallel import ParallelConfig, create_executor  # noqa: E402
from ce_parallel.errors import SerializationError, WorkerCrashedError  # noqa: E402
from ce_parallel.heuristics import SHARED_OBJECT_MIN_BYTES  # noqa: E402
from ce_parallel.resources import Resources, cpu_budget  # noqa: E402
from ce_parallel.shared_objects import cached_digests, worker_loads  # noqa: E402
from ce_parallel.strategies import strategy_class  # noqa: E402
from ce_parallel.strategies.dask import (  # noqa: E402
    PLUGIN_PREFIX,
    SCATTER_MIN_BYTES,
    DaskExecutor,
)
from ce_parallel.strategies.dask_bridge import machinery_error  # noqa: E402

CLUSTER_WORKERS = 2


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """One 2-worker LocalCluster (processes, 1 thread each) shared by the module's tests."""
    local = distributed.LocalCluster(
        n_workers=CLUSTER_WORKERS,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},  # no clash with another cluster's 8787
    )
    try:
        yield local
    finally:
        local.close()


@pytest.fixture(scope="module")
def client(cluster: Any) -> Iterator[Any]:
    shared = distributed.Client(cluster, set_as_default=False)
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture(scope="module")
def executor(client: Any) -> Iterator[DaskExecutor]:
    """A DaskExecutor on the shared client, reused by every test (as a caller would)."""
    ex = DaskExecutor(client=client)
    try:
        yield ex
    finally:
        ex.shutdown()


class Recorder:
    """A telemetry callback that keeps every record."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        self.records.append((event, payload))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [payload for kind, payload in self.records if kind == event]


class CountingClient:
    """A real client that counts ``scatter`` calls."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.scatters = 0

    def scatter(self, *args: Any, **kwargs: Any) -> Any:
        self.scatters += 1
        return self._client.scatter(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class Lookup:
    """A function object carrying a large table, as a fitted model would."""

    def __init__(self, size: int) -> None:
        self.table = bytes(range(256)) * (size // 256 + 1)

    def __call__(self, i: int) -> int:
        return self.table[i] + len(self.table)


def exit_in_worker(item: tuple[int, int, int]) -> int:
    """Kill the worker process running ``bad``; in the parent process just return the index."""
    index, bad, parent_pid = item
    if index == bad and os.getpid() != parent_pid:
        os._exit(3)
    return index


# -- the contract on a shared 2-worker cluster -----------------------------------------------


def test_results_equal_the_serial_loop_and_keep_order(executor: DaskExecutor) -> None:
    items = list(range(-50, 250))
    assert executor.map(square, items) == [square(x) for x in items]
    assert executor.workers == CLUSTER_WORKERS  # chunks planned for the cluster's threads


def test_order_is_kept_when_later_chunks_finish_first(executor: DaskExecutor) -> None:
    items = [(i, 0.02 if i % 3 == 0 else 0.0) for i in range(30)]
    assert executor.map(sleep_then_return, items, chunksize=1) == list(range(30))


def test_identical_items_are_each_run(executor: DaskExecutor) -> None:
    # pure=False: identical chunks are separate tasks, so every one of them runs and returns
    tokens = executor.map(_token, [0] * 8, chunksize=1)
    assert len(tokens) == 8
    assert len(set(tokens)) == 8


def _token(_: int) -> str:
    return os.urandom(8).hex()


def test_empty_input_and_generators(executor: DaskExecutor) -> None:
    assert executor.map(square, []) == []
    assert executor.map(square, (i for i in range(40))) == [i * i for i in range(40)]


def test_user_exception_keeps_its_type_and_index(executor: DaskExecutor) -> None:
    with pytest.raises(KeyError) as info:
        executor.map(boom_at, [(i, 13) for i in range(40)], chunksize=3)
    assert info.value.ce_parallel_item_index == 13
    # the earliest failing item wins, as in the serial loop
    with pytest.raises(KeyError) as info:
        executor.map(boom_at, [(i, 2 if i < 20 else i) for i in range(40)], chunksize=4)
    assert info.value.ce_parallel_item_index == 2
    assert executor.map(square, [3]) == [9]  # usable afterwards


def test_reused_across_maps_on_the_same_client(executor: DaskExecutor, client: Any) -> None:
    first = executor.map(square, range(10))
    assert executor.client is client
    second = executor.map(square, range(10, 20))
    assert executor.client is client
    assert first + second == [i * i for i in range(20)]


def test_timeout_cancels_the_tasks_and_leaves_the_executor_usable(
    executor: DaskExecutor, client: Any
) -> None:
    with pytest.raises(TimeoutError, match=r"timeout=0\.1"):
        executor.map(sleep_then_return, [(i, 0.3) for i in range(6)], timeout=0.1, chunksize=1)
    assert executor.metrics.timeouts >= 1
    assert executor.map(square, range(5)) == [0, 1, 4, 9, 16]
    assert client.status == "running"  # a client we were given is never closed by us


def test_large_function_is_scattered_once_per_map(client: Any) -> None:
    counting = CountingClient(client)
    with DaskExecutor(client=counting) as ex:
        big = Lookup(SCATTER_MIN_BYTES + 1)
        assert ex.map(big, range(20), chunksize=2) == [big(i) for i in range(20)]
        assert counting.scatters == 1
        assert ex.map(square, range(20), chunksize=2) == [i * i for i in range(20)]
        assert counting.scatters == 1  # a small function travels inside each task


class Model:
    """Stands for a fitted model: a pickle above SHARED_OBJECT_MIN_BYTES and a weight."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.blob = os.urandom(2 * SHARED_OBJECT_MIN_BYTES)  # content no other test has


def _seen(model: Model, x: int) -> tuple[int, int, int, float]:
    """(pid, shared objects this process has unpickled, id of the model here, result)."""
    return os.getpid(), worker_loads(), id(model), model.weight * x


def _from_item(item: tuple[int, dict[str, Model]]) -> tuple[int, int, int, float]:
    return _seen(item[1]["model"], item[0])


def _per_worker(seen: list[tuple[int, int, int, float]]) -> dict[int, tuple[int, int]]:
    """pid -> (loads, model id), asserting each worker saw one model and loaded nothing more."""
    by_pid: dict[int, set[tuple[int, int]]] = {}
    for pid, loads, address, _ in seen:
        by_pid.setdefault(pid, set()).add((loads, address))
    assert os.getpid() not in by_pid, "the map ran in the caller's process"
    for pid, states in by_pid.items():
        assert len(states) == 1, (pid, states)
    return {pid: next(iter(states)) for pid, states in by_pid.items()}


@pytest.mark.parametrize("shape", ["items", "partial"])
def test_a_shared_object_is_scattered_once_and_unpickled_once_per_worker(
    client: Any, shape: str
) -> None:
    counting = CountingClient(client)
    model = Model(2.0)
    if shape == "items":
        fn: Any = _from_item
        items: list[Any] = [(x, {"model": model}) for x in range(12)]
    else:
        fn, items = functools.partial(_seen, model), list(range(12))
    before = dict(client.run(worker_loads))
    with DaskExecutor(client=counting) as ex:
        first = _per_worker(ex.map(fn, items, chunksize=1))
        second = _per_worker(ex.map(fn, items, chunksize=1))
        assert counting.scatters == 1, "scattered again for the second map"
        assert ex.metrics.fallbacks == 0
        assert first == {pid: state for pid, state in second.items() if pid in first}
        model.weight = 5.0  # changed in place: other bytes, sent again
        assert [r[3] for r in ex.map(fn, items, chunksize=1)] == [5.0 * x for x in range(12)]
        assert counting.scatters == 2
    after = dict(client.run(worker_loads))
    loaded = sum(after[w] - before[w] for w in after)
    # one load per worker for the first content and at most one for the changed one; a copy
    # per chunk would have loaded 36
    assert 1 <= loaded <= 2 * CLUSTER_WORKERS


def test_the_workers_of_a_cluster_we_were_given_drop_our_objects_at_shutdown(
    client: Any,
) -> None:
    model = Model(3.0)
    ex = DaskExecutor(client=client)
    try:
        got = ex.map(_from_item, [(x, {"model": model}) for x in range(6)], chunksize=1)
        assert [r[3] for r in got] == [3.0 * x for x in range(6)]
        (digest,) = ex._scattered.digests()
        assert any(digest in kept for kept in client.run(cached_digests).values())
    finally:
        ex.shutdown()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not any(digest in kept for kept in client.run(cached_digests).values()):
            break
        time.sleep(0.05)
    assert not any(digest in kept for kept in client.run(cached_digests).values())
    assert client.status == "running"  # a client we were given stays open


def test_unpicklable_function_falls_back_and_is_recorded(client: Any) -> None:
    recorder = Recorder()
    lock = threading.Lock()

    def locked_square(x: int) -> int:
        with lock:
            return x * x

    with DaskExecutor(ParallelConfig(telemetry=recorder), client=client) as ex:
        assert ex.map(locked_square, range(12)) == [x * x for x in range(12)]
    (fallback,) = recorder.of("fallback")
    assert fallback["cause"] == "SerializationError"
    assert fallback["action"] == "serial"


def fail_to_initialize() -> None:
    raise LookupError("the model file is missing")


def _plugin_names(dask_worker: Any) -> list[str]:
    return [name for name in dask_worker.plugins if name.startswith(PLUGIN_PREFIX)]


def test_setup_plugin_lives_as_long_as_the_executor(client: Any) -> None:
    # (other executors on the shared client keep theirs)
    before = client.run(_plugin_names)
    ex = DaskExecutor(client=client)
    assert ex.map(square, range(6)) == [i * i for i in range(6)]
    during = client.run(_plugin_names)
    assert all(len(during[w]) == len(before[w]) + 1 for w in before)
    ex.shutdown()
    assert client.run(_plugin_names) == before


def test_a_failing_initializer_raises_its_own_error_without_fallback(client: Any) -> None:
    config = ParallelConfig(worker_initializer=fail_to_initialize)
    with DaskExecutor(config, client=client) as ex:
        with pytest.raises(LookupError, match="model file") as info:
            ex.map(square, range(10))
        assert ex.metrics.fallbacks == 0
    notes = getattr(info.value, "__notes__", [])
    assert any("worker_initializer" in note for note in notes)


class KilledWorker(Exception):
    """Named as distributed names it: failures are told by type name, not by message."""


@pytest.mark.parametrize(
    ("exc", "stage", "expected"),
    [
        (KilledWorker("anything"), "task", WorkerCrashedError),
        (KilledWorker("could not pickle"), "submit", WorkerCrashedError),
        (TypeError("cannot pickle '_thread.lock' object"), "submit", SerializationError),
        (TypeError("no words about it"), "submit", SerializationError),
        (RuntimeError("Error during deserialization"), "task", SerializationError),
        (ModuleNotFoundError("only_here"), "gather", SerializationError),
    ],
)
def test_failures_are_told_by_type_and_stage(
    exc: BaseException, stage: str, expected: type
) -> None:
    error = machinery_error(exc, stage)
    assert type(error) is expected
    assert error.__cause__ is exc
    ours = WorkerCrashedError("lost")
    assert machinery_error(ours, stage) is ours  # one of ours keeps its type


# -- addresses, own clusters, worker loss, shutdown ------------------------------------------


def test_scheduler_address_from_the_environment(cluster: Any, client: Any) -> None:
    address = cluster.scheduler_address
    config = ParallelConfig.from_env(
        environ={
            "CE_PARALLEL": "on,dask",
            "CE_PARALLEL_FULL": "1",
            "CE_PARALLEL_DASK_ADDRESS": address,
        }
    )
    assert config.dask_address == address
    ex = create_executor(config)
    assert isinstance(ex, DaskExecutor)
    try:
        assert ex.map(square, range(30)) == [i * i for i in range(30)]
        assert ex.client is not client
        assert ex.client.scheduler.address == address
        assert ex.workers == CLUSTER_WORKERS
    finally:
        ex.shutdown()
    assert ex.client is None
    # the client the executor opened is closed; the cluster it connected to keeps running
    assert client.submit(abs, -4, pure=False).result() == 4


def test_own_cluster_recovers_from_a_killed_worker_and_leaves_nothing() -> None:
    import dask

    recorder = Recorder()
    before = snapshot()
    items = [(i, 5, os.getpid()) for i in range(12)]
    ex = DaskExecutor(ParallelConfig(telemetry=recorder), max_workers=2)
    try:
        # without retries the first lost worker is reported at once (dask retries 3 times by
        # default, each retry killing another worker here)
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            assert ex.map(square, range(10)) == [i * i for i in range(10)]
            # a LocalCluster of its own, sized from the budget: 2 processes, 1 thread each
            assert sorted(ex.client.nthreads().values()) == [1, 1]
            assert len(worker_children()) > before.children  # the leak check below can fail
            assert ex.map(exit_in_worker, items, chunksize=2) == list(range(12))
    finally:
        ex.shutdown()
    (fallback,) = recorder.of("fallback")
    assert fallback["cause"] == "WorkerCrashedError"
    assert 2 in fallback["chunks"]  # the chunk holding item 5
    assert ex.metrics.fallbacks == 1
    assert [run["fallbacks"] for run in recorder.of("run")] == [0, 1]
    assert ex.client is None
    assert_no_leaks(before)
    with pytest.raises(RuntimeError, match="shut down"):
        ex.map(square, [1])


# -- import weight and the scheduler's CPU allocation ----------------------------------------


def test_importing_ce_parallel_never_imports_dask() -> None:
    code = (
        "import sys, ce_parallel\n"
        "from ce_parallel.strategies import strategy_class\n"
        "cls = strategy_class('dask')\n"
        "cls(max_workers=1)\n"
        "ce_parallel.DaskExecutor\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == ""


PARALLEL_STRATEGIES = ("threads", "processes", "joblib", "dask")


@pytest.mark.parametrize("strategy", PARALLEL_STRATEGIES)
def test_slurm_cpus_per_task_sets_the_workers_of_every_strategy(
    strategy: str, tmp_path: Path
) -> None:
    # sbatch --cpus-per-task=4 on a 64-core node: 4 workers, whatever the strategy
    budget = cpu_budget(
        environ={"SLURM_CPUS_PER_TASK": "4"},
        sysfs_root=str(tmp_path),
        machine_count=64,
        affinity_count=64,
    )
    assert (budget.count, budget.limited_by) == (4, "SLURM_CPUS_PER_TASK")
    ex = strategy_class(strategy)(resources=Resources(budget=budget))
    assert ex.workers == 4
    ex.shutdown()


def test_slurm_allocation_below_this_machine_limits_the_budget() -> None:
    machine = cpu_budget(environ={})
    budget = cpu_budget(environ={"SLURM_CPUS_PER_TASK": "1"})
    assert budget.count == min(1, machine.count) == 1
    ex = create_executor(
        ParallelConfig(enabled=True, strategy="dask", full_matrix=True),
        resources=Resources(budget=budget),
    )
    assert ex.workers == 1
    ex.shutdown()
