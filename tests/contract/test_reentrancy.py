"""Re-entrancy and concurrency are part of the contract, on every strategy.

An executor or a facade can be used from many threads at once and from inside its own ``fn``
or a telemetry callback; a nested call never waits for itself, no lock is held while user code
runs, and ``timeout=`` bounds the whole call, waiting included. Every test is bounded by
pytest-timeout, so a deadlock fails fast instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from workfns import make_config, sleep_then_return, square

from ce_parallel import ParallelExecutor, ParallelFacade
from ce_parallel.errors import MapCancelledError
from ce_parallel.registry import strategy_records


def _in_process(strategy: str) -> bool:
    return not strategy_records()[strategy].pickles_work


@pytest.mark.timeout(60)
def test_fn_can_call_the_same_executors_map(executor: ParallelExecutor, strategy: str) -> None:
    if not _in_process(strategy):
        pytest.skip("fn is pickled to the workers: it cannot carry the executor")
    assert executor.map(lambda x: sum(executor.map(abs, [x, -x])), range(6)) == [
        2 * x for x in range(6)
    ]


@pytest.mark.timeout(60)
def test_a_telemetry_callback_can_call_the_executors_map(
    build: Callable[..., ParallelExecutor],
) -> None:
    inner: dict[str, Any] = {}
    busy = threading.local()

    def callback(event: str, payload: dict[str, Any]) -> None:
        if getattr(busy, "on", False):
            return
        busy.on = True
        try:
            inner.setdefault("results", []).append(inner["executor"].map(abs, [-1, -2]))
        finally:
            busy.on = False

    executor = build(telemetry=callback)
    inner["executor"] = executor
    try:
        assert executor.map(square, range(5)) == [x * x for x in range(5)]
        assert all(r == [1, 2] for r in inner.get("results", []))
    finally:
        executor.shutdown()


@pytest.mark.timeout(120)
def test_many_threads_share_one_executor(executor: ParallelExecutor) -> None:
    errors: list[BaseException] = []
    results: dict[int, list[int]] = {}

    def use(k: int) -> None:
        try:
            for n in range(3):
                items = list(range(k * 10, k * 10 + 5 + n))
                assert executor.map(square, items) == [x * x for x in items]
            results[k] = executor.map(square, [k])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert results == {k: [k * k] for k in range(6)}


@pytest.mark.timeout(60)
# a timed-out map kills a busy process pool, so the other thread's chunks fall back
@pytest.mark.expects_fallback
def test_timeout_bounds_the_whole_call_waiting_included(executor: ParallelExecutor) -> None:
    # another thread keeps the workers busy for about 15 s
    busy_items = [(i, 0.25) for i in range(120)]
    out: dict[str, Any] = {}

    def hog() -> None:
        try:
            executor.map(sleep_then_return, busy_items, chunksize=2)
        except BaseException as exc:
            out["error"] = exc

    hogger = threading.Thread(target=hog)
    hogger.start()
    time.sleep(0.5)
    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        executor.map(sleep_then_return, [(i, 0.25) for i in range(8)], chunksize=1, timeout=1.0)
    waited = time.monotonic() - started
    executor.cancel()
    hogger.join(30)
    assert not hogger.is_alive()
    # the call ended near its timeout, not when the other thread's work did
    assert waited < 6.0, f"map(timeout=1.0) returned after {waited:.1f} s"


@pytest.mark.timeout(30)
def test_a_facade_map_inside_a_facade_maps_fn_does_not_deadlock() -> None:
    inner = ParallelFacade(environ={})
    outer = ParallelFacade(environ={})
    assert outer.map(lambda x: sum(inner.map(abs, [x, -x])), range(5)) == [0, 2, 4, 6, 8]
    # the same facade, nested in itself
    assert outer.map(lambda x: sum(outer.map(abs, [x, -x])), range(5)) == [0, 2, 4, 6, 8]
    inner.close()
    outer.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["threads", "sequential"])
def test_a_facade_map_nested_in_its_own_parallel_map_runs_in_place(name: str) -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    facade = ParallelFacade(
        make_config(name), telemetry=lambda e, p: records.append((e, p)), environ={}
    )
    try:
        got = facade.map(
            lambda x: sum(facade.map(abs, [x, -x], seconds_per_item=1.0)),
            range(8),
            seconds_per_item=1.0,
        )
        assert got == [2 * x for x in range(8)]
    finally:
        facade.close()


@pytest.mark.timeout(30)
def test_two_threads_using_one_serial_facade_do_not_wait_for_each_other() -> None:
    facade = ParallelFacade(environ={})
    long_items = [(i, 0.3) for i in range(20)]  # about 6 s
    hogger = threading.Thread(target=lambda: facade.map(sleep_then_return, long_items))
    hogger.start()
    time.sleep(0.3)
    assert facade.map(abs, [-1, -2, -3]) == [1, 2, 3]
    # had it waited behind the other thread's map, that map (about 6 s) would be over by now
    still_running = hogger.is_alive()
    facade.close()  # cancels the long map
    hogger.join(10)
    assert still_running, "the 3-item map waited for the other thread's map"


@pytest.mark.timeout(60)
def test_cancel_from_another_thread_ends_every_map_of_the_executor(
    executor: ParallelExecutor, strategy: str
) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            executor.map(sleep_then_return, [(i, 0.2) for i in range(60)], chunksize=2)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.8)
    executor.cancel()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 2 and all(isinstance(e, MapCancelledError) for e in errors), errors


@pytest.mark.timeout(60)
def test_a_map_after_shutdown_raises_and_starts_nothing(
    build: Callable[..., ParallelExecutor], strategy: str
) -> None:
    from leakcheck import assert_no_leaks, snapshot

    from ce_parallel.errors import ExecutorClosedError
    from ce_parallel.executor import MapCall

    executor = build()
    assert executor.map(square, [1, 2, 3]) == [1, 4, 9]
    executor.shutdown()
    shared_client = strategy == "dask"
    before = snapshot(ignore_sockets=shared_client)
    with pytest.raises(ExecutorClosedError, match="shut down"):
        executor.map(square, [1, 2])
    # a map already past map()'s own check when shutdown() ran: shutdown() set its cancel
    # flag; whatever the strategy, it raises and starts no pool
    call = MapCall(square)
    call.cancelled.set()
    with pytest.raises((ExecutorClosedError, MapCancelledError)):
        executor.execute(call, [1, 2], None)
    assert_no_leaks(before, ignore_sockets=shared_client)


@pytest.mark.timeout(60)
def test_fn_can_shut_its_own_executor_down(
    build: Callable[..., ParallelExecutor], strategy: str
) -> None:
    if not _in_process(strategy):
        pytest.skip("fn is pickled to the workers: it cannot carry the executor")
    executor = build()

    def fn(x: int) -> int:
        if x == 3:
            executor.shutdown()
        time.sleep(0.02)
        return x

    with pytest.raises(MapCancelledError):
        executor.map(fn, range(40), chunksize=2)
    assert executor.closed
