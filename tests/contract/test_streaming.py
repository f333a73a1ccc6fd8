"""Every strategy streams and speaks concurrent.futures with the guarantees of ``map``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from leakcheck import assert_no_leaks, snapshot
from workfns import boom_at, log_item, sleep_then_return, square

from ce_parallel import MapCancelledError, ParallelExecutor


def _logged(path: Path) -> list[int]:
    return sorted(int(line) for line in path.read_text().split()) if path.exists() else []


class _Reader:
    """A generator of ``0 .. n-1`` that records how many items have been read from it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.read = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.read += 1
            yield i


# -- imap / imap_unordered ----------------------------------------------------------------


def test_imap_yields_results_in_input_order(executor: ParallelExecutor) -> None:
    rng = random.Random(3)
    items = [(i, rng.uniform(0.0, 0.01)) for i in range(40)]
    assert list(executor.imap(sleep_then_return, iter(items), chunksize=1)) == list(range(40))


def test_imap_equals_the_serial_loop_on_a_generator(executor: ParallelExecutor) -> None:
    assert list(executor.imap(square, (i for i in range(3000)))) == [i * i for i in range(3000)]


def test_imap_unordered_yields_every_result_once(executor: ParallelExecutor) -> None:
    got = list(executor.imap_unordered(square, (i for i in range(500))))
    assert sorted(got) == [i * i for i in range(500)]


def test_imap_of_nothing_is_empty(executor: ParallelExecutor) -> None:
    assert list(executor.imap(square, iter([]))) == []
    assert list(executor.imap_unordered(square, [])) == []


@pytest.mark.parametrize("ordered", [True, False], ids=["imap", "imap_unordered"])
def test_stream_runs_each_item_once(
    executor: ParallelExecutor, tmp_path: Path, ordered: bool
) -> None:
    log = tmp_path / "calls.log"
    items = ((str(log), i, -1) for i in range(120))
    stream = executor.imap if ordered else executor.imap_unordered
    got = list(stream(log_item, items))
    assert sorted(got) == list(range(120))
    assert _logged(log) == list(range(120))


def test_imap_raises_the_user_error_with_its_index_after_the_results_before_it(
    executor: ParallelExecutor,
) -> None:
    seen: list[int] = []
    with pytest.raises(KeyError, match="item 37 is bad") as info:
        for value in executor.imap(boom_at, ((i, 37) for i in range(100)), chunksize=5):
            seen.append(value)
    assert info.value.ce_parallel_item_index == 37  # type: ignore[attr-defined]
    # every chunk before the failing one (items 35..39) was yielded, in order; the serial
    # loop may yield the failing chunk's first items too
    assert seen == list(range(len(seen)))
    assert 35 <= len(seen) <= 37


def test_imap_unordered_raises_the_user_error_with_its_index(executor: ParallelExecutor) -> None:
    with pytest.raises(KeyError) as info:
        list(executor.imap_unordered(boom_at, [(i, 11) for i in range(50)], chunksize=3))
    assert info.value.ce_parallel_item_index == 11  # type: ignore[attr-defined]


def test_a_failing_stream_leaves_the_executor_usable(executor: ParallelExecutor) -> None:
    with pytest.raises(KeyError):
        list(executor.imap(boom_at, [(i, 3) for i in range(20)]))
    assert list(executor.imap(square, range(10))) == [i * i for i in range(10)]


@pytest.mark.parametrize("ordered", [True, False], ids=["imap", "imap_unordered"])
def test_stream_reads_a_generator_lazily(executor: ParallelExecutor, ordered: bool) -> None:
    reader = _Reader(10_000)
    stream = (executor.imap if ordered else executor.imap_unordered)(square, iter(reader))
    assert reader.read == 0  # nothing is read before the first result is asked for
    first = next(stream)
    assert reader.read < reader.n  # the first result came before the input ran out
    if ordered:
        assert first == 0
    rest = list(stream)
    assert sorted([first, *rest]) == [i * i for i in range(reader.n)]
    assert reader.read == reader.n


@pytest.mark.parametrize("how", ["break", "close", "drop"])
def test_early_stop_cancels_the_rest_and_leaves_nothing_behind(
    build: Callable[..., ParallelExecutor], strategy: str, tmp_path: Path, how: str
) -> None:
    shared_client = strategy == "dask"
    ex = build()  # starts nothing yet (on dask: connects the suite's shared cluster first)
    before = snapshot(ignore_sockets=shared_client)
    log = tmp_path / "calls.log"
    try:
        items = ((str(log), i, -1) for i in range(100_000))
        stream = ex.imap(log_item, items, chunksize=2)
        got = list(itertools.islice(stream, 5))
        if how == "close":
            stream.close()
        elif how == "drop":
            del stream
        else:
            for _ in stream:
                break
        assert got == list(range(5))
        # the pool is still there and usable after an early stop
        assert list(ex.imap(square, range(6))) == [0, 1, 4, 9, 16, 25]
    finally:
        ex.shutdown()
    ran = _logged(log)
    assert len(ran) < 1000  # only what was read ahead ran, not the whole input
    assert len(set(ran)) == len(ran)  # and nothing ran twice
    assert_no_leaks(before, ignore_sockets=shared_client)


def test_imap_timeout_counts_from_the_call(executor: ParallelExecutor) -> None:
    items = [(i, 0.3) for i in range(40)]
    with pytest.raises(TimeoutError):
        list(executor.imap(sleep_then_return, items, chunksize=1, timeout=0.2))


def test_imap_checks_its_arguments_at_the_call(executor: ParallelExecutor) -> None:
    with pytest.raises(TypeError):
        executor.imap(42, [1])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        executor.imap(square, [1], chunksize=0)


def test_imap_after_shutdown_raises(build: Callable[..., ParallelExecutor]) -> None:
    ex = build()
    ex.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        ex.imap(square, [1, 2])


# -- concurrent.futures -------------------------------------------------------------------


def test_as_executor_is_a_concurrent_futures_executor(executor: ParallelExecutor) -> None:
    with executor.as_executor() as pool:
        assert isinstance(pool, concurrent.futures.Executor)
        futures = [pool.submit(square, i) for i in range(20)]
        done = {f.result() for f in concurrent.futures.as_completed(futures)}
        assert done == {i * i for i in range(20)}
        assert pool.submit(pow, 2, exp=5).result() == 32


def test_submitted_user_error_is_the_future_exception_with_its_note(
    executor: ParallelExecutor,
) -> None:
    with executor.as_executor() as pool:
        fut = pool.submit(boom_at, (4, 4))
        with pytest.raises(KeyError, match="item 4 is bad"):
            fut.result()
        error = fut.exception()
        assert error is not None
        assert error.ce_parallel_item_index == 0  # type: ignore[attr-defined]
        assert any("raised by item 0" in note for note in error.__notes__)


def test_futures_map_has_the_standard_semantics(executor: ParallelExecutor) -> None:
    with executor.as_executor() as pool:
        assert list(pool.map(pow, [2, 3, 4], [2, 2, 2])) == [4, 9, 16]
        assert list(pool.map(square, range(50), chunksize=7)) == [i * i for i in range(50)]
        results = pool.map(boom_at, [(i, 9) for i in range(20)], chunksize=4)
        seen = []
        with pytest.raises(KeyError) as info:
            for value in results:
                seen.append(value)
        assert seen == list(range(8))  # the error comes when its result is reached
        assert info.value.ce_parallel_item_index == 9  # type: ignore[attr-defined]


def test_futures_map_runs_each_item_once(executor: ParallelExecutor, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    with executor.as_executor() as pool:
        got = list(pool.map(log_item, [(str(log), i, -1) for i in range(60)], chunksize=5))
    assert got == list(range(60))
    assert _logged(log) == list(range(60))


def test_futures_map_timeout_counts_from_the_call(
    executor: ParallelExecutor, strategy: str
) -> None:
    if strategy == "sequential":
        pytest.skip("sequential runs every task inside map(), before the timeout can start")
    with executor.as_executor() as pool:
        results = pool.map(sleep_then_return, [(i, 0.5) for i in range(8)], timeout=0.1)
        with pytest.raises(TimeoutError):
            list(results)
        pool.shutdown(cancel_futures=True)


def test_futures_shutdown_refuses_new_tasks(executor: ParallelExecutor) -> None:
    pool = executor.as_executor()
    assert pool.submit(square, 3).result() == 9
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(square, 3)
    # the view's shutdown leaves the executor itself usable
    assert executor.map(square, [1, 2]) == [1, 4]


def test_asyncio_run_in_executor(executor: ParallelExecutor) -> None:
    async def main(pool: concurrent.futures.Executor) -> list[int]:
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(*(loop.run_in_executor(pool, square, i) for i in range(8)))
        )

    with executor.as_executor() as pool:
        assert asyncio.run(main(pool)) == [i * i for i in range(8)]


def test_cancel_stops_a_running_stream(executor: ParallelExecutor) -> None:
    stream = executor.imap(sleep_then_return, ((i, 0.02) for i in range(100_000)), chunksize=1)
    assert next(stream) == 0
    executor.cancel()
    with pytest.raises(MapCancelledError):
        list(stream)
    assert list(executor.imap(square, [3])) == [9]  # only that stream was cancelled


@pytest.mark.parametrize("ordered", [True, False], ids=["imap", "imap_unordered"])
def test_stream_with_progress_counts_every_item(executor: ParallelExecutor, ordered: bool) -> None:
    stream = executor.imap if ordered else executor.imap_unordered
    assert sorted(stream(square, range(300), progress=True)) == [i * i for i in range(300)]
