"""Chunk sizes split evenly over the workers; explicit worker counts are honoured."""

from __future__ import annotations

import math

import pytest

from ce_parallel import ParallelConfig, create_executor
from ce_parallel.chunks import default_chunksize
from ce_parallel.heuristics import CHUNKS_PER_WORKER
from ce_parallel.resources import CpuBudget, Resources


@pytest.mark.parametrize("workers", [2, 3, 4])
@pytest.mark.parametrize("n", [1, 2, 5, 9, 10, 30, 100, 1000, 10_000, 99_991])
def test_chunks_are_a_multiple_of_the_workers_or_single_items(n: int, workers: int) -> None:
    size = default_chunksize(n, workers)
    chunks = math.ceil(n / size)
    assert size >= 1
    assert chunks % workers == 0 or size == 1
    # balancing costs at most a doubling of the chunks the engine aims for
    assert size == 1 or chunks <= 2 * workers * CHUNKS_PER_WORKER


def test_ten_coarse_items_on_two_workers_run_five_each() -> None:
    # the calibrated-explanations case: 10 row-chunks were 5 tasks split 3:2
    assert default_chunksize(10, 2) == 1


def test_an_explicit_worker_count_is_honoured_above_the_budget() -> None:
    two = Resources(budget=CpuBudget(2, "affinity", {"affinity": 2}))
    config = ParallelConfig(enabled=True, strategy="threads", max_workers=4)
    with create_executor(config, resources=two) as ex:
        assert ex.workers == 4
        assert ex.budget.count == 2
    with create_executor(config.replace(max_workers=1), resources=two) as ex:
        assert ex.workers == 1 and ex.budget.limited_by == "max_workers"


def test_n_jobs_is_accepted_as_joblib_spells_it_wherever_max_workers_is() -> None:
    from ce_parallel import ConfigurationError, ParallelFacade

    four = Resources(budget=CpuBudget(4, "affinity", {"affinity": 4}))
    for n_jobs, workers in ((-1, 4), (-2, 3), (2, 2), (6, 6)):
        config = ParallelConfig(enabled=True, strategy="threads", n_jobs=n_jobs)
        with create_executor(config, resources=four) as ex:
            assert ex.workers == workers
        facade = ParallelFacade(config, resources=four, environ={})
        assert facade.decide_use_parallel(1000, seconds_per_item=1.0).workers == workers
    with pytest.raises(ConfigurationError, match="n_jobs=0"):
        ParallelConfig(n_jobs=0)
    with pytest.raises(ConfigurationError, match="give one of the two"):
        ParallelConfig(n_jobs=2, max_workers=2)
    assert ParallelConfig.from_env(environ={"CE_PARALLEL": "threads,n_jobs=-1"}).n_jobs == -1
    with pytest.raises(ConfigurationError, match="n_jobs=0"):
        ParallelConfig.from_env(environ={"CE_PARALLEL": "n_jobs=0"})


def test_a_pool_that_pickles_nothing_cuts_a_short_map_finer() -> None:
    from ce_parallel.heuristics import CHEAP_CHUNKS_MAX_ITEMS, CHEAP_CHUNKS_PER_WORKER

    assert CHEAP_CHUNKS_PER_WORKER > CHUNKS_PER_WORKER
    assert default_chunksize(32, 2, cheap_dispatch=True) == 2  # 16 chunks
    assert default_chunksize(10, 2, cheap_dispatch=True) == 1
    longer = CHEAP_CHUNKS_MAX_ITEMS + 1
    assert default_chunksize(longer, 2, cheap_dispatch=True) == default_chunksize(longer, 2) > 1
    assert default_chunksize(32, 2) == 4  # a pool that pickles keeps its chunks
    with create_executor(ParallelConfig(enabled=True, strategy="threads", max_workers=2)) as ex:
        assert ex.map(abs, list(range(-16, 16))) == [abs(x) for x in range(-16, 16)]
        assert ex.metrics.chunks == 16


@pytest.mark.parametrize("n", [1, 7, 50, 51, 1000])
@pytest.mark.parametrize("count", [1, 2, 8, 13])
def test_even_ranges_cover_every_item_once_in_chunks_within_one_item(n: int, count: int) -> None:
    from ce_parallel.chunks import even_ranges

    ranges = even_ranges(n, count)
    assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
    sizes = [b - a for a, b in ranges]
    assert len(ranges) == min(n, count)
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


def test_fifty_items_on_two_workers_give_each_worker_twenty_five() -> None:
    from ce_parallel.chunks import chunk_count, even_ranges

    sizes = [b - a for a, b in even_ranges(50, chunk_count(50, 2))]
    assert sizes == [7, 7, 6, 6, 6, 6, 6, 6]


def test_steady_cheap_items_are_cut_into_fewer_chunks_only_where_pickled() -> None:
    from ce_parallel.chunks import chunk_count
    from ce_parallel.heuristics import CHUNK_MIN_WORK_S

    assert chunk_count(50, 2) == 8
    # 10 ms of work: two chunks of 5 ms
    assert chunk_count(50, 2, steady_item_s=CHUNK_MIN_WORK_S / 25) == 2
    # 20 ms of work: four chunks, a multiple of the workers
    assert chunk_count(50, 2, steady_item_s=CHUNK_MIN_WORK_S / 12.5) == 4
    # never fewer chunks than workers, however little the work
    assert chunk_count(50, 3, steady_item_s=1e-9) == 3
    # enough work for the usual chunks: the usual chunks
    assert chunk_count(50, 2, steady_item_s=0.1) == 8
    # a pool that pickles nothing keeps its fine chunks
    assert chunk_count(50, 2, cheap_dispatch=True, steady_item_s=1e-6) == 50
    assert chunk_count(0, 2) == 0


@pytest.mark.timeout(120)
def test_a_steady_earlier_map_plans_fewer_chunks_and_an_unsteady_one_the_usual() -> None:
    from ce_parallel.costs import function_key
    from ce_parallel.heuristics import CHUNK_MIN_WORK_S

    items = list(range(50))
    config = ParallelConfig(enabled=True, strategy="processes", max_workers=2)
    with create_executor(config) as ex:
        key = function_key(abs, lambda _: None)
        # what the workers measured on an earlier map, injected: 25 items fill a chunk
        ex._note_item_costs(key, [CHUNK_MIN_WORK_S / 25] * 8)
        assert ex.map(abs, items) == items
        assert ex.metrics.chunks == 2
        assert ex.map(abs, items, chunksize=5) == items  # a chunk size asked for is kept
        assert ex.metrics.chunks == 2 + 10
        ex._note_item_costs(key, [CHUNK_MIN_WORK_S / 25, CHUNK_MIN_WORK_S / 10])
        chunks = ex.metrics.chunks
        assert ex.map(abs, items) == items
        assert ex.metrics.chunks - chunks == 8


def test_one_slow_chunk_of_many_leaves_a_map_steady_and_uneven_items_do_not() -> None:
    from ce_parallel.chunks import steady_cost

    # two chunks slowed by the caller sharing their CPUs, a different one each map
    contended = [0.35, 0.97, 0.33, 0.31, 0.35, 0.35, 1.00, 0.32]
    assert steady_cost(contended) == pytest.approx(0.35)
    # items whose cost grows along the input: the middle chunks disagree too
    assert steady_cost([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) is None
    # few chunks are judged by their whole range
    assert steady_cost([0.4, 0.42]) == pytest.approx(0.41)
    assert steady_cost([0.35, 1.0]) is None
    assert steady_cost([0.35, 0.35, 1.0]) is None
    assert steady_cost([0.5]) is None
    assert steady_cost([0.0, 0.0, 0.0, 0.0]) is None
