"""Large NumPy arrays reach the ``processes`` strategy's workers through shared memory.

A worker sees a read-only view of a segment the map placed once (``writeable`` is False; a
pickled copy would be writeable); segments never outlive their map, the executor, or a crashed
pool; and a process that used the strategy exits without a traceback or a leak warning.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from leakcheck import files_left_by_a_killed_process

from ce_parallel import ParallelConfig, ParallelExecutor, create_executor
from ce_parallel.heuristics import SHARED_ARRAY_MIN_BYTES
from ce_parallel.shared_arrays import segment_files

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")

#: float64 elements of an array twice the threshold (shared) and of one below it (pickled)
LARGE = 2 * SHARED_ARRAY_MIN_BYTES // 8
SMALL = SHARED_ARRAY_MIN_BYTES // 16
PARENT = os.getpid()


def _total(x: Any) -> float:
    return float(np.sum(x))


def _writeable(x: Any) -> bool:
    return bool(x.flags.writeable)


def _pid(x: Any) -> int:
    return os.getpid()


def _nested(item: Any) -> tuple[float, list[bool]]:
    arrays = [*list(item[1].values()), item[0]] if isinstance(item, tuple) else [item]
    return float(sum(np.sum(a) for a in arrays)), [bool(a.flags.writeable) for a in arrays]


def _scaled(factor: Any, x: float) -> tuple[float, bool]:
    return float(np.sum(factor) * x), bool(factor.flags.writeable)


class _Holder:
    def __init__(self, array: Any) -> None:
        self.array = array

    def total(self, x: float) -> tuple[float, bool]:
        return float(np.sum(self.array) + x), bool(self.array.flags.writeable)


def _fail_on_three(x: Any) -> float:
    if float(x[0]) == 3.0:
        raise ValueError("three")
    return float(np.sum(x))


def _crash_on_two(parent: int, x: Any) -> float:
    if float(x[0]) == 2.0 and os.getpid() != parent:
        os._exit(1)  # only in a worker: the serial re-run in the parent succeeds
    return float(np.sum(x))


def _arrays(n: int = 6, size: int = LARGE) -> list[Any]:
    return [np.full(size, float(i)) for i in range(n)]


@pytest.fixture
def executor() -> Iterator[ParallelExecutor]:
    ex = create_executor(ParallelConfig(enabled=True, strategy="processes", max_workers=2))
    try:
        yield ex
    finally:
        ex.shutdown()


def _no_segments_within(seconds: float, pid: int = PARENT) -> list[str]:
    """This process's segments still there after waiting up to ``seconds`` for them to go."""
    deadline = time.monotonic() + seconds
    while segment_files(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return segment_files(pid)


def _serial(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return [fn(item) for item in items]


@pytest.mark.timeout(120)
def test_arrays_as_items_give_the_serial_results_read_only_in_workers(
    executor: ParallelExecutor,
) -> None:
    arrays = _arrays()
    assert executor.map(_total, arrays) == _serial(_total, arrays)
    assert executor.map(_writeable, arrays) == [False] * len(arrays)
    pids = set(executor.map(_pid, arrays))
    assert PARENT not in pids
    assert executor.metrics.fallbacks == 0
    assert segment_files(PARENT) == []


@pytest.mark.timeout(120)
def test_arrays_nested_in_tuples_and_dicts(executor: ParallelExecutor) -> None:
    items = [(a, {"b": a * 2, "c": np.full(LARGE, 7.0)}) for a in _arrays(4)]
    got = executor.map(_nested, items)
    assert [total for total, _ in got] == [total for total, _ in _serial(_nested, items)]
    assert all(flags == [False, False, False] for _, flags in got)
    assert executor.metrics.fallbacks == 0


def _layout(x: Any) -> tuple[float, float, tuple[int, ...], bool]:
    return float(np.sum(x)), float(x.ravel(order="K")[1]), x.shape, bool(x.flags.writeable)


@pytest.mark.timeout(120)
def test_strided_fortran_and_structured_arrays_keep_their_values(
    executor: ParallelExecutor,
) -> None:
    base = np.arange(4 * LARGE, dtype=np.float64)
    records = np.zeros(LARGE, dtype=[("a", "i4"), ("b", "f8")])
    records["a"] = 3
    items = [
        base[::2],
        np.asfortranarray(base.reshape(-1, 4)),
        base.reshape(4, -1)[:, 1:],
        base.astype(np.float32),
    ]
    got = executor.map(_layout, items)
    assert got == [(*_layout(a)[:3], False) for a in items]
    assert executor.map(_records, [records]) == [(*_records(records)[:1], False)]
    assert executor.metrics.fallbacks == 0


def _records(x: Any) -> tuple[int, bool]:
    return int(x["a"].sum()), bool(x.flags.writeable)


@pytest.mark.timeout(120)
def test_arrays_bound_into_fn(executor: ParallelExecutor) -> None:
    big = np.full(LARGE, 0.5)
    partial = functools.partial(_scaled, big)
    assert executor.map(partial, list(range(8))) == [
        (float(np.sum(big)) * x, False) for x in range(8)
    ]
    method = _Holder(big).total
    assert executor.map(method, list(range(8))) == [
        (float(np.sum(big)) + x, False) for x in range(8)
    ]

    def closure(x: float) -> tuple[float, bool]:
        return float(np.sum(big) - x), bool(big.flags.writeable)

    assert executor.map(closure, list(range(8))) == [
        (float(np.sum(big)) - x, False) for x in range(8)
    ]
    assert executor.metrics.fallbacks == 0
    assert segment_files(PARENT) == []


def _where(big: Any, x: int) -> tuple[int, int]:
    return os.getpid(), int(big.__array_interface__["data"][0])


@pytest.mark.timeout(120)
def test_a_worker_maps_a_segment_once_for_all_its_chunks(executor: ParallelExecutor) -> None:
    big = np.full(LARGE, 1.0)
    seen = executor.map(functools.partial(_where, big), list(range(16)), chunksize=1)
    addresses: dict[int, set[int]] = {}
    for pid, address in seen:
        addresses.setdefault(pid, set()).add(address)
    assert PARENT not in addresses
    assert all(len(found) == 1 for found in addresses.values()), addresses


@pytest.mark.timeout(60)
def test_importing_ce_parallel_does_not_import_numpy() -> None:
    code = (
        "import sys, ce_parallel, ce_parallel.strategies.processes; print('numpy' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.timeout(120)
def test_small_arrays_still_travel_by_pickle(executor: ParallelExecutor) -> None:
    arrays = _arrays(size=SMALL)
    assert executor.map(_writeable, arrays) == [True] * len(arrays)
    assert executor.map(_total, arrays) == _serial(_total, arrays)
    assert executor.metrics.fallbacks == 0


@pytest.mark.timeout(120)
def test_an_array_changed_in_place_between_maps_gives_new_results(
    executor: ParallelExecutor,
) -> None:
    arrays = _arrays(4)
    big = np.full(LARGE, 1.0)
    partial = functools.partial(_scaled, big)
    assert executor.map(_total, arrays) == _serial(_total, arrays)
    assert executor.map(partial, [1.0, 2.0]) == [(LARGE * 1.0, False), (LARGE * 2.0, False)]
    for a in arrays:
        a += 1.0
    big[:] = 3.0
    assert executor.map(_total, arrays) == _serial(_total, arrays)
    assert executor.map(partial, [1.0, 2.0]) == [(LARGE * 3.0, False), (LARGE * 6.0, False)]
    assert executor.metrics.fallbacks == 0


@pytest.mark.timeout(120)
def test_no_segment_left_after_an_error_raised_by_fn(executor: ParallelExecutor) -> None:
    with pytest.raises(ValueError, match="three"):
        executor.map(_fail_on_three, _arrays(8), chunksize=1)
    # chunks dropped after the error may still be running: their segments go when they end
    assert _no_segments_within(30.0) == []
    assert executor.map(_writeable, _arrays(4)) == [False] * 4
    assert executor.metrics.fallbacks == 0


@pytest.mark.timeout(120)
def test_no_segment_left_after_shutdown() -> None:
    ex = create_executor(ParallelConfig(enabled=True, strategy="processes", max_workers=2))
    assert ex.map(_writeable, _arrays(4)) == [False] * 4
    ex.shutdown()
    assert segment_files(PARENT) == []


@pytest.mark.timeout(120)
def test_no_segment_left_after_a_killed_worker(executor: ParallelExecutor) -> None:
    arrays = _arrays(6)
    # the parent's pid is bound here: a worker importing this module has its own PARENT
    got = executor.map(functools.partial(_crash_on_two, PARENT), arrays, chunksize=1)
    assert got == _serial(_total, arrays)
    assert executor.metrics.fallbacks == 1
    assert _no_segments_within(30.0) == []
    # the next map runs on a fresh pool, shared again
    assert executor.map(_writeable, arrays) == [False] * len(arrays)
    assert executor.metrics.fallbacks == 1


CHILD = """
import os, sys
import numpy as np
from ce_parallel import ParallelConfig, create_executor

def total(x):
    return float(np.sum(x))

def writeable(x):
    return x.flags.writeable

arrays = [np.full({size}, float(i)) for i in range(4)]
ex = create_executor(ParallelConfig(enabled=True, strategy="processes", max_workers=2))
assert ex.map(total, arrays) == [float(np.sum(a)) for a in arrays]
assert ex.map(writeable, arrays) == [False] * 4
print(os.getpid(), flush=True)
if {shutdown}:
    ex.shutdown()
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shutdown", [True, False], ids=["shutdown", "left-open"])
def test_a_process_using_the_strategy_exits_cleanly(shutdown: bool) -> None:
    script = textwrap.dedent(CHILD.format(size=LARGE, shutdown=shutdown))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "leaked" not in done.stderr
    child = int(done.stdout.split()[0])
    assert _no_segments_within(10.0, child) == []


KILLED_PARENT = """
import os, time
import numpy as np
from ce_parallel import ParallelConfig, create_executor

def slow(x):
    time.sleep(60)
    return float(x[0])

ex = create_executor(ParallelConfig(enabled=True, strategy="processes", max_workers=2))
print(os.getpid(), flush=True)
ex.map(slow, [np.full({size}, float(i)) for i in range(4)])
"""


@pytest.mark.timeout(120)
def test_segments_of_a_killed_process_are_removed() -> None:
    # the workers notice their parent is gone, then the resource tracker removes the files
    script = textwrap.dedent(KILLED_PARENT.format(size=LARGE))
    assert files_left_by_a_killed_process(script, segment_files) == []


def test_a_stream_shares_large_arrays_and_leaves_no_segment(executor: ParallelExecutor) -> None:
    arrays = _arrays(8)
    assert list(executor.imap(_writeable, arrays)) == [False] * 8
    assert sorted(executor.imap_unordered(np.sum, arrays)) == sorted(_serial(np.sum, arrays))
    assert _no_segments_within(5.0) == []


def test_the_futures_view_shares_large_arrays_and_leaves_no_segment(
    executor: ParallelExecutor,
) -> None:
    arrays = _arrays(4)
    with executor.as_executor() as view:
        assert view.submit(_writeable, arrays[0]).result(timeout=60) is False
        assert list(view.map(_writeable, arrays)) == [False] * 4
        assert [f.result(timeout=60) for f in [view.submit(np.sum, a) for a in arrays]] == [
            float(np.sum(a)) for a in arrays
        ]
    assert _no_segments_within(5.0) == []
