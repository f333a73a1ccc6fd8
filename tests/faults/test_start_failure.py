"""Pools that cannot start, a missing optional backend, and telemetry sinks that fail."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from faults.harness import assert_settled, run_scenario

from ce_parallel import (
    BackendUnavailableError,
    ParallelConfig,
    ProcessExecutor,
    ThreadExecutor,
)
from ce_parallel.strategies.joblib import JoblibExecutor


class BrokenProcesses(ProcessExecutor):
    def start_pool(self) -> None:
        raise OSError("cannot start workers (injected)")


class BrokenJoblib(JoblibExecutor):
    def start_pool(self) -> None:
        raise OSError("cannot start workers (injected)")


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        self.records.append((event, payload))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [p for e, p in self.records if e == event]


def double(x: int) -> int:
    return 2 * x


@pytest.mark.parametrize("broken", [BrokenProcesses, BrokenJoblib])
def test_pool_start_failure_runs_the_map_on_threads_with_one_record(broken, no_leaks) -> None:
    sink = Recorder()
    with broken(ParallelConfig(telemetry=sink), max_workers=2) as ex:
        assert ex.map(double, range(10)) == [2 * x for x in range(10)]
        (record,) = sink.of("fallback")
        assert record["strategy"] == broken.name
        assert record["stage"] == "start"
        assert record["cause"] == "BackendUnavailableError"
        assert record["action"] == "threads"
        assert record["items"] == 10
        assert "injected" in record["detail"]
        assert [r["strategy"] for r in sink.of("run")] == ["threads", broken.name]
        assert ex.metrics.fallbacks == 1
        # the next map tries the pool again, and falls back again
        assert ex.map(double, [1, 2]) == [2, 4]
        assert len(sink.of("fallback")) == 2


def test_the_chain_continues_to_serial_when_threads_cannot_start(monkeypatch, no_leaks) -> None:
    def refuse(self: ThreadExecutor) -> None:
        raise RuntimeError("can't start new thread (injected)")

    monkeypatch.setattr(ThreadExecutor, "start_pool", refuse)
    sink = Recorder()
    with BrokenProcesses(ParallelConfig(telemetry=sink), max_workers=2) as ex:
        assert ex.map(double, range(5)) == [0, 2, 4, 6, 8]
    steps = [(r["strategy"], r["action"]) for r in sink.of("fallback")]
    assert steps == [("processes", "threads"), ("threads", "serial")]


def test_pool_start_failure_with_fallback_raise_lists_every_item(no_leaks) -> None:
    sink = Recorder()
    with BrokenProcesses(ParallelConfig(fallback="raise", telemetry=sink), max_workers=2) as ex:
        with pytest.raises(BackendUnavailableError, match="could not start") as info:
            ex.map(double, range(4))
        assert info.value.incomplete == (0, 1, 2, 3)
        assert isinstance(info.value.__cause__, OSError)
    assert [r["action"] for r in sink.of("fallback")] == ["raise"]


MISSING_JOBLIB = """
sys.modules["joblib"] = None  # what an environment without joblib looks like to an import
before = usage()
out = {}
for mode in ("serial", "raise"):
    RECORDS.clear()
    ex = create_executor(
        ParallelConfig(strategy="joblib", max_workers=2, fallback=mode, telemetry=record)
    )
    try:
        out[mode] = dict(result=ex.map(abs, range(-3, 3)), error=None)
    except Exception as exc:
        out[mode] = dict(result=None, error=[type(exc).__name__, list(exc.incomplete)])
    out[mode]["fallbacks"] = fallbacks()
    ex.shutdown()
done(modes=out, before=before, after=settle(before))
"""


def test_missing_joblib_falls_back_to_threads_or_raises_backend_unavailable() -> None:
    out = run_scenario(MISSING_JOBLIB).result
    serial = out["modes"]["serial"]
    assert serial["result"] == [3, 2, 1, 0, 1, 2]
    (record,) = serial["fallbacks"]
    assert (record["cause"], record["action"]) == ("BackendUnavailableError", "threads")
    assert "joblib" in record["detail"]
    raised = out["modes"]["raise"]
    assert raised["error"] == ["BackendUnavailableError", list(range(6))]
    assert_settled(out)


def test_failing_telemetry_sinks_never_break_the_map(tmp_path, caplog, no_leaks) -> None:
    calls = []

    def explode(event: str, payload: dict[str, Any]) -> None:
        calls.append(event)
        raise RuntimeError("sink is down")

    config = ParallelConfig(telemetry=explode, telemetry_path=str(tmp_path))  # a directory
    with (
        caplog.at_level(logging.WARNING, logger="ce_parallel.telemetry"),
        BrokenProcesses(config, max_workers=2) as ex,
    ):
        assert ex.map(double, range(6)) == [2 * x for x in range(6)]
        assert ex.map(double, range(3)) == [0, 2, 4]
    assert "fallback" in calls and "run" in calls
    warnings = [r for r in caplog.records if r.name == "ce_parallel.telemetry"]
    # each failing sink is reported once, not once per record
    assert len(warnings) == 2
