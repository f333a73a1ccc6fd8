"""The engine's collector is woken when it has something to do, not for every chunk that ends."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from ce_parallel.engine import _Arrivals
from ce_parallel.worker import ChunkOutcome

pytestmark = pytest.mark.timeout(30)


def _done(outcome: ChunkOutcome | None = None, error: BaseException | None = None) -> Future:
    fut: Future[ChunkOutcome] = Future()
    fut.set_running_or_notify_cancel()
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(outcome or ChunkOutcome(0, [1], 0.0))
    return fut


def test_chunks_that_succeed_wait_for_the_last_one() -> None:
    arrivals = _Arrivals(3, eager=False)
    first, second, last = _done(), _done(), _done()
    arrivals.put(first)
    arrivals.put(second)
    assert arrivals.take(0.0) == []  # nothing to do yet: no wake
    arrivals.put(last)
    assert arrivals.take(0.0) == [first, second, last]
    assert arrivals.take(0.0) == []


@pytest.mark.parametrize(
    "make",
    [
        lambda: _done(ChunkOutcome(0, None, 0.0, error=ValueError("item"), error_index=0)),
        lambda: _done(ChunkOutcome(0, None, 0.0, machinery_error=OSError("pipe"))),
        lambda: _done(error=RuntimeError("the pool broke")),
    ],
    ids=["user-error", "machinery-error", "failed-future"],
)
def test_a_chunk_that_went_wrong_wakes_the_collector_at_once(make: object) -> None:
    arrivals = _Arrivals(5, eager=False)
    ok = _done()
    arrivals.put(ok)
    bad = make()  # type: ignore[operator]
    arrivals.put(bad)
    assert arrivals.take(0.0) == [ok, bad]


def test_a_cancelled_chunk_wakes_the_collector() -> None:
    arrivals = _Arrivals(4, eager=False)
    fut: Future[ChunkOutcome] = Future()
    fut.add_done_callback(arrivals.put)
    assert fut.cancel()
    assert arrivals.take(0.0) == [fut]


def test_a_progress_bar_is_woken_for_every_chunk() -> None:
    arrivals = _Arrivals(3, eager=True)
    one = _done()
    arrivals.put(one)
    assert arrivals.take(0.0) == [one]
