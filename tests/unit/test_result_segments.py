"""Large arrays in a process worker's results come back through ``/dev/shm`` files.

The healthy path is checked by where the result lives (a copy-on-write map of the file, not a
pickled copy), not only by its value; every file is gone after a map, after a user error, after
a worker died holding one, and after the caller was killed.
"""

from __future__ import annotations

import mmap
import os
import pickle
import textwrap
import time
from typing import Any

import pytest
from leakcheck import files_left_by_a_killed_process

from ce_parallel import ParallelConfig, create_executor
from ce_parallel.heuristics import RESULT_SEGMENT_MIN_BYTES, SMALL_ARRAY_PICKLE_BYTES
from ce_parallel.result_segments import FileBuffers, claim, pool_prefix, result_files
from ce_parallel.worker import ChunkOutcome, pack_results, unpack_results

np = pytest.importorskip("numpy")

pytestmark = [
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm"),
    pytest.mark.timeout(120),
]

#: float64 elements of an array twice the threshold (through a file) and one below it
LARGE = 2 * RESULT_SEGMENT_MIN_BYTES // 8
SMALL = RESULT_SEGMENT_MIN_BYTES // 16
PARENT = os.getpid()
STRATEGIES = ["processes", "joblib"]


def _mapped(array: Any) -> bool:
    """Whether ``array``'s memory is a map of a file (a result that came through one)."""
    base = array
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.obj if isinstance(base, memoryview) else base.base
    return isinstance(base, mmap.mmap)


def _results(i: int) -> dict[str, Any]:
    c = np.arange(LARGE, dtype=np.float64) + i
    return {
        "c": c,
        "f": np.asfortranarray(np.arange(LARGE, dtype=np.int64).reshape(-1, 8) * i),
        "again": c,  # the same array twice: one buffer, still one object after the trip
        "small": np.full(SMALL, float(i)),
        "record": np.zeros(LARGE // 2, dtype=[("a", "<i8"), ("b", "<f8")]),
        "pid": os.getpid(),
    }


def _boom_at_five(i: int) -> Any:
    if i == 5:
        raise ValueError("item 5 is bad")
    time.sleep(0.05)
    return np.full(LARGE, float(i))


def _no_files_of(pid: int, seconds: float = 10.0) -> list[str]:
    # outcomes of chunks dropped after an error may still be on their way back
    deadline = time.monotonic() + seconds
    while result_files(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result_files(pid)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_large_result_arrays_come_back_through_files_private_and_writeable(
    strategy: str,
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    config = ParallelConfig(
        enabled=True,
        strategy=strategy,
        max_workers=2,
        telemetry=lambda kind, record: events.append((kind, record)),
    )
    with create_executor(config) as ex:
        got = ex.map(_results, range(6))
        assert result_files(PARENT) == []
    expected = [_results(i) for i in range(6)]
    assert not [record for kind, record in events if kind == "fallback"]
    for back, want in zip(got, expected, strict=True):
        assert back["pid"] != PARENT  # ran in a worker
        for name in ("c", "f", "small", "record"):
            np.testing.assert_array_equal(back[name], want[name])
            assert back[name].dtype == want[name].dtype
        assert back["f"].flags.f_contiguous and not back["f"].flags.c_contiguous
        assert back["again"] is back["c"]
        assert _mapped(back["c"]) and _mapped(back["f"]) and _mapped(back["record"])
        assert not _mapped(back["small"])  # below the threshold: in the pickle
        assert back["c"].flags.writeable
    back = got[0]["c"]
    back[:] = -1.0  # private: writing touches no other result
    assert got[1]["c"][0] == 1.0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_user_error_leaves_no_result_file(strategy: str) -> None:
    config = ParallelConfig(enabled=True, strategy=strategy, max_workers=2, fallback="raise")
    with create_executor(config) as ex:
        with pytest.raises(ValueError, match="item 5 is bad") as info:
            ex.map(_boom_at_five, range(40), chunksize=1)
        assert getattr(info.value, "ce_parallel_item_index", None) == 5
        assert _no_files_of(PARENT) == []
        # the pool is healthy afterwards, and its results come through files again
        again = ex.map(_boom_at_five, [1, 2, 3, 4])
        assert [float(a[0]) for a in again] == [1.0, 2.0, 3.0, 4.0]
        assert all(_mapped(a) for a in again)
    assert result_files(PARENT) == []


def _write_then_die(i: int) -> int:
    from ce_parallel import worker

    if i == 3 and worker.in_worker():
        # a result written to its file, then the worker dies before sending the outcome
        (token,) = worker._done_setups  # this pool's, the only one its fresh worker ran
        files = FileBuffers(pool_prefix(os.getppid(), token))
        assert files(pickle.PickleBuffer(np.ones(LARGE))) is False
        os._exit(1)
    return i


def test_a_worker_that_dies_after_writing_a_result_file_leaves_none() -> None:
    pytest.importorskip("psutil")
    events: list[tuple[str, dict[str, Any]]] = []
    config = ParallelConfig(
        enabled=True,
        strategy="processes",
        max_workers=2,
        telemetry=lambda kind, record: events.append((kind, record)),
    )
    with create_executor(config) as ex:
        assert ex.map(_write_then_die, range(8), chunksize=1) == list(range(8))
        assert [kind for kind, _ in events].count("fallback") == 1
        # the broken pool was released, and with it every file its workers wrote
        assert result_files(PARENT) == []


def test_the_files_of_a_killed_caller_are_removed_without_it() -> None:
    script = textwrap.dedent(
        f"""
        import os, pickle, sys, time
        import numpy as np
        from ce_parallel import ParallelConfig, create_executor
        from ce_parallel.result_segments import FileBuffers, pool_prefix

        def hold(i):
            files = FileBuffers(pool_prefix(os.getppid(), "killed"))
            files(pickle.PickleBuffer(np.ones({LARGE})))
            time.sleep(60)

        print(os.getpid(), flush=True)
        ex = create_executor(ParallelConfig(enabled=True, strategy="processes", max_workers=2))
        ex.map(hold, range(2), chunksize=1)
        """
    )
    assert files_left_by_a_killed_process(script, result_files) == []


def test_packed_results_round_trip_through_files_and_the_files_go() -> None:
    files = FileBuffers(pool_prefix(PARENT, "roundtrip"))
    values = [np.arange(LARGE), {"x": np.ones(LARGE, dtype=np.float32)}, "text"]
    packed = pack_results(values, files)
    assert packed is not None and len(files.files) == 2
    assert len(result_files(PARENT)) == 2
    buffers = claim(list(files.files))
    assert result_files(PARENT) == []  # claimed: unlinked at once, the maps hold the memory
    back = unpack_results(packed, 3, 0, buffers)
    np.testing.assert_array_equal(back[0], values[0])
    np.testing.assert_array_equal(back[1]["x"], values[1]["x"])
    assert back[2] == "text"
    # below the threshold, or not contiguous: in the pickle
    few = FileBuffers(pool_prefix(PARENT, "small"))
    small = np.ones(SMALL)
    strided = np.ones(4 * LARGE)[::4]
    assert small.nbytes >= SMALL_ARRAY_PICKLE_BYTES  # pickled with protocol 5: a buffer
    assert pack_results([small, strided], few) is not None and few.files == []


def test_an_outcome_whose_files_are_gone_is_a_lost_chunk_not_a_crash() -> None:
    files = FileBuffers(pool_prefix(PARENT, "gone"))
    packed = pack_results([np.ones(LARGE)], files)
    outcome = ChunkOutcome(7, None, 0.0, packed=packed, packed_count=1)
    outcome.result_files = tuple(files.files)
    files.remove()
    rebuilt = pickle.loads(pickle.dumps(outcome))  # as loky rebuilds it in the caller
    assert rebuilt.packed is None
    assert rebuilt.machinery_error is not None
    assert "item 7" in str(rebuilt.machinery_error)
    assert result_files(PARENT) == []


def test_a_failed_pickling_removes_the_files_it_wrote() -> None:
    class Unpicklable:
        def __reduce__(self) -> Any:
            raise TypeError("no")

    files = FileBuffers(pool_prefix(PARENT, "failed"))
    assert pack_results([np.ones(LARGE), Unpicklable()], files) is None
    assert files.files == [] and result_files(PARENT) == []
