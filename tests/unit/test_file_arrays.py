"""Arrays that live in a file reach ``processes`` workers by name: no copy, no stale copy.

The healthy path is checked by what the caller did not do (no shared-memory segment placed,
the copying function is watched) and by what the worker sees (a read-only view), besides the
values.
"""

from __future__ import annotations

import gc
import os
import textwrap
from typing import Any

import pytest
from leakcheck import files_left_by_a_killed_process

import ce_parallel
from ce_parallel import ParallelConfig, create_executor, shared_arrays
from ce_parallel.file_arrays import FILE_PREFIX, attach_file, file_handle, owned_files
from ce_parallel.heuristics import SHARED_ARRAY_MIN_BYTES

np = pytest.importorskip("numpy")

pytestmark = [
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm"),
    pytest.mark.timeout(120),
]

N = 2 * SHARED_ARRAY_MIN_BYTES // 8
PARENT = os.getpid()


def _seen(a: Any) -> tuple[float, bool, int]:
    return float(np.sum(a)), bool(a.flags.writeable), os.getpid()


@pytest.fixture
def placed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the arrays the caller copied into new shared-memory segments."""
    calls: list[int] = []
    real = shared_arrays._place

    def counting(array: Any) -> Any:
        calls.append(int(array.nbytes))
        return real(array)

    monkeypatch.setattr(shared_arrays, "_place", counting)
    return calls


@pytest.fixture
def processes() -> Any:
    with create_executor(ParallelConfig(enabled=True, strategy="processes", max_workers=2)) as ex:
        yield ex


def test_shared_arrays_are_sent_by_name_and_seen_read_only(
    processes: Any, placed: list[int]
) -> None:
    arrays = [ce_parallel.as_shared(np.arange(N, dtype=np.float64) * i) for i in range(6)]
    views = [arrays[0][::-3], arrays[1][10:], np.asarray(arrays[2]).reshape(-1, 8)[:, 2]]
    got = processes.map(_seen, arrays + views)
    want = [float(np.sum(a)) for a in arrays + views]
    assert [g[0] for g in got] == want
    assert not any(g[1] for g in got)  # a read-only view of the caller's pages
    assert all(g[2] != PARENT for g in got)
    assert placed == [] and processes.metrics.fallbacks == 0
    # the control: the same values in ordinary arrays are copied into segments
    assert [g[0] for g in processes.map(_seen, [np.array(a) for a in arrays])] == want[:6]
    assert len(placed) == 6


def test_a_change_between_maps_is_what_the_next_map_reads(processes: Any) -> None:
    arrays = [ce_parallel.shared_empty(N) for _ in range(4)]
    for a in arrays:
        a[:] = 1.0
    assert [g[0] for g in processes.map(_seen, arrays)] == [float(N)] * 4
    for a in arrays:
        a[:] += 1  # in place: the same file, the same pages
    assert [g[0] for g in processes.map(_seen, arrays)] == [2.0 * N] * 4


def test_a_stream_may_drop_its_shared_items_once_sent(processes: Any) -> None:
    made = (ce_parallel.as_shared(np.full(N, float(i))) for i in range(8))
    assert [g[0] for g in processes.imap(_seen, made)] == [float(i * N) for i in range(8)]
    assert processes.metrics.fallbacks == 0
    gc.collect()
    assert owned_files(PARENT) == []


def test_the_file_goes_with_the_last_array_on_it() -> None:
    a = ce_parallel.shared_empty((N, 2), dtype=np.int32, order="F")
    assert a.flags.f_contiguous and a.dtype == np.int32 and a.shape == (N, 2)
    view = a[:, 1]
    del a
    gc.collect()
    assert len(owned_files(PARENT)) == 1  # the view keeps it
    del view
    gc.collect()
    assert owned_files(PARENT) == []
    copy = ce_parallel.as_shared(np.arange(12).reshape(3, 4).T)
    np.testing.assert_array_equal(copy, np.arange(12).reshape(3, 4).T)
    assert ce_parallel.shared_empty(0).size == 0  # nothing to share: an ordinary array
    del copy
    gc.collect()
    assert owned_files(PARENT) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": -1}, "shape=-1"),
        ({"shape": (2, 2.5)}, "shape="),
        ({"shape": 4, "order": "K"}, "order='K'"),
        ({"shape": 4, "dtype": object}, "dtype=object"),
    ],
)
def test_bad_arguments_name_the_setting(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(")):
        ce_parallel.shared_empty(**kwargs)


def test_a_users_own_memmap_travels_by_name_unless_it_is_private(
    processes: Any, placed: list[int], tmp_path: Any
) -> None:
    path = str(tmp_path / "data.bin")
    np.arange(4 * N, dtype=np.float64).tofile(path)
    read = np.memmap(path, dtype=np.float64, mode="r", offset=8 * N, shape=(2 * N,))
    private = np.memmap(path, dtype=np.float64, mode="c", shape=(4 * N,))
    got = processes.map(_seen, [read, read[N:], private])
    assert [g[0] for g in got] == [
        float(np.sum(read)),
        float(np.sum(read[N:])),
        float(np.sum(private)),
    ]
    assert len(placed) == 1  # only the copy-on-write map is copied: its pages are the caller's


def test_a_handle_to_a_replaced_file_is_refused(tmp_path: Any) -> None:
    path = str(tmp_path / "data.bin")
    np.ones(N).tofile(path)
    found = file_handle(np.memmap(path, dtype=np.float64, mode="r"))
    assert found is not None
    handle, _ = found
    assert float(attach_file(handle).sum()) == float(N)
    os.replace(_write_other(tmp_path), path)  # same name, another file
    with pytest.raises(FileNotFoundError, match="not the file the caller sent"):
        attach_file(handle)
    assert file_handle(np.ones(N)) is None


def _write_other(tmp_path: Any) -> str:
    other = str(tmp_path / "other.bin")
    np.zeros(N).tofile(other)
    return other


def test_the_files_of_a_killed_process_are_removed_without_it() -> None:
    script = textwrap.dedent(
        f"""
        import os, time
        import ce_parallel

        print(os.getpid(), flush=True)
        kept = ce_parallel.shared_empty({N})
        time.sleep(60)
        """
    )

    def files_of(pid: int) -> list[str]:
        return [p for p in owned_files(pid) if os.path.basename(p).startswith(FILE_PREFIX)]

    assert files_left_by_a_killed_process(script, files_of) == []
