"""Objects many chunks share reach each process worker once per pool, keyed by content.

Both ``processes`` and ``joblib`` are run through every worker-side test.

A worker counts the shared objects it unpickles (``shared_objects.worker_loads``): with one
object in every item, or bound into ``fn``, each worker unpickles it once however many chunks
and maps it runs; an object changed between maps is sent again; the files the objects travel
in stay bounded and go with the executor, also after a killed worker or a killed parent.
"""

from __future__ import annotations

import functools
import os
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from leakcheck import files_left_by_a_killed_process
from machines import fake_machine

from ce_parallel import ParallelConfig, ParallelExecutor, create_executor, shared_objects
from ce_parallel.heuristics import SHARED_ARRAY_MIN_BYTES, SHARED_OBJECT_MIN_BYTES
from ce_parallel.shared_objects import (
    ObjectStore,
    bound_objects,
    find_shared,
    object_files,
    worker_loads,
)

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")

PARENT = os.getpid()


class Model:
    """Stands for a fitted model: a payload above the threshold, a weight to compute with."""

    def __init__(self, weight: float, size: int = 2 * SHARED_OBJECT_MIN_BYTES) -> None:
        self.weight = weight
        self.blob = bytes(size)
        self.calls = 0

    def predict(self, x: float) -> tuple[int, int, int, float]:
        return _seen(self, x)


def _seen(model: Model, x: float) -> tuple[int, int, int, float]:
    """(pid, shared objects unpickled by this process, id of the model here, result)."""
    return os.getpid(), worker_loads(), id(model), model.weight * x


def _from_item(item: tuple[int, dict[str, Any]]) -> tuple[int, int, int, float]:
    x, state = item
    return _seen(state["model"], float(x))


def _bound(model: Model, x: float) -> tuple[int, int, int, float]:
    return _seen(model, x)


def _mutating(item: tuple[int, Model]) -> int:
    _, model = item
    model.calls += 1
    return model.calls


@pytest.fixture(params=["processes", "joblib"])
def executor(request: pytest.FixtureRequest) -> Iterator[ParallelExecutor]:
    ex = create_executor(ParallelConfig(enabled=True, strategy=request.param, max_workers=2))
    try:
        yield ex
    finally:
        ex.shutdown()


def _items(model: Model, n: int = 12) -> list[tuple[int, dict[str, Any]]]:
    return [(x, {"model": model, "row": x}) for x in range(n)]


def _once_per_worker(seen: list[tuple[int, int, int, float]]) -> dict[int, int]:
    """pid -> shared objects that worker had unpickled; one model object per worker."""
    by_pid: dict[int, set[tuple[int, int]]] = {}
    for pid, loads, address, _ in seen:
        by_pid.setdefault(pid, set()).add((loads, address))
    assert PARENT not in by_pid, "the map ran in the caller's process"
    for pid, states in by_pid.items():
        # the count never moved during the map and every item saw the same object
        assert len(states) == 1, (pid, states)
    return {pid: next(iter(states))[0] for pid, states in by_pid.items()}


def _warmed(executor: Any, fn: Any, items: list[Any], expected: list[float]) -> None:
    """Run a pool's first map of these objects (the caller may run some of it while the
    workers warm up) and wait until every worker has loaded them."""
    assert [r[3] for r in executor.map(fn, items, chunksize=1)] == expected
    assert executor.wait_until_warm(60)


@pytest.mark.timeout(120)
def test_an_object_in_every_item_is_unpickled_once_per_worker_across_maps(
    executor: ParallelExecutor,
) -> None:
    model = Model(2.0)
    expected = [2.0 * x for x in range(12)]
    _warmed(executor, _from_item, _items(model), expected)
    for _ in range(2):
        seen = executor.map(_from_item, _items(model), chunksize=1)
        assert [r[3] for r in seen] == expected
        # loaded once by the warm-up, never again
        assert set(_once_per_worker(seen).values()) == {1}, "a warm worker unpickled it again"
    assert executor.metrics.fallbacks == 0
    assert len(object_files(PARENT)) == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shape", ["partial", "method", "closure"])
def test_an_object_bound_into_fn_is_unpickled_once_per_worker(
    executor: ParallelExecutor, shape: str
) -> None:
    model = Model(3.0)
    if shape == "partial":
        fn: Any = functools.partial(_bound, model)
    elif shape == "method":
        fn = model.predict
    else:

        def fn(x: float) -> tuple[int, int, int, float]:
            return _seen(model, x)

    expected = [3.0 * x for x in range(10)]
    _warmed(executor, fn, list(range(10)), expected)
    for _ in range(2):
        seen = executor.map(fn, list(range(10)), chunksize=1)
        assert [r[3] for r in seen] == expected
        assert set(_once_per_worker(seen).values()) == {1}
    assert executor.metrics.fallbacks == 0


@pytest.mark.timeout(120)
def test_an_object_changed_between_maps_is_sent_again(executor: ParallelExecutor) -> None:
    model = Model(1.0)
    assert [r[3] for r in executor.map(_from_item, _items(model), chunksize=1)] == [
        float(x) for x in range(12)
    ]
    model.weight = 5.0  # same object, new content
    assert [r[3] for r in executor.map(_from_item, _items(model), chunksize=1)] == [
        5.0 * x for x in range(12)
    ]
    assert executor.metrics.fallbacks == 0


@pytest.mark.timeout(120)
def test_a_worker_keeps_what_its_items_changed_in_the_shared_object(
    executor: ParallelExecutor,
) -> None:
    # as in the serial loop, where every item sees the one object, counts only go up on a
    # worker; a fresh copy per chunk would restart them at 1 for every chunk
    model = Model(1.0)
    _warmed(
        executor, _from_item, [(x, {"model": model}) for x in range(8)], [*map(float, range(8))]
    )
    got = executor.map(_mutating, [(x, model) for x in range(8)], chunksize=1)
    assert sorted(got) != [1] * 8
    assert model.calls == 0  # the caller's object is not the workers'


@pytest.mark.timeout(120)
def test_the_store_keeps_a_bounded_number_of_files(
    executor: ParallelExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_objects, "STORE_MAX_FILES", 2)
    for weight in range(6):
        model = Model(float(weight))
        got = executor.map(_from_item, _items(model, 4), chunksize=1)
        assert [r[3] for r in got] == [float(weight) * x for x in range(4)]
        # (a running warm-up keeps the files it loads)
        assert executor.wait_until_warm(60)
        assert len(object_files(PARENT)) <= 2
    executor.shutdown()
    assert object_files(PARENT) == []


def _crash_once(parent: int, item: tuple[int, dict[str, Any]]) -> float:
    x, state = item
    if x == 2 and os.getpid() != parent:
        os._exit(1)  # only in a worker: the serial re-run in the parent succeeds
    return state["model"].weight * x


@pytest.mark.timeout(120)
def test_a_killed_worker_falls_back_and_the_next_pool_shares_again(
    executor: ParallelExecutor,
) -> None:
    model = Model(2.0)
    expected = [2.0 * x for x in range(12)]
    _warmed(executor, _from_item, _items(model), expected)
    got = executor.map(functools.partial(_crash_once, PARENT), _items(model, 6), chunksize=1)
    assert got == [2.0 * x for x in range(6)]
    assert executor.metrics.fallbacks == 1
    _warmed(executor, _from_item, _items(model), expected)  # the fresh pool
    seen = executor.map(_from_item, _items(model), chunksize=1)
    assert [r[3] for r in seen] == [2.0 * x for x in range(12)]
    assert set(_once_per_worker(seen).values()) == {1}  # the fresh pool's workers
    assert executor.metrics.fallbacks == 1
    executor.shutdown()
    assert object_files(PARENT) == []


KILLED_PARENT = """
import os, time
from ce_parallel import ParallelConfig, create_executor

class Model:
    def __init__(self):
        self.blob = bytes({size})

def slow(item):
    time.sleep(60)
    return item[0]

ex = create_executor(ParallelConfig(enabled=True, strategy="processes", max_workers=2))
print(os.getpid(), flush=True)
model = Model()
ex.map(slow, [(i, model) for i in range(4)], chunksize=1)
"""


@pytest.mark.timeout(120)
def test_object_files_of_a_killed_process_are_removed() -> None:
    script = textwrap.dedent(KILLED_PARENT.format(size=2 * SHARED_OBJECT_MIN_BYTES))
    assert files_left_by_a_killed_process(script, object_files) == []


# -- what is shared ------------------------------------------------------------------------


def test_bound_objects_of_each_callable_shape() -> None:
    model = Model(1.0)
    assert bound_objects(functools.partial(_bound, model)) == [model]
    assert bound_objects(functools.partial(functools.partial(_bound), model=model)) == [model]
    assert bound_objects(model.predict) == [model]

    def closure(x: float) -> Any:
        return model, x

    assert bound_objects(closure) == [model]
    assert bound_objects(_bound) == []
    assert bound_objects(len) == []


def test_find_shared_counts_objects_met_in_two_items() -> None:
    model, other = Model(1.0), Model(2.0)
    items = [(i, {"model": model, "own": Model(0.0, 8), "array": np.zeros(3)}) for i in range(4)]
    assert find_shared(_from_item, items) == [model]
    # met in one item only, or containers and arrays shared by all: nothing to share
    assert find_shared(_from_item, [(0, {"m": other})]) == []
    shared_list, array = [1, 2], np.zeros(3)
    assert find_shared(_from_item, [(shared_list, array, "s")] * 3) == []


def test_small_objects_and_objects_holding_large_arrays_stay_in_the_chunks() -> None:
    store = ObjectStore()
    try:
        small = Model(1.0, size=SHARED_OBJECT_MIN_BYTES // 4)
        big = Model(1.0)
        with_array = Model(1.0, size=8)
        with_array.array = np.zeros(2 * SHARED_ARRAY_MIN_BYTES // 8)  # type: ignore[attr-defined]
        from ce_parallel.shared_arrays import MapSegments

        segments = MapSegments()
        segments.share_objects(store, _bound, [(small, big, with_array)] * 2)
        assert segments.shared_objects == 1  # the big one only
        assert store.files == 1
        segments.release()
    finally:
        store.release()
    assert object_files(PARENT) == []


@pytest.mark.timeout(120)
def test_an_object_holding_a_large_array_still_gets_it_read_only() -> None:
    # (on processes: joblib memory-maps only arrays above its own max_nbytes)
    executor = create_executor(ParallelConfig(enabled=True, strategy="processes", max_workers=2))
    try:
        _read_only_array_in_held_object(executor)
    finally:
        executor.shutdown()


def _read_only_array_in_held_object(executor: ParallelExecutor) -> None:
    holder = Model(1.0, size=8)
    holder.array = np.full(2 * SHARED_ARRAY_MIN_BYTES // 8, 1.0)  # type: ignore[attr-defined]

    def total(item: tuple[int, Model]) -> tuple[float, bool]:
        array = item[1].array  # type: ignore[attr-defined]
        return float(np.sum(array)), bool(array.flags.writeable)

    got = executor.map(total, [(i, holder) for i in range(4)], chunksize=1)
    assert got == [(float(holder.array.size), False)] * 4  # type: ignore[attr-defined]
    assert object_files(PARENT) == []


# -- how arrays are pickled, what a task weighs --------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6.0).reshape(2, 3),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.arange(10)[::3],
        np.array(3.5),
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
        np.array(["x", None], dtype=object),
        np.zeros(2 * 64 * 1024),  # above SMALL_ARRAY_PICKLE_BYTES: protocol 5
    ],
    ids=["c", "fortran", "strided", "0-d", "structured", "object", "large"],
)
def test_results_pickled_with_the_array_reduction_come_back_equal(array: Any) -> None:
    from ce_parallel.worker import pack_results, unpack_results

    packed = pack_results([array, {"nested": [array]}])
    assert packed is not None
    back, nested = unpack_results(packed, 2, 0)
    for got in (back, nested["nested"][0]):
        assert got.dtype == array.dtype and got.shape == array.shape
        if array.flags.c_contiguous or array.flags.f_contiguous:
            # (a strided view comes back contiguous, as with any pickling)
            assert got.flags.f_contiguous == array.flags.f_contiguous
        assert (got == array).all() if array.dtype != object else list(got) == list(array)


def test_small_arrays_use_the_c_reduction_and_large_ones_protocol_5() -> None:
    from ce_parallel.array_reduce import reduce_array
    from ce_parallel.heuristics import SMALL_ARRAY_PICKLE_BYTES

    small = np.zeros(4)
    large = np.zeros(SMALL_ARRAY_PICKLE_BYTES // 8)
    assert reduce_array(small)[0] is small.__reduce__()[0]
    assert reduce_array(large)[0] is large.__reduce_ex__(5)[0]


def test_pickled_size_counts_left_out_objects_as_a_reference() -> None:
    from ce_parallel.pilot import pickled_size

    model = Model(1.0)
    item = (1, {"model": model})
    full, without = pickled_size(item), pickled_size(item, [model])
    assert full is not None and without is not None
    assert full > 2 * SHARED_OBJECT_MIN_BYTES > 100 > without


def _cheap(item: tuple[int, Model]) -> int:
    return item[0]


def test_every_strategy_that_pickles_work_shares_objects() -> None:
    from ce_parallel.registry import strategy_records

    pickling = {n for n, r in strategy_records().items() if r.pickles_work}
    assert pickling >= {"processes", "joblib", "dask"}
    assert {n for n in pickling if strategy_records()[n].shares_objects} == pickling


@pytest.mark.parametrize(
    ("strategy", "shares"), [("processes", True), ("joblib", True), ("joblib", False)]
)
def test_the_facade_weighs_a_task_without_objects_its_strategy_sends_once(
    strategy: str, shares: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from ce_parallel import ParallelFacade, facade
    from ce_parallel.costs import MEMORY, Measurement
    from ce_parallel.registry import strategy_records

    records = dict(strategy_records())
    if not shares:
        # a strategy that pickles every task whole (a third-party one, say)
        records[strategy] = dataclasses.replace(records[strategy], shares_objects=False)
        monkeypatch.setattr(facade, "strategy_records", lambda: records)
    assert records[strategy].shares_objects is shares
    model = Model(1.0, size=2 * 1024 * 1024)  # above PROCESS_MAX_TASK_BYTES whole
    items = [(i, model) for i in range(64)]
    MEMORY.remember_fn(
        _cheap,
        Measurement(
            per_item_s=0.01,
            item_bytes=len(model.blob) + 100,
            item_unshared_bytes=100,
        ),
    )
    # no CI here, whatever runs the tests: the CI rule comes before the payload rule
    machine = fake_machine(2)
    front = ParallelFacade(
        ParallelConfig(enabled=True, strategy=strategy, full_matrix=True),
        environ={},
        resources=machine,
    )
    try:
        front.map(_cheap, items)
        decision = front.last_decision
        assert decision is not None
        if shares:
            assert decision.bytes_hint == 100
            assert decision.reason != "payload_too_large"
        else:
            assert decision.bytes_hint == len(model.blob) + 100
            assert decision.reason == "payload_too_large"
    finally:
        front.close()
        MEMORY.clear()


@pytest.mark.timeout(120)
def test_joblib_pickles_the_shared_objects_once_per_map_and_unpins_them_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ce_parallel.strategies import joblib as joblib_strategy

    dumped: list[int] = []
    real = joblib_strategy.dump_object

    def counting(obj: Any) -> bytes:
        dumped.append(id(obj))
        return real(obj)

    monkeypatch.setattr(joblib_strategy, "dump_object", counting)
    executor = create_executor(ParallelConfig(enabled=True, strategy="joblib", max_workers=2))
    try:
        model = Model(2.0)
        expected = [2.0 * x for x in range(12)]
        _warmed(executor, _from_item, _items(model), expected)
        assert dumped == [id(model)]  # the warm-up's sharing served the map's chunks
        seen = executor.map(_from_item, _items(model), chunksize=1)
        assert [r[3] for r in seen] == expected
        assert dumped == [id(model)] * 2
        store = executor._store  # type: ignore[attr-defined]
        assert [entry.users for entry in store._entries.values()] == [0]
    finally:
        executor.shutdown()
