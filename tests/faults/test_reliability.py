"""Reliability under real use: no silent item loss, typed errors, prompt shutdown, no hang.

Each test bounds itself with pytest-timeout (a hang fails fast) and, where it waits for
something, with a generous wall-clock bound of the form "returns within N s instead of
waiting for the work": never a speed assertion.
"""

from __future__ import annotations

import pickle
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from faults import faultfns
from leakcheck import assert_no_leaks, snapshot
from workfns import make_config

from ce_parallel import ParallelConfig, ParallelFacade, create_executor
from ce_parallel.errors import (
    ExecutorClosedError,
    MapCancelledError,
    ParallelExecutionError,
    RemoteError,
    SerializationError,
)
from ce_parallel.executor import MapCall
from ce_parallel.registry import strategy_class
from ce_parallel.worker import ChunkOutcome

POOLED = ["threads", "processes", "joblib"]
EVERY = ["sequential", *POOLED]


def _records() -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    records: list[tuple[str, dict[str, Any]]] = []
    return records, lambda event, payload: records.append((event, payload))


def _runs(path: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for line in path.read_text().split():
        counts[int(line)] = counts.get(int(line), 0) + 1
    return counts


# -- every chunk returns as many results as it was given ---------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", [*EVERY, "auto"])
@pytest.mark.parametrize("bad", [0, 5])
def test_stop_iteration_from_fn_propagates_with_its_index(
    strategy: str, bad: int, tmp_path: Path
) -> None:
    log = tmp_path / "runs"
    items = [(str(log), i, bad) for i in range(12)]
    with create_executor(make_config(strategy)) as ex, pytest.raises(StopIteration) as info:
        ex.map(faultfns.next_on_empty_at, items, chunksize=3)
    assert info.value.ce_parallel_item_index == bad  # type: ignore[attr-defined]
    # the pilot of auto must not re-run an item; nothing ends early and shifts later results
    assert all(count == 1 for count in _runs(log).values()), _runs(log)


def _short_chunks(strategy: str) -> type[Any]:
    """The strategy's class, with every chunk of more than one item losing its last result."""
    base = strategy_class(strategy)

    class Short(base):  # type: ignore[misc, valid-type]
        def submit_chunks(self, jobs: list[Any]) -> list[Future[ChunkOutcome]]:
            out = []
            for fut in super().submit_chunks(jobs):
                short: Future[ChunkOutcome] = Future()

                def chain(done: Future[ChunkOutcome], short: Future[ChunkOutcome] = short) -> None:
                    outcome = done.result()
                    results = outcome.take_results()
                    if results is not None and len(results) > 1:
                        outcome.results, outcome.packed = results[:-1], None
                    short.set_result(outcome)

                fut.add_done_callback(chain)
                out.append(short)
            return out

    Short.name = strategy
    return Short


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", POOLED)
@pytest.mark.parametrize("mode", ["serial", "raise"])
def test_a_chunk_with_too_few_results_is_never_passed_on(strategy: str, mode: str) -> None:
    records, record = _records()
    cls = _short_chunks(strategy)
    ex = cls(make_config(strategy, fallback=mode, telemetry=record))
    try:
        if mode == "serial":
            # the short chunks are lost chunks: re-run serially, and recorded
            assert ex.map(abs, range(-12, 0), chunksize=3) == [abs(x) for x in range(-12, 0)]
            falls = [p for e, p in records if e == "fallback"]
            assert falls and falls[0]["cause"] == "ParallelExecutionError"
        else:
            with pytest.raises(ParallelExecutionError, match="results for 3 items"):
                ex.map(abs, range(-12, 0), chunksize=3)
    finally:
        ex.shutdown()


@pytest.mark.timeout(30)
def test_the_fallback_is_held_to_the_same_count() -> None:
    class Refusing(strategy_class("threads")):  # type: ignore[misc]
        def submit_chunks(self, jobs: list[Any]) -> list[Future[ChunkOutcome]]:
            raise OSError("refused")

    Refusing.name = "threads"
    ex = Refusing(make_config("threads"))
    ex.run_serially = lambda call, work, seeds, **kw: [call.fn(x) for x in work][:-1]
    try:
        with pytest.raises(ParallelExecutionError, match="results for"):
            ex.map(abs, range(10), chunksize=5)
    finally:
        ex.shutdown()


# -- a failed initializer is never skipped -----------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", EVERY)
def test_after_an_initializer_failed_fn_never_runs_without_it(
    strategy: str, tmp_path: Path
) -> None:
    config = make_config(
        strategy,
        worker_initializer=faultfns.init_fails_first,
        worker_init_args=(str(tmp_path / "failed-once"),),
    )
    with create_executor(config) as ex:
        with pytest.raises(RuntimeError, match="failed once"):
            ex.map(faultfns.was_initialized, range(8), chunksize=1)
        for _ in range(3):
            # the initializer runs again where it failed: every item sees it
            assert ex.map(faultfns.was_initialized, range(8), chunksize=1) == [True] * 8


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", EVERY)
def test_an_initializer_that_always_fails_fails_every_map_alike(strategy: str) -> None:
    config = make_config(strategy, worker_initializer=faultfns.init_always_fails)
    with create_executor(config) as ex:
        for _ in range(3):
            with pytest.raises(RuntimeError, match="always fails"):
                ex.map(faultfns.was_initialized, range(6), chunksize=1)


# -- a closure over an executor, pickled into its own map --------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", ["processes", "joblib"])
def test_an_executor_pickled_into_its_own_map_is_a_recorded_fallback(strategy: str) -> None:
    records, record = _records()
    ex = create_executor(make_config(strategy, telemetry=record))
    try:
        with pytest.raises(SerializationError, match="cannot be pickled"):
            pickle.dumps(ex)
        assert ex.map(lambda x: (ex, x)[1] + 1, range(6)) == list(range(1, 7))
        falls = [p for e, p in records if e == "fallback"]
        assert [f["cause"] for f in falls] == ["SerializationError"]
    finally:
        ex.shutdown()


# -- shutdown and close from another thread ----------------------------------------------------


def _run_in_thread(target: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = target()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", EVERY)
@pytest.mark.parametrize("how", ["shutdown", "shutdown-cancel", "facade-close"])
def test_shutdown_from_another_thread_is_prompt_and_so_is_the_map(strategy: str, how: str) -> None:
    # 120 items of 0.25 s on two workers: about 15 s of work, if nothing stopped it
    items = list(range(120))
    if how == "facade-close":
        facade = ParallelFacade(make_config(strategy), environ={})
        thread, out = _run_in_thread(
            lambda: facade.map(faultfns.nap_long, items, chunksize=2, seconds_per_item=1.0)
        )
        stop: Any = facade.close
    else:
        ex = create_executor(make_config(strategy))
        thread, out = _run_in_thread(lambda: ex.map(faultfns.nap_long, items, chunksize=2))
        stop = (lambda: ex.shutdown(cancel=True)) if how == "shutdown-cancel" else ex.shutdown
    time.sleep(1.0)
    started = time.monotonic()
    stop()
    returned = time.monotonic() - started
    thread.join(10.0)
    assert not thread.is_alive(), "the map kept running after shutdown"
    assert returned < 8.0, f"shutdown took {returned:.1f} s"
    assert "result" in out or isinstance(out.get("error"), MapCancelledError), out


@pytest.mark.timeout(30)
def test_a_hanging_initializer_does_not_hold_shutdown_cancel() -> None:
    release = threading.Event()
    config = make_config("threads", worker_initializer=lambda: release.wait(60))
    ex = create_executor(config)
    thread, out = _run_in_thread(lambda: ex.map(abs, range(4)))
    time.sleep(0.3)
    try:
        started = time.monotonic()
        ex.shutdown(cancel=True)
        assert time.monotonic() - started < 5.0
        thread.join(5.0)
        assert not thread.is_alive()
        assert isinstance(out.get("error"), MapCancelledError), out
    finally:
        release.set()


# -- a map that arrives after shutdown ---------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", [*POOLED, "sequential"])
def test_a_map_queued_behind_shutdown_raises_and_starts_nothing(strategy: str) -> None:
    ex = create_executor(make_config(strategy))
    assert ex.map(abs, [-1, -2, -3]) == [1, 2, 3]
    ex.shutdown()
    before = snapshot()
    with pytest.raises(ExecutorClosedError, match="shut down"):
        ex.map(abs, [-1])
    # a map that got past map()'s own check before the shutdown: its execute starts nothing
    call = MapCall(abs)
    if strategy == "sequential":
        call.cancelled.set()  # what shutdown() does to every map it finds running
        with pytest.raises(MapCancelledError):
            ex.execute(call, [-1, -2], None)
    else:
        with pytest.raises(ExecutorClosedError):
            ex.execute(call, [-1, -2], None)
    assert_no_leaks(before)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", POOLED)
def test_maps_racing_a_shutdown_leave_nothing_running(strategy: str) -> None:
    ex = create_executor(make_config(strategy))
    ex.map(abs, [1, 2])
    before = snapshot()
    errors: list[BaseException] = []
    go = threading.Barrier(5)

    def race() -> None:
        go.wait()
        for _ in range(20):
            try:
                ex.map(abs, range(8))
            except (ExecutorClosedError, MapCancelledError) as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=race) for _ in range(4)]
    for t in threads:
        t.start()
    go.wait()
    ex.shutdown()
    for t in threads:
        t.join(20.0)
    assert not any(t.is_alive() for t in threads)
    assert errors, "a map after shutdown returned instead of raising"
    assert_no_leaks(before)


# -- after a timeout or cancel, thread workers take no new item --------------------------------


class _Starts:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, x: int) -> int:
        with self.lock:
            self.times.append(time.monotonic())
        time.sleep(0.2)
        return x

    def after(self, moment: float) -> int:
        with self.lock:
            return sum(1 for t in self.times if t > moment)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["timeout", "cancel", "user-error"])
def test_thread_workers_take_no_new_item_once_their_map_ended(how: str) -> None:
    starts = _Starts()
    ex = create_executor(make_config("threads"))
    try:
        if how == "timeout":
            with pytest.raises(TimeoutError):
                ex.map(starts, range(40), chunksize=10, timeout=0.5)
        elif how == "cancel":
            timer = threading.Timer(0.5, ex.cancel)
            timer.start()
            with pytest.raises(MapCancelledError):
                ex.map(starts, range(40), chunksize=10)
        else:

            def fail_first(x: int) -> int:
                if x == 0:
                    time.sleep(0.3)
                    raise KeyError("first item")
                return starts(x)

            with pytest.raises(KeyError):
                ex.map(fail_first, range(40), chunksize=20)
        ended = time.monotonic()
        time.sleep(1.5)
        # a worker may be inside one item when the map ends; it starts no other
        assert starts.after(ended + 0.05) == 0, starts.after(ended + 0.05)
    finally:
        ex.shutdown()


@pytest.mark.timeout(30)
def test_the_serial_fallback_stops_between_items_on_cancel() -> None:
    class Refusing(strategy_class("threads")):  # type: ignore[misc]
        def submit_chunks(self, jobs: list[Any]) -> list[Future[ChunkOutcome]]:
            raise OSError("refused")

    Refusing.name = "threads"
    starts = _Starts()
    ex = Refusing(make_config("threads"))
    timer = threading.Timer(0.5, ex.cancel)
    timer.start()
    try:
        with pytest.raises(MapCancelledError):
            ex.map(starts, range(40), chunksize=20)
        assert len(starts.times) < 10
    finally:
        ex.shutdown()


# -- errors and results that cannot travel back ------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", ["processes", "joblib"])
@pytest.mark.parametrize(
    ("fn", "type_name"),
    [
        (faultfns.raise_two_arg_at_3, "faults.faultfns.TwoArgError"),
        (faultfns.raise_locked_at_3, "faults.faultfns.LockedError"),
    ],
    ids=["two-arg-init", "holds-a-lock"],
)
def test_an_exception_that_cannot_travel_back_is_a_typed_picklable_error(
    strategy: str, fn: Any, type_name: str
) -> None:
    with create_executor(make_config(strategy)) as ex:
        with pytest.raises(RemoteError) as info:
            ex.map(fn, range(6), chunksize=1)
        error = info.value
        assert error.type_name == type_name
        assert "3" in error.message
        assert "raise_" in error.traceback_text and "Traceback" in error.traceback_text
        assert error.item_index == 3
        assert error.ce_parallel_item_index == 3  # type: ignore[attr-defined]
        again = pickle.loads(pickle.dumps(error))
        assert (again.type_name, again.item_index) == (type_name, 3)
        # the pool is still usable
        assert ex.map(abs, [-1, -2]) == [1, 2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", ["processes", "joblib"])
@pytest.mark.parametrize("chunksize", [1, 2, 4])
def test_a_result_that_cannot_be_unpickled_is_a_serialization_error(
    strategy: str, chunksize: int
) -> None:
    # with chunks of 2 and 4, item 3 is not the first of its chunk: the index is still exact
    with create_executor(make_config(strategy, fallback="raise")) as ex:
        with pytest.raises(SerializationError) as info:
            ex.map(faultfns.unrebuildable_at_3, range(6), chunksize=chunksize)
        assert info.value.item_index == 3  # type: ignore[attr-defined]
        assert "item 3 " in str(info.value)
        assert 3 in info.value.incomplete
        with pytest.raises(SerializationError) as info:
            list(ex.imap(faultfns.unrebuildable_at_3, range(6), chunksize=chunksize))
        assert info.value.item_index == 3  # type: ignore[attr-defined]
        assert ex.map(abs, [-1, -2]) == [1, 2]
    records, record = _records()
    with create_executor(make_config(strategy, telemetry=record)) as ex:
        results = ex.map(faultfns.unrebuildable_at_3, range(6), chunksize=1)
        assert [faultfns.value_of(r) for r in results] == list(range(6))
        falls = [p for e, p in records if e == "fallback"]
        assert [f["cause"] for f in falls] == ["SerializationError"]


# -- a config changed after construction -------------------------------------------------------


BAD_CHANGES = [
    ("max_workers", 0),
    ("timeout", "5"),
    ("timeout", -1),
    ("enabled", "yes"),
    ("fallback", "explode"),
    ("instance_chunk_size", 0),
    ("min_batch_size", -4),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", EVERY)
@pytest.mark.parametrize(("field", "value"), BAD_CHANGES)
def test_a_config_changed_after_construction_is_checked_on_use(
    strategy: str, field: str, value: Any
) -> None:
    from ce_parallel import ConfigurationError

    config = make_config(strategy)
    with create_executor(config) as ex:
        setattr(config, field, value)
        with pytest.raises(ConfigurationError, match=field):
            ex.map(abs, [-1, -2])
    facade = ParallelFacade(make_config(strategy), environ={})
    try:
        facade.map(abs, [-1, -2])  # a warm facade: its executors exist already
        setattr(facade.config, field, value)
        with pytest.raises(ConfigurationError, match=field):
            facade.map(abs, [-1, -2])
        with pytest.raises(ConfigurationError, match=field):
            facade.decide_use_parallel(100)
    finally:
        facade.close()


def test_construction_never_raises_anything_but_a_configuration_error() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ce_parallel import ConfigurationError

    values = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-3, max_value=10**6)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=8)
        | st.sampled_from(["threads", "serial", "raise", "processes", "sequential", "5"])
        | st.lists(st.integers(), max_size=2)
        | st.just(abs)
    )
    fields = [
        "enabled",
        "strategy",
        "max_workers",
        "min_batch_size",
        "min_instances_for_parallel",
        "tiny_workload_threshold",
        "instance_chunk_size",
        "task_size_hint_bytes",
        "force_serial_on_failure",
        "telemetry",
        "worker_initializer",
        "worker_init_args",
        "full_matrix",
        "timeout",
        "fallback",
        "telemetry_path",
        "dask_address",
    ]

    @settings(max_examples=400, deadline=None)
    @given(st.dictionaries(st.sampled_from(fields), values, max_size=5))
    def check(kwargs: dict[str, Any]) -> None:
        try:
            config = ParallelConfig(**kwargs)
        except ConfigurationError:
            return
        # what was accepted is also accepted on use
        assert config.validate() is config

    check()
