"""Telemetry sinks never block or break a map, and never keep failed callbacks alive."""

from __future__ import annotations

import gc
import logging
import os
import weakref
from pathlib import Path
from typing import Any

import pytest
from workfns import make_config

from ce_parallel import create_executor, telemetry


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path = tmp_path / "no-reader"
    os.mkfifo(path)
    return str(path)


@pytest.mark.timeout(20)
def test_a_fifo_without_reader_does_not_block_emit(fifo: str) -> None:
    telemetry.emit("run", {"items": 1}, path=fifo)
    telemetry.emit("run", {"items": 2}, path=fifo)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy", ["sequential", "threads", "processes", "joblib"])
def test_a_fifo_without_reader_does_not_block_a_map(strategy: str, fifo: str) -> None:
    with create_executor(make_config(strategy, telemetry_path=fifo)) as ex:
        assert ex.map(abs, [-1, -2, -3]) == [1, 2, 3]
        assert ex.map(abs, [-4]) == [4]


@pytest.mark.timeout(20)
def test_a_fifo_with_a_reader_is_refused_not_written(fifo: str) -> None:
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(OSError, match="not a regular file"):
            telemetry.append_jsonl(fifo, {"event": "run"})
        telemetry.emit("run", {"items": 1}, path=fifo)  # logged and skipped
    finally:
        os.close(reader)


def test_a_regular_file_still_gets_every_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    for i in range(3):
        telemetry.emit("run", {"items": i}, path=str(path))
    assert len(path.read_text().splitlines()) == 3


def test_failed_callbacks_are_not_kept_alive() -> None:
    refs: list[weakref.ref[Any]] = []
    for _ in range(50):
        blob = bytearray(1 << 20)

        def failing(event: str, payload: dict[str, Any], blob: bytearray = blob) -> None:
            raise RuntimeError("the sink is broken")

        refs.append(weakref.ref(failing))
        telemetry.emit("run", {"items": 1}, callback=failing)
        del failing, blob
    gc.collect()
    assert sum(ref() is not None for ref in refs) == 0


def test_a_failing_callback_warns_once_while_it_lives(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def failing(event: str, payload: dict[str, Any]) -> None:
        calls.append(event)
        raise RuntimeError("broken")

    with caplog.at_level(logging.WARNING, logger="ce_parallel.telemetry"):
        for _ in range(5):
            telemetry.emit("run", {"items": 1}, callback=failing)
    assert len(calls) == 5
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1


def test_a_callback_that_cannot_be_held_weakly_is_remembered_within_a_bound() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, event: str, payload: dict[str, Any]) -> None:
            raise RuntimeError("broken")

    for _ in range(telemetry.MAX_STRONG_FAILED_CALLBACKS * 3):
        telemetry.emit("run", {"items": 1}, callback=Unhashable())
    assert len(telemetry._strong_failed) <= telemetry.MAX_STRONG_FAILED_CALLBACKS
