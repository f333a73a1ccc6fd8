"""``ce-parallel report``: generated telemetry files with known answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ce_parallel import fieldreport
from ce_parallel.fieldreport import UNLINKED, build_report, left_on_table, render
from ce_parallel.fieldreport.advice import lowest_safe_size

SITE_A = "pkg.a:fit"
SITE_B = "pkg.b:explain"


@pytest.fixture(params=["json", "orjson"], autouse=True)
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test once with the standard library's decoder and once with orjson (the
    ``report`` extra), which the reader takes when it is installed."""
    from ce_parallel.fieldreport import reader

    if request.param == "json":
        monkeypatch.setattr(reader, "_decoder", lambda: (reader._standard_decoder(), False))
    else:
        pytest.importorskip("orjson", reason="the report extra is not installed")
    return str(request.param)


def decision(
    decision_id: str,
    site: str,
    parallel: bool,
    reason: str,
    *,
    n_instances: int = 100,
    n_features: int = 10,
    budget: int = 2,
    start: float = 0.01,
    est_serial: float | None = 1.0,
    est_parallel: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "event": "decision",
        "time": 1_700_000_000.0,
        "version": 2,
        "pid": 10,
        "host": "node-1",
        "decision_id": decision_id,
        "call_site": site,
        "use_parallel": parallel,
        "decision": "parallel" if parallel else "serial",
        "strategy": "threads" if parallel else "sequential",
        "workers": budget if parallel else 1,
        "reason": reason,
        "detail": "generated",
        "n_instances": n_instances,
        "n_features": n_features,
        "bytes_hint": None,
        "seconds_per_item": None,
        "estimated_work_s": est_serial,
        "requested_strategy": "threads",
        "full_matrix": False,
        "executor_type": "ThreadExecutor",
        "platform": "linux/fork",
        "ci": False,
        "cpu_budget": budget,
        "cpu_limited_by": "machine",
        "cost_source": "assumed",
        "per_item_s": 0.0005,
        "start_cost_s": start,
        "estimated_serial_s": est_serial,
        "estimated_parallel_s": est_parallel,
        **extra,
    }


def run(
    decision_id: str,
    site: str,
    serial: bool,
    wall: float,
    *,
    workers: int = 2,
    busy: float | None = None,
    items: int = 100,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "event": "run",
        "time": 1_700_000_001.0,
        "version": 2,
        "pid": 10,
        "host": "node-1",
        "decision_id": decision_id,
        "call_site": site,
        "serial": serial,
        "strategy": "sequential" if serial else "threads",
        "items": items,
        "chunks": None if serial else 8,
        "workers": 1 if serial else workers,
        "wall_time_s": wall,
        "busy_time_s": busy,
        "utilisation_pct": None,
        "fallbacks": 0,
        "error": None,
        **extra,
    }


def fallback(decision_id: str | None, cause: str = "WorkerCrashedError") -> dict[str, Any]:
    return {
        "event": "fallback",
        "time": 1_700_000_000.5,
        "version": 2,
        "pid": 10,
        "host": "node-1",
        "decision_id": decision_id,
        "strategy": "threads",
        "stage": "run",
        "cause": cause,
        "detail": f"{cause}: generated",
        "action": "serial",
        "items": 10,
        "chunks": [1],
    }


def write(path: Path, records: list[Any], tail: str = "") -> str:
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
        out.write(tail)
    return str(path)


def known_file(tmp_path: Path) -> str:
    """Two call sites; the answers are worked out in the tests below."""
    return write(
        tmp_path / "known.jsonl",
        [
            # A: serial tiny work of 4 x 2 = 8 items measured 1.0 s: left 1.0 - (0.5 + 0.01)
            decision("d1", SITE_A, False, "tiny_workload", n_instances=4, n_features=2),
            run("d1", SITE_A, True, 1.0),
            # A: serial tiny work of 12 items measured 10 ms: nothing left on the table
            decision("d2", SITE_A, False, "tiny_workload", n_instances=6, n_features=2),
            run("d2", SITE_A, True, 0.01),
            # A: parallel, estimated 2.0 s serial, took 1.5 s: saved 0.5, busy 2.4 of 3.0
            decision("d3", SITE_A, True, "enabled", est_serial=2.0, est_parallel=1.01),
            fallback("d3"),
            run("d3", SITE_A, False, 1.5, busy=2.4, fallbacks=1),
            # A: the run comes before its decision; estimated 0.5 s serial, took 0.8 s: lost 0.3
            run("d4", SITE_A, False, 0.8, busy=0.8),
            decision("d4", SITE_A, True, "enabled", est_serial=0.5),
            # B: spawn cost, 0.3 s measured with a 0.2 s start-up charged: nothing left
            decision(
                "d5", SITE_B, False, "spawn_cost", start=0.2, est_serial=0.3, est_parallel=0.35
            ),
            run("d5", SITE_B, True, 0.3),
            # B: a decision without a map (decide_use_parallel alone)
            decision("d6", SITE_B, False, "below_min_instances", n_instances=3),
            {"event": "nested", "time": 1.0, "version": 2, "pid": 10, "host": "n", "items": 3},
        ],
    )


def test_known_answers_per_call_site_and_overall(tmp_path: Path) -> None:
    report = build_report([known_file(tmp_path)])
    assert report["lines"]["records"] == 13
    assert report["lines"]["skipped"] == 0
    assert report["lines"]["events"] == {"decision": 6, "run": 5, "fallback": 1, "nested": 1}
    assert report["linking"]["linked"] == 5
    assert report["linking"]["decisions_without_run"] == 1
    assert report["linking"]["runs_without_decision"] == 0

    a = report["call_sites"][SITE_A]
    assert (a["decisions"], a["serial_decisions"], a["parallel_decisions"]) == (4, 2, 2)
    assert a["reasons"] == {"tiny_workload": 2, "enabled": 2}
    assert a["serial_runs"] == 2 and a["serial_wall_s"] == pytest.approx(1.01)
    assert a["parallel_runs"] == 2 and a["parallel_wall_s"] == pytest.approx(2.3)
    assert a["efficiency_pct"] == pytest.approx(100 * 3.2 / 4.6, abs=0.01)
    assert a["left_on_table_s"] == pytest.approx(0.49)
    assert a["left_on_table_runs"] == 1
    assert a["left_by_reason"] == {"tiny_workload": pytest.approx(0.49)}
    assert a["saved_s"] == pytest.approx(0.5)
    assert a["lost_s"] == pytest.approx(0.3) and a["lost_runs"] == 1
    assert a["fallbacks"] == {"WorkerCrashedError": 1}
    assert a["run_fallbacks"] == 1

    b = report["call_sites"][SITE_B]
    assert (b["decisions"], b["serial_decisions"]) == (2, 2)
    assert b["left_on_table_s"] == 0
    # d5 estimated parallel slower than serial: not counted as the decisions' own gain
    assert b["estimated_gain_s"] == 0

    overall = report["overall"]
    assert overall["decisions"] == 6
    assert overall["serial_wall_s"] == pytest.approx(1.31)
    assert overall["left_on_table_s"] == pytest.approx(0.49)
    assert report["fallbacks"]["by_cause"] == {"WorkerCrashedError": 1}
    assert report["span"] == {
        "first_time": 1.0,
        "last_time": 1_700_000_001.0,
        "processes": 2,  # (host, pid): the nested record names another host
        "hosts": 2,
    }
    # the larger of the two tiny workloads would not have gained: keep the threshold
    tiny = next(r for r in report["recommendations"] if r["reason"] == "tiny_workload")
    assert tiny["verdict"] == "keep" and tiny["would_gain"] == 1 and tiny["decisions"] == 2
    margin = report["recommendations"][-1]
    assert margin["verdict"] == "raise" and margin["slower_than_serial_estimate"] == 1


def test_the_text_report_names_sites_reasons_and_recommendations(tmp_path: Path) -> None:
    text = render(build_report([known_file(tmp_path)]))
    for expected in (
        SITE_A,
        SITE_B,
        "tiny_workload 2",
        "Recommendations",
        "efficiency",
        "keep tiny_workload_threshold",
        "spawn/no-gain margin could be raised",
    ):
        assert expected in text


def test_a_threshold_that_could_drop(tmp_path: Path) -> None:
    records = []
    # sizes 8 (10 ms: no gain), 12 and 14 (1 s each: a gain): tiny could drop to 12
    for n, (instances, wall) in enumerate([(4, 0.01), (6, 1.0), (7, 1.0), (7, 2.0)]):
        records += [
            decision(f"t{n}", SITE_A, False, "tiny_workload", n_instances=instances, n_features=2),
            run(f"t{n}", SITE_A, True, wall),
        ]
    report = build_report([write(tmp_path / "t.jsonl", records)])
    tiny = next(r for r in report["recommendations"] if r["reason"] == "tiny_workload")
    assert tiny["verdict"] == "lower" and tiny["could_drop_to"] == 12
    assert "tiny_workload_threshold could drop to 12" in tiny["text"]
    assert "these 3 serial decisions" in tiny["text"]
    assert report["recommendations"][0]["verdict"] == "no evidence"


def test_lowest_safe_size_and_left_on_table() -> None:
    assert lowest_safe_size({5: [1, 1, 0, 0], 9: [2, 2, 0, 0], 3: [1, 0, 0, 0]}) == 5
    assert lowest_safe_size({5: [1, 1, 0, 0], 9: [2, 1, 0, 0]}) is None
    assert left_on_table(1.0, 4, 0.1) == pytest.approx(0.65)
    assert left_on_table(1.0, 1, 0.0) == 0.0
    assert left_on_table(0.1, 2, 0.2) == 0.0


def test_bad_lines_are_reported_with_their_line_and_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad.jsonl",
        [
            decision("d1", SITE_A, False, "tiny_workload"),  # line 1
            "{not json",  # 2
            "[1, 2]",  # 3
            '{"time": 1}',  # 4: no event
            json.dumps({**run("d1", SITE_A, True, 1.0), "version": 3}),  # 5
            json.dumps({**run("d1", SITE_A, True, 1.0), "version": "2"}),  # 6
            json.dumps({**run("d1", SITE_A, True, 1.0), "wall_time_s": "slow"}),  # 7
            json.dumps({**run("d1", SITE_A, True, 1.0), "decision_id": None}),  # 8
            "",  # 9: blank lines are ignored
            run("d1", SITE_A, True, 1.0),  # 10
        ],
        tail='{"event": "run", "version": 2, "wall_ti',  # 11: cut short
    )
    report = build_report([path])
    lines = report["lines"]
    assert lines["records"] == 2
    assert lines["skipped"] == 8
    assert lines["problems"] == {
        "malformed": 3,
        "invalid": 2,
        "unknown_version": 1,
        "bad_version": 1,
        "truncated": 1,
    }
    where = {(p["line"], p["kind"]) for p in lines["listed"]}
    assert where == {
        (2, "malformed"),
        (3, "malformed"),
        (4, "malformed"),
        (5, "unknown_version"),
        (6, "bad_version"),
        (7, "invalid"),
        (8, "invalid"),
        (11, "truncated"),
    }
    assert all(p["file"] == path for p in lines["listed"])
    assert report["linking"]["linked"] == 1
    text = render(report)
    assert f"{path}:11: truncated" in text and f"{path}:5: unknown_version" in text


def test_invalid_utf8_and_non_finite_numbers_do_not_crash(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    d = decision("d1", SITE_A, True, "enabled", est_serial="inf", est_parallel="nan")
    r = run("d1", SITE_A, False, 1.0, busy="nan")
    bad_wall = run("d2", SITE_A, True, "inf")  # a measured time must be a finite number
    path.write_bytes(
        b"\xff\xfe garbage\n" + "".join(json.dumps(x) + "\n" for x in (d, r, bad_wall)).encode()
    )
    report = build_report([str(path)])
    assert report["lines"]["problems"] == {"malformed": 1, "invalid": 1}
    assert report["lines"]["records"] == 2
    site = report["call_sites"][SITE_A]
    # unknown estimates: neither saved nor lost; unknown busy time: no efficiency
    assert (site["saved_s"], site["lost_s"], site["efficiency_pct"]) == (0, 0, None)
    json.loads(json.dumps(report, allow_nan=False))  # strict JSON throughout


def test_version_1_lines_are_counted_unlinked_and_mixed_versions_noted(tmp_path: Path) -> None:
    v1_decision = {
        "event": "decision",
        "time": 5.0,
        "use_parallel": True,
        "reason": "enabled",
        "strategy": "threads",
        "workers": 2,
        "n_instances": 100,
    }
    v1_run = {
        "event": "run",
        "time": 6.0,
        "strategy": "threads",
        "items": 100,
        "chunks": 8,
        "workers": 2,
        "wall_time_s": 0.5,
        "busy_time_s": 0.8,
        "utilisation_pct": 80.0,
        "fallbacks": 0,
        "error": None,
    }
    ce_decision = {
        "event": "decision",
        "time": 7.0,
        "decision": "sequential",
        "reason": "below_threshold",
        "strategy": "threads",
        "work_items": 4,
    }
    path = write(
        tmp_path / "mixed.jsonl",
        [
            v1_decision,
            v1_run,
            ce_decision,
            decision("d1", SITE_A, False, "disabled"),
            run("d1", SITE_A, True, 0.25),
        ],
    )
    report = build_report([path])
    assert report["lines"]["by_version"] == {"1": 3, "2": 2}
    assert report["lines"]["mixed_versions"] is True
    assert report["lines"]["skipped"] == 0
    assert report["lines"]["listed"] == [
        {
            "file": path,
            "line": 4,
            "kind": "mixed_versions",
            "message": "version 2 records follow version 1 ones",
        }
    ]
    unlinked = report["call_sites"][UNLINKED]
    assert (
        unlinked["decisions"],
        unlinked["serial_decisions"],
        unlinked["parallel_decisions"],
    ) == (2, 1, 1)
    assert unlinked["parallel_runs"] == 1 and unlinked["parallel_wall_s"] == 0.5
    assert unlinked["efficiency_pct"] == 80.0
    assert report["linking"]["unlinked_decisions"] == 2
    assert report["linking"]["unlinked_runs"] == 1
    assert report["linking"]["linked"] == 1


def test_linking_across_files_duplicates_and_the_bound(tmp_path: Path) -> None:
    first = write(tmp_path / "1.jsonl", [run(f"r{n}", SITE_A, True, 1.0) for n in range(3)])
    second = write(
        tmp_path / "2.jsonl",
        [decision(f"r{n}", SITE_A, False, "disabled") for n in range(3)]
        + [decision("r0", SITE_A, False, "disabled")],
    )
    report = build_report([first, second])
    assert report["linking"]["linked"] == 3
    assert report["linking"]["duplicate_ids"] == 0  # r0 was paired and gone: it waits again
    assert report["linking"]["decisions_without_run"] == 1

    # with room for two waiting ids the oldest run (r0) is dropped before its decision comes
    late = write(
        tmp_path / "3.jsonl", [decision(f"r{n}", SITE_A, False, "disabled") for n in (2, 1, 0)]
    )
    bounded = build_report([first, late], max_pending=2)
    assert bounded["linking"]["evicted"] == 1
    assert bounded["linking"]["linked"] == 2
    assert bounded["linking"]["decisions_without_run"] == 1
    assert bounded["overall"]["serial_wall_s"] == 3.0  # measured time is counted anyway

    dup = write(tmp_path / "dup.jsonl", [decision("x", SITE_A, False, "disabled")] * 2)
    assert build_report([dup])["linking"]["duplicate_ids"] == 1


def test_fallbacks_without_a_known_decision_are_unlinked(tmp_path: Path) -> None:
    path = write(
        tmp_path / "f.jsonl",
        [fallback(None, "SerializationError"), fallback("gone", "BackendUnavailableError")],
    )
    report = build_report([path])
    assert report["fallbacks"]["by_cause"] == {
        "SerializationError": 1,
        "BackendUnavailableError": 1,
    }
    assert report["call_sites"][UNLINKED]["fallbacks"] == {
        "SerializationError": 1,
        "BackendUnavailableError": 1,
    }


WRITER = textwrap.dedent(
    """
    import os, sys
    from ce_parallel.telemetry import append_jsonl
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(n):
        base = {"version": 2, "pid": os.getpid(), "host": "h", "time": float(i),
                "decision_id": f"{tag}-{i}", "call_site": f"app.{tag}:work"}
        append_jsonl(path, {**base, "event": "decision", "use_parallel": False,
                            "reason": "tiny_workload", "n_instances": 4, "n_features": 1,
                            "cpu_budget": 2, "start_cost_s": 0.001, "detail": "x" * 300})
        append_jsonl(path, {**base, "event": "run", "serial": True, "items": 4,
                            "wall_time_s": 0.001, "fallbacks": 0})
    """
)


def _env() -> dict[str, str]:
    src = str(Path(fieldreport.__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CE_PARALLEL")}
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    return env


def test_two_processes_appending_to_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.jsonl")
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, path, tag, "300"], env=_env())
        for tag in ("one", "two")
    ]
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    report = build_report([path])
    assert report["lines"]["records"] == 1200
    assert report["lines"]["skipped"] == 0
    assert report["linking"]["linked"] == 600
    assert report["span"]["processes"] == 2
    for tag in ("one", "two"):
        site = report["call_sites"][f"app.{tag}:work"]
        assert site["serial_decisions"] == 300 and site["serial_runs"] == 300


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ce_parallel", "report", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )


def test_cli_text_json_and_exit_codes(tmp_path: Path) -> None:
    path = known_file(tmp_path)
    text = _cli(path)
    assert text.returncode == 0, text.stderr
    assert SITE_A in text.stdout and "Recommendations" in text.stdout
    as_json = _cli(path, path, "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["files"] == [path, path]
    # the same ids twice: the second copy's runs are paired again, its decisions too
    assert data["overall"]["decisions"] == 12
    missing = _cli(path, str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr and "nope.jsonl" in missing.stderr
    assert missing.stdout == ""
    assert _cli(str(tmp_path)).returncode == 2  # a directory


def test_cli_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "evidence.png"
    proc = _cli(known_file(tmp_path), "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_to_an_unwritable_path_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "no" / "such" / "dir" / "x.png")
    assert fieldreport.main([known_file(tmp_path)], plot_path=out) == fieldreport.EXIT_NO_PLOT
    assert "cannot write" in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status = fieldreport.main([known_file(tmp_path)], plot_path=str(tmp_path / "x.png"))
    assert status == fieldreport.EXIT_NO_PLOT
    assert "needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
