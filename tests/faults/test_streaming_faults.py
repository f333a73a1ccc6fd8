"""Streams and futures fall back, recorded, when the machinery loses their work."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from faults.stream_workfns import die_in_worker, name_of
from leakcheck import assert_no_leaks, snapshot

from ce_parallel import ParallelConfig, SerializationError, create_executor

LOCK = threading.Lock()


@pytest.fixture(scope="module", autouse=True)
def _warm_loky() -> None:
    # loky starts one resource-tracker helper per process on first use; start it before any
    # baseline is taken so that leak checks count only workers
    with create_executor(
        ParallelConfig(enabled=True, strategy="processes", full_matrix=True)
    ) as ex:
        ex.map(abs, [1, 2])


def _executor(records: list[tuple[str, dict[str, Any]]], **changes: Any) -> Any:
    config = ParallelConfig(
        enabled=True,
        strategy="processes",
        full_matrix=True,
        max_workers=2,
        telemetry=lambda event, payload: records.append((event, payload)),
        **changes,
    )
    return create_executor(config)


def _fallbacks(records: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [payload for event, payload in records if event == "fallback"]


@pytest.mark.parametrize("ordered", [True, False], ids=["imap", "imap_unordered"])
def test_an_unpicklable_item_reruns_its_chunk_serially_and_is_recorded(ordered: bool) -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    before = snapshot()
    with _executor(records) as ex:
        stream = ex.imap if ordered else ex.imap_unordered
        got = list(stream(name_of, iter([0, 1, LOCK, 3, 4, 5]), chunksize=1))
        assert list(ex.imap(abs, [-1, -2])) == [1, 2]  # a fresh pool after the fallback
    expected = [0, 1, "lock", 3, 4, 5]
    assert (got if ordered else sorted(got, key=str)) == (
        expected if ordered else sorted(expected, key=str)
    )
    (record, *_) = _fallbacks(records)
    assert record["cause"] == "SerializationError"
    assert record["action"] == "serial"
    assert record["chunks"] == [2]
    (run, *_) = [p for e, p in records if e == "run"]
    assert run["fallbacks"] >= 1 and run["items"] == 6
    assert_no_leaks(before)


def test_an_unpicklable_item_raises_when_fallback_is_raise() -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    with _executor(records, fallback="raise") as ex:
        with pytest.raises(SerializationError) as info:
            list(ex.imap(name_of, [0, 1, LOCK, 3], chunksize=1))
        assert 2 in info.value.incomplete
    assert _fallbacks(records)[0]["action"] == "raise"


def test_a_killed_worker_loses_only_chunks_that_rerun_serially() -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    before = snapshot()
    items = ((i, 7, os.getpid()) for i in range(40))
    with _executor(records) as ex:
        got = list(ex.imap(die_in_worker, items, chunksize=2))
        # the broken pool was replaced: the executor works again
        assert list(ex.imap(abs, [-3])) == [3]
    assert got == list(range(40))
    causes = {r["cause"] for r in _fallbacks(records)}
    assert causes == {"WorkerCrashedError"}
    assert_no_leaks(before)


def test_a_submitted_task_the_machinery_lost_reruns_and_is_recorded() -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    with _executor(records) as ex, ex.as_executor() as pool:
        assert pool.submit(name_of, LOCK).result() == "lock"
        assert pool.submit(die_in_worker, (1, 1, os.getpid())).result() == 1
        assert pool.submit(abs, -5).result() == 5  # a fresh pool after the crash
    causes = [r["cause"] for r in _fallbacks(records)]
    assert causes[0] == "SerializationError"
    assert "WorkerCrashedError" in causes


def test_a_submitted_task_fails_with_the_typed_error_when_fallback_is_raise() -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    with (
        _executor(records, fallback="raise") as ex,
        ex.as_executor() as pool,
        pytest.raises(SerializationError),
    ):
        pool.submit(name_of, LOCK).result()
