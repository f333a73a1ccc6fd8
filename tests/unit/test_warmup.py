"""While a pool's workers load a map's shared objects, the caller runs the map's first items.

The objects here block their own unpickling in a worker until the test creates a flag file, so
the warm-up lasts exactly as long as each test wants, whatever the machine's speed: every item
runs exactly once, in input order, and the pool gets only what the caller left.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ce_parallel import ParallelConfig, create_executor
from ce_parallel.heuristics import SHARED_OBJECT_MIN_BYTES
from ce_parallel.warmup import WarmUps

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")

PARENT = os.getpid()
#: What the caller-side function of the hand-over test needs (never used in a worker).
_IN_PARENT: dict[str, Any] = {}


class SlowToLoad:
    """A model whose unpickling in a worker waits until ``flag`` exists (the warm-up)."""

    def __init__(self, flag: Path) -> None:
        self.flag = str(flag)
        self.blob = bytes(2 * SHARED_OBJECT_MIN_BYTES)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.flag) and time.monotonic() < deadline:
            time.sleep(0.01)


def _where(item: tuple[int, SlowToLoad]) -> tuple[int, int]:
    return item[0], os.getpid()


def _hand_over_at_3(item: tuple[int, SlowToLoad]) -> tuple[int, int]:
    index, model = item
    time.sleep(0.005)  # items of a few ms: the caller's blocks hold a few items each
    if os.getpid() == PARENT and index == 3:
        Path(model.flag).touch()  # the warm-up may end now
        assert _IN_PARENT["executor"].wait_until_warm(60)
    return index, os.getpid()


def _fails_at_5(item: tuple[int, SlowToLoad]) -> int:
    _IN_PARENT.setdefault("ran", []).append(item[0])
    if item[0] == 5:
        raise KeyError("item 5")
    return item[0]


@pytest.fixture(params=["processes", "joblib"])
def setting(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Path, list]]:
    """(executor, flag, run records); the flag is created before shutdown in any case."""
    runs: list[dict[str, Any]] = []

    def keep(event: str, payload: dict[str, Any]) -> None:
        if event == "run":
            runs.append(payload)

    config = ParallelConfig(
        enabled=True, strategy=request.param, max_workers=2, telemetry=keep, full_matrix=True
    )
    executor = create_executor(config)
    flag = tmp_path / "loaded"
    try:
        yield executor, flag, runs
    finally:
        flag.touch()
        executor.shutdown()
        _IN_PARENT.clear()


@pytest.mark.timeout(120)
def test_the_caller_runs_the_map_while_the_workers_load_its_objects(
    setting: tuple[Any, Path, list],
) -> None:
    executor, flag, runs = setting
    model = SlowToLoad(flag)
    items = [(i, model) for i in range(12)]
    first = executor.map(_where, items, chunksize=1)
    assert [i for i, _ in first] == list(range(12))
    assert {pid for _, pid in first} == {PARENT}  # the warm-up never ended meanwhile
    assert runs[-1]["caller_items"] == 12
    assert not executor.wait_until_warm(0)
    flag.touch()
    assert executor.wait_until_warm(60)
    second = executor.map(_where, items, chunksize=1)
    assert [i for i, _ in second] == list(range(12))
    assert PARENT not in {pid for _, pid in second}  # warm: all of it on the workers
    assert runs[-1]["caller_items"] == 0
    assert executor.metrics.fallbacks == 0


@pytest.mark.timeout(120)
def test_the_pool_takes_over_once_warm_and_no_item_runs_twice(
    setting: tuple[Any, Path, list],
) -> None:
    executor, flag, runs = setting
    _IN_PARENT["executor"] = executor
    model = SlowToLoad(flag)
    got = executor.map(_hand_over_at_3, [(i, model) for i in range(24)], chunksize=1)
    assert [i for i, _ in got] == list(range(24))  # each once, in input order
    pids = [pid for _, pid in got]
    helped = runs[-1]["caller_items"]
    assert 4 <= helped < 24
    assert pids[:helped] == [PARENT] * helped  # the caller ran a prefix
    assert PARENT not in pids[helped:]  # and the workers all the rest
    assert executor.metrics.fallbacks == 0


@pytest.mark.timeout(120)
def test_a_user_error_in_an_item_the_caller_runs_stops_the_map_there(
    setting: tuple[Any, Path, list],
) -> None:
    executor, flag, _ = setting
    model = SlowToLoad(flag)
    with pytest.raises(KeyError) as info:
        executor.map(_fails_at_5, [(i, model) for i in range(12)], chunksize=1)
    assert info.value.ce_parallel_item_index == 5  # type: ignore[attr-defined]
    assert _IN_PARENT["ran"] == [0, 1, 2, 3, 4, 5]  # nothing after it ran, nothing twice
    assert executor.metrics.fallbacks == 0
    flag.touch()
    assert executor.wait_until_warm(60)
    assert executor.map(_where, [(0, model)] * 3, chunksize=1)[0][0] == 0


class _Ran:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def test_warm_ups_chain_until_every_worker_had_one() -> None:
    from concurrent.futures import Future

    sent: list[Future[Any]] = []

    def submit() -> Future[Any]:
        sent.append(Future())
        return sent[-1]

    finished: list[bool] = []
    warm = WarmUps(total=3, at_once=1, finished=lambda: finished.append(True))
    assert not sent and not warm.ready()  # nothing before start
    warm.start(submit)
    assert len(sent) == 1 and not warm.ready()
    sent[0].set_result(_Ran(101))
    assert len(sent) == 2 and not warm.ready()  # the next one only once the first ended
    sent[1].set_result(_Ran(101))  # the same worker again: one more is sent
    assert len(sent) == 3 and not warm.ready()
    sent[2].set_exception(RuntimeError("a warm-up failed"))  # done all the same
    assert len(sent) == 4 and not warm.ready()
    sent[3].set_result(_Ran(102))
    assert len(sent) == 5 and not warm.ready()
    sent[4].set_result(_Ran(103))
    assert warm.ready() and finished == [True]  # three workers warm


def test_warm_ups_give_up_after_twice_as_many_tries_as_workers() -> None:
    from concurrent.futures import Future

    sent: list[Future[Any]] = []

    def submit() -> Future[Any]:
        sent.append(Future())
        return sent[-1]

    warm = WarmUps(total=2, at_once=1)
    warm.start(submit)
    for _ in range(4):
        sent[-1].set_result(_Ran(7))  # always the same worker
    assert len(sent) == 4 and warm.ready()


def test_warm_ups_on_a_pool_that_refuses_work_are_ready_at_once() -> None:
    def submit() -> Any:
        raise RuntimeError("cannot schedule new futures after shutdown")

    warm = WarmUps(total=2, at_once=2)
    warm.start(submit)
    assert warm.ready()
    finished: list[bool] = []
    abandoned = WarmUps(total=2, at_once=1, finished=lambda: finished.append(True))
    abandoned.abandon()
    assert abandoned.ready() and finished == [True]


def _nested(item: tuple[int, SlowToLoad]) -> tuple[int, list[int]]:
    # a library inside fn mapping on the same executor, while its workers still warm up
    inner = _IN_PARENT["executor"].map(abs, [-1, -2, -3], chunksize=1)
    return item[0], inner


@pytest.mark.timeout(120)
def test_threads_sharing_a_warming_executor_and_maps_inside_fn_all_run_in_their_callers(
    setting: tuple[Any, Path, list],
) -> None:
    import threading

    executor, flag, _ = setting
    _IN_PARENT["executor"] = executor
    model = SlowToLoad(flag)
    got: dict[str, Any] = {}

    def caller(name: str) -> None:
        got[name] = executor.map(_nested, [(i, model) for i in range(6)], chunksize=1)
        got[name + " thread"] = threading.current_thread().name

    threads = [threading.Thread(target=caller, args=(f"t{k}",)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for k in range(3):
        assert got[f"t{k}"] == [(i, [1, 2, 3]) for i in range(6)]
    assert executor.metrics.fallbacks == 0
    flag.touch()
    assert executor.wait_until_warm(60)
    assert PARENT not in {pid for _, pid in executor.map(_where, [(0, model)] * 4, chunksize=1)}


@pytest.mark.timeout(120)
def test_a_warm_up_that_fails_to_start_leaves_no_map_waiting(
    setting: tuple[Any, Path, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ce_parallel import shared_arrays
    from ce_parallel.strategies import joblib as joblib_strategy

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("cannot build the warm-up")

    monkeypatch.setattr(shared_arrays.MapSegments, "warm_up_job", broken)
    monkeypatch.setattr(joblib_strategy, "ChunkJob", broken)
    executor, flag, runs = setting
    flag.touch()  # the objects load at once wherever they are unpickled
    model = SlowToLoad(flag)
    got = executor.map(_where, [(i, model) for i in range(8)], chunksize=1)
    assert [i for i, _ in got] == list(range(8))
    assert executor.wait_until_warm(0)  # nothing registered is left pending
    assert runs[-1]["caller_items"] == 0
    assert executor.metrics.fallbacks == 0
