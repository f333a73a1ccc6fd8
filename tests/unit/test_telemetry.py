"""Telemetry sinks: callback, logger, JSON lines; failing sinks; record builders."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from ce_parallel import telemetry
from ce_parallel.telemetry import append_jsonl, emit, fallback_record, json_safe, run_record


class Recorder:
    """A telemetry callback that keeps every record it receives."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        self.records.append((event, payload))


class Failing:
    """A telemetry callback that always raises."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        self.calls += 1
        raise RuntimeError("sink is down")


def _warnings_from(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "ce_parallel.telemetry" and r.levelno == logging.WARNING
    ]


def test_callback_receives_event_and_json_safe_payload() -> None:
    sink = Recorder()
    emit("run", {"strategy": "threads", "extra": (1, 2), "obj": object}, callback=sink)
    assert len(sink.records) == 1
    event, payload = sink.records[0]
    assert event == "run"
    assert payload["strategy"] == "threads"
    assert payload["extra"] == [1, 2]
    assert isinstance(payload["obj"], str)
    json.dumps(payload, allow_nan=False)


def test_logger_sink_writes_one_debug_line_per_record(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="ce_parallel.telemetry"):
        emit("decision", {"reason": "enabled"})
    lines = [r for r in caplog.records if r.name == "ce_parallel.telemetry"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.DEBUG
    assert "decision" in lines[0].getMessage()
    assert '"reason": "enabled"' in lines[0].getMessage()


def test_raising_callback_is_logged_once_and_never_breaks_emit(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    sink = Failing()
    path = tmp_path / "t.jsonl"
    with caplog.at_level(logging.WARNING, logger="ce_parallel.telemetry"):
        for i in range(3):
            emit("run", {"i": i}, callback=sink, path=str(path))
    assert sink.calls == 3
    assert len(_warnings_from(caplog)) == 1
    # the other sinks still got every record
    assert [json.loads(line)["i"] for line in path.read_text().splitlines()] == [0, 1, 2]


def test_each_failing_callback_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    first, second = Failing(), Failing()
    with caplog.at_level(logging.WARNING, logger="ce_parallel.telemetry"):
        for sink in (first, second, first, second):
            emit("run", {}, callback=sink)
    assert len(_warnings_from(caplog)) == 2


def test_unwritable_path_is_logged_once_and_skipped(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    sink = Recorder()
    directory = str(tmp_path)  # a directory cannot be opened for appending
    with caplog.at_level(logging.WARNING, logger="ce_parallel.telemetry"):
        emit("run", {"a": 1}, callback=sink, path=directory)
        emit("run", {"a": 2}, callback=sink, path=directory)
    assert len(_warnings_from(caplog)) == 1
    assert [p["a"] for _, p in sink.records] == [1, 2]


def test_callback_editing_its_record_does_not_change_the_file(tmp_path: Path) -> None:
    def vandal(event: str, payload: dict[str, Any]) -> None:
        payload["strategy"] = "changed"

    path = tmp_path / "t.jsonl"
    emit("run", {"strategy": "threads"}, callback=vandal, path=str(path))
    assert json.loads(path.read_text())["strategy"] == "threads"


def test_jsonl_line_has_event_time_and_payload(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    emit("fallback", {"cause": "x"}, path=str(path))
    emit("run", {"items": 3}, path=str(path))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["fallback", "run"]
    assert lines[0]["cause"] == "x" and lines[1]["items"] == 3
    assert all(isinstance(line["time"], float) for line in lines)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_json_safe_turns_non_finite_floats_into_strict_json(value: float) -> None:
    safe = json_safe({"x": value, "nested": [value]})
    text = json.dumps(safe, allow_nan=False)
    assert json.loads(text)["x"] == repr(value)


def test_json_safe_keeps_plain_data_and_stringifies_keys() -> None:
    data = {"a": 1, "b": 2.5, "c": None, "d": True, 3: "x", "e": {"f": [1, (2, 3)]}}
    assert json_safe(data) == {
        "a": 1,
        "b": 2.5,
        "c": None,
        "d": True,
        "3": "x",
        "e": {"f": [1, [2, 3]]},
    }


def test_run_record_computes_utilisation_and_names_the_error() -> None:
    record = run_record(
        strategy="threads",
        items=10,
        chunks=4,
        workers=2,
        wall_time_s=1.0,
        busy_time_s=1.5,
        fallbacks=1,
        error=KeyError("k"),
    )
    assert record["utilisation_pct"] == 75.0
    assert record["error"] == "KeyError"
    assert record["fallbacks"] == 1
    assert set(record) == {
        "strategy",
        "items",
        "chunks",
        "workers",
        "wall_time_s",
        "busy_time_s",
        "utilisation_pct",
        "fallbacks",
        "error",
        "serial",
        "caller_items",
    }


def test_run_record_utilisation_is_capped_zero_without_wall_time_unknown_without_busy() -> None:
    kwargs: dict[str, Any] = {"strategy": "joblib", "items": 1, "chunks": 1, "workers": 2}
    assert run_record(**kwargs, wall_time_s=1.0, busy_time_s=5.0)["utilisation_pct"] == 100.0
    assert run_record(**kwargs, wall_time_s=0.0, busy_time_s=0.0)["utilisation_pct"] == 0.0
    assert run_record(**kwargs, wall_time_s=1.0, busy_time_s=1.0)["error"] is None
    assert run_record(**kwargs, wall_time_s=1.0, busy_time_s=None)["utilisation_pct"] is None


def test_fallback_record_names_the_kind_the_exception_and_what_followed() -> None:
    record = fallback_record(
        strategy="processes",
        cause="WorkerCrashedError",
        failure=BrokenPipeError("pipe"),
        action="serial",
        items=3,
        chunks=[1],
    )
    assert record == {
        "strategy": "processes",
        "stage": "run",
        "cause": "WorkerCrashedError",
        "detail": "BrokenPipeError: pipe",
        "action": "serial",
        "items": 3,
        "chunks": [1],
    }
    started = fallback_record(
        strategy="joblib",
        cause="BackendUnavailableError",
        failure=ImportError("no joblib"),
        action="threads",
        items=5,
        stage="start",
    )
    assert (started["stage"], started["chunks"], started["action"]) == ("start", None, "threads")


_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from ce_parallel.telemetry import append_jsonl
    path, writer, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    filler = writer * 5000  # longer than PIPE_BUF: no size-based atomicity to lean on
    open(go + "." + writer, "w").close()  # ready
    deadline = time.monotonic() + 30
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.001)
    for i in range(count):
        append_jsonl(path, {"writer": writer, "seq": i, "filler": filler})
        if i % 50 == 0:
            time.sleep(0.001)  # yield now and then, so a busy machine still interleaves us
    """
)


def test_two_processes_appending_concurrently_keep_every_line_whole(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    go = tmp_path / "go"
    count = 1000
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), writer, str(count), str(go)])
        for writer in ("a", "b")
    ]
    # both writers say they are ready, then wait for the go file, so that their appends overlap
    deadline = time.monotonic() + 30
    while not all(Path(f"{go}.{w}").exists() for w in "ab") and time.monotonic() < deadline:
        time.sleep(0.001)
    go.touch()
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]
    assert len(records) == 2 * count
    for writer in ("a", "b"):
        mine = [r for r in records if r["writer"] == writer]
        assert [r["seq"] for r in mine] == list(range(count))
        assert all(r["filler"] == writer * 5000 for r in mine)
    # the writers did overlap: their lines are interleaved, not one block after the other
    writers = [r["writer"] for r in records]
    assert sum(a != b for a, b in itertools.pairwise(writers)) > 1


def test_append_jsonl_creates_the_file_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    append_jsonl(str(path), {"n": 1})
    append_jsonl(str(path), {"n": 2})
    assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == [1, 2]


def test_events_name_every_record_kind() -> None:
    assert {"decision", "run", "fallback"} <= set(telemetry.EVENTS)
