"""Every strategy keeps the contract: the serial loop's results, in order, each item once."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from workfns import (
    add_one,
    boom_at,
    initialized_marker,
    item_size,
    log_item,
    log_then_sleep,
    make_config,
    mark_initialized,
    rng_draw,
    sleep_then_return,
    square,
)

from ce_parallel import ConfigurationError, ParallelExecutor, create_executor
from ce_parallel.registry import strategy_record


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(items=st.lists(st.integers(min_value=-(10**12), max_value=10**12), max_size=200))
def test_results_equal_the_serial_loop(executor: ParallelExecutor, items: list[int]) -> None:
    assert executor.map(square, items) == [square(x) for x in items]


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    items=st.lists(st.text(max_size=5) | st.floats(allow_nan=False) | st.none(), max_size=60),
    chunksize=st.none() | st.integers(min_value=1, max_value=7),
)
def test_any_chunk_size_keeps_values_and_order(
    executor: ParallelExecutor, items: list[object], chunksize: int | None
) -> None:
    assert executor.map(repr, items, chunksize=chunksize) == [repr(x) for x in items]


def test_order_is_kept_when_durations_vary(executor: ParallelExecutor) -> None:
    rng = random.Random(7)
    items = [(i, rng.uniform(0.0, 0.01)) for i in range(40)]
    assert executor.map(sleep_then_return, items, chunksize=1) == list(range(40))


def test_lambdas_and_closures_run(executor: ParallelExecutor) -> None:
    offset = 10
    assert executor.map(lambda x: x + offset, range(20)) == [x + offset for x in range(20)]

    def scale(x: int) -> int:
        return x * offset

    assert executor.map(scale, range(20)) == [x * offset for x in range(20)]


def test_generators_are_accepted(executor: ParallelExecutor) -> None:
    assert executor.map(add_one, (x for x in range(33))) == list(range(1, 34))


def test_empty_input_gives_an_empty_list(executor: ParallelExecutor) -> None:
    assert executor.map(add_one, []) == []
    assert executor.map(add_one, iter(())) == []


def test_items_of_ten_megabytes(executor: ParallelExecutor) -> None:
    items = [bytes([i]) * (10 * 1024 * 1024) for i in range(4)]
    assert executor.map(item_size, items) == [(10 * 1024 * 1024, i) for i in range(4)]


def test_one_executor_serves_fifty_maps(executor: ParallelExecutor) -> None:
    for round_ in range(50):
        items = list(range(round_, round_ + 20))
        assert executor.map(square, items) == [x * x for x in items]
    snap = executor.metrics.snapshot()
    assert snap["tasks_submitted"] == 50 * 20
    assert snap["tasks_completed"] == 50 * 20


def test_user_exception_keeps_its_type_and_names_the_item(executor: ParallelExecutor) -> None:
    with pytest.raises(KeyError) as info:
        executor.map(boom_at, [(i, 13) for i in range(30)], chunksize=4)
    assert info.value.ce_parallel_item_index == 13  # type: ignore[attr-defined]
    assert any("item 13" in note for note in getattr(info.value, "__notes__", [str(info.value)]))
    # the executor stays usable after a user error
    assert executor.map(add_one, range(5)) == [1, 2, 3, 4, 5]


def test_the_first_failing_item_is_reported(executor: ParallelExecutor) -> None:
    with pytest.raises(KeyError) as info:
        executor.map(boom_at, [(i, i if i in (3, 17) else -1) for i in range(20)], chunksize=20)
    assert info.value.ce_parallel_item_index == 3  # type: ignore[attr-defined]


def test_user_errors_are_never_rerun(executor: ParallelExecutor, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    items = [(str(log), i, 11) for i in range(24)]
    with pytest.raises(ValueError):
        executor.map(log_item, items, chunksize=3)
    calls = [int(line) for line in log.read_text().split()]
    assert len(calls) == len(set(calls)), f"an item ran twice: {sorted(calls)}"
    assert 11 in calls
    assert executor.metrics.snapshot()["fallbacks"] == 0


def test_each_item_runs_exactly_once(executor: ParallelExecutor, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    items = [(str(log), i, -1) for i in range(50)]
    assert executor.map(log_item, items) == list(range(50))
    assert sorted(int(line) for line in log.read_text().split()) == list(range(50))


def _started(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def test_timeout_raises_builtin_timeout_error(executor: ParallelExecutor, tmp_path: Path) -> None:
    log = tmp_path / "started.log"
    # 20 rounds of items on every strategy: a map that ignored the timeout would start them all
    if executor.name == "sequential":
        items = [(str(log), i, 0.05) for i in range(80)]
    else:
        items = [(str(log), i, 0.5) for i in range(40)]
    with pytest.raises(TimeoutError):
        executor.map(log_then_sleep, items, timeout=0.2, chunksize=1)
    # the map stopped: counted in items started, not seconds, so a busy machine cannot fail it
    assert _started(log) < len(items)
    assert executor.map(add_one, range(4)) == [1, 2, 3, 4]


def test_seeded_maps_agree_across_strategies(executor: ParallelExecutor) -> None:
    pytest.importorskip("numpy")
    expected = create_executor(make_config("sequential")).map(rng_draw, range(30), seed=42)
    assert executor.map(rng_draw, range(30), seed=42) == expected
    assert executor.map(rng_draw, range(30), seed=43) != expected


def test_worker_initializer_runs_once_per_worker(
    build: Callable[..., ParallelExecutor], tmp_path: Path
) -> None:
    log = tmp_path / "init.log"
    with build(worker_initializer=mark_initialized, worker_init_args=(str(log),)) as ex:
        first = ex.map(initialized_marker, range(40), chunksize=2)
        second = ex.map(initialized_marker, range(40), chunksize=2)
    inits = log.read_text().split()
    assert all(marker is not None for marker in first + second)
    assert len(inits) == len(set(inits)), "an initializer ran twice in one worker"
    assert set(first + second) <= set(inits)
    assert 1 <= len(inits) <= max(1, ex.workers)


def test_bad_arguments_are_rejected_clearly(executor: ParallelExecutor) -> None:
    with pytest.raises(TypeError, match="callable"):
        executor.map(42, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="chunksize"):
        executor.map(add_one, [1, 2], chunksize=0)
    with pytest.raises(ConfigurationError, match="timeout"):
        executor.map(add_one, [1, 2], timeout=-1)


def test_a_shut_down_executor_refuses_work(executor: ParallelExecutor) -> None:
    executor.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        executor.map(add_one, [1])


def test_context_manager_releases_the_pool(
    strategy: str, checked: Callable[[ParallelExecutor], ParallelExecutor], no_leaks: None
) -> None:
    # an executor of its own (on dask: its own LocalCluster), checked as the fixture's are
    with checked(create_executor(make_config(strategy))) as ex:
        assert ex.map(add_one, range(10)) == list(range(1, 11))
    assert ex.name == strategy or strategy == "auto"
    assert ex.metrics.fallbacks == 0


def _holds_a_lock() -> Callable[[int], int]:
    lock = threading.Lock()

    def locked_square(x: int) -> int:
        with lock:
            return x * x

    return locked_square


@pytest.mark.expects_fallback
def test_unpicklable_work_falls_back_only_where_work_is_pickled(
    executor: ParallelExecutor,
) -> None:
    # the opt-out of the suite's checks: this map runs serially on purpose where work must be
    # pickled, and stays healthy where it need not be
    assert executor.map(_holds_a_lock(), range(12)) == [x * x for x in range(12)]
    record = strategy_record(executor.name)
    expected = 1 if record.pickles_work and not record.chooses else 0
    if not record.chooses:
        assert executor.metrics.fallbacks == expected


@pytest.mark.expects_fallback
@pytest.mark.parametrize("chunksize", [1, 4])
def test_a_result_that_cannot_be_unpickled_names_its_item(
    strategy: str, build: Callable[..., ParallelExecutor], chunksize: int
) -> None:
    # the result of item 3 pickles in the worker and fails to rebuild in the caller; with
    # chunks of 4 it is not the first item of its chunk, and the index is still exact
    record = strategy_record(strategy)
    if not record.pickles_work or record.chooses:
        pytest.skip("results do not cross a process boundary on this strategy")
    from faults import faultfns

    from ce_parallel import SerializationError

    with build(fallback="raise") as ex:
        with pytest.raises(SerializationError) as info:
            ex.map(faultfns.unrebuildable_at_3, range(8), chunksize=chunksize)
        assert info.value.item_index == 3  # type: ignore[attr-defined]
        assert 3 in info.value.incomplete
        assert ex.map(abs, [-1, -2]) == [1, 2]


def test_metrics_snapshot_has_the_documented_keys(executor: ParallelExecutor) -> None:
    executor.map(square, range(100))
    snap = executor.metrics.snapshot()
    for key in (
        "tasks_submitted",
        "tasks_completed",
        "failures",
        "fallbacks",
        "total_duration",
        "max_workers",
        "worker_utilisation_pct",
    ):
        assert key in snap
    assert snap["tasks_completed"] == 100
    assert 0.0 <= snap["worker_utilisation_pct"] <= 100.0
    executor.metrics.reset()
    assert executor.metrics.snapshot()["tasks_completed"] == 0


def test_cancel_from_another_thread_stops_the_map(
    executor: ParallelExecutor, tmp_path: Path
) -> None:
    from ce_parallel import MapCancelledError

    log = tmp_path / "started.log"
    items = [(str(log), i, 0.1) for i in range(60)]
    timer = threading.Timer(0.2, executor.cancel)
    timer.start()
    try:
        with pytest.raises(MapCancelledError):
            executor.map(log_then_sleep, items, chunksize=1)
    finally:
        timer.cancel()
    assert _started(log) < len(items)  # stopped early, counted in items rather than seconds
    assert executor.map(add_one, range(3)) == [1, 2, 3]


def test_workers_never_exceed_the_cpu_budget(executor: ParallelExecutor) -> None:
    assert 1 <= executor.workers <= executor.budget.count
    assert executor.workers <= 2  # the suite caps max_workers at 2
    if hasattr(os, "sched_getaffinity"):
        assert executor.workers <= len(os.sched_getaffinity(0))


def test_progress_bar_counts_every_item_and_leaves_no_thread(
    executor: ParallelExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    tqdm_auto = pytest.importorskip("tqdm.auto")
    bars: list[Any] = []
    real = tqdm_auto.tqdm

    class CountingBar(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.counted = 0
            bars.append(self)

        def update(self, n: float | None = 1) -> bool | None:
            self.counted += int(n or 0)
            return super().update(n)

    monkeypatch.setattr(tqdm_auto, "tqdm", CountingBar)
    assert executor.map(square, range(200), progress=True) == [x * x for x in range(200)]
    assert [(bar.total, bar.counted) for bar in bars] == [(200, 200)]


def test_results_only_cloudpickle_can_carry_still_come_back(executor: ParallelExecutor) -> None:
    import gc

    # a closure as a result: the standard pickler refuses it, the pool's cloudpickle takes it
    makers = executor.map(lambda x: lambda: x * 3, range(12))
    assert [make() for make in makers] == [x * 3 for x in range(12)]
    # results of many small objects travel packed; the collector is running again afterwards
    rows = executor.map(lambda x: [{"i": x, "v": [x] * 3} for _ in range(50)], range(20))
    assert rows == [[{"i": x, "v": [x] * 3} for _ in range(50)] for x in range(20)]
    assert gc.isenabled()
