"""A telemetry file read in parallel pieces gives the report one pass gives."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
from pathlib import Path

import pytest
from test_fieldreport import SITE_A, SITE_B, decision, decoder, run

from ce_parallel import heuristics
from ce_parallel.fieldreport import build_report
from ce_parallel.fieldreport.pieces import plan_pieces

__all__ = ["decoder"]  # the fixture: every test with each JSON decoder

CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "CIRCLECI", "TF_BUILD")


def messy_file(path: Path, maps: int = 400, seed: int = 3) -> str:
    """Decision/run pairs (a run before its decision now and then, a pair split by other
    records), fallbacks, malformed lines, a version 1 stretch, and a last line cut short."""
    rng = random.Random(seed)
    lines: list[str] = []
    for n in range(maps):
        site = SITE_A if n % 3 else SITE_B
        parallel = rng.random() < 0.5
        reason = "enabled" if parallel else ("tiny_workload", "spawn_cost", "disabled")[n % 3]
        pair = [
            decision(f"d{n}", site, parallel, reason, n_instances=n % 40, est_parallel=0.4),
            run(f"d{n}", site, not parallel, rng.uniform(0.01, 2.0), busy=0.5),
        ]
        if n % 7 == 0:
            pair.reverse()
        if n % 11 == 0 and parallel:
            pair.insert(
                1,
                {
                    "event": "fallback",
                    "time": 1.7e9,
                    "version": 2,
                    "pid": 10,
                    "host": "node-1",
                    "decision_id": f"d{n}",
                    "cause": "WorkerCrashedError",
                    "stage": "run",
                    "items": 3,
                },
            )
        lines.extend(json.dumps(record) for record in pair)
        if n % 37 == 0:
            lines.append("{not json")
        if n % 53 == 0:
            lines.append(json.dumps({"event": "run", "version": 2, "items": "many"}))
        if n % 61 == 0:
            lines.append("")
        if 150 <= n < 170:  # version 1 records in the middle
            lines.append(json.dumps({"event": "decision", "time": 1.7e9, "decision": "parallel"}))
    # a decision whose run is far away (other pieces in between)
    lines.insert(5, json.dumps(decision("far", SITE_A, False, "spawn_cost")))
    lines.append(json.dumps(run("far", SITE_A, True, 3.0)))
    text = "\n".join(lines) + '\n{"event": "run", "vers'
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("pieces", [2, 3, 7, 50])
def test_pieces_give_the_report_of_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pieces: int
) -> None:
    path = messy_file(tmp_path / "t.jsonl")
    one_pass = build_report([path], pieces_per_file=1)
    monkeypatch.setattr(heuristics, "REPORT_PIECE_BYTES", 1)
    assert len(plan_pieces([path], pieces, 1)) == pieces
    assert build_report([path], pieces_per_file=pieces) == one_pass
    # the answer itself: every problem was found and placed on its line
    kinds = one_pass["lines"]["problems"]
    assert kinds["malformed"] == 11 and kinds["invalid"] == 8 and kinds["truncated"] == 1
    assert kinds["mixed_versions"] == 40  # into and out of each of the 20 version 1 lines
    assert one_pass["linking"]["linked"] == 401
    assert one_pass["linking"]["decisions_without_run"] == 0
    text = Path(path).read_text(encoding="utf-8").split("\n")
    for problem in one_pass["lines"]["listed"]:
        line = text[problem["line"] - 1]
        if problem["kind"] == "malformed":
            assert line == "{not json"
        elif problem["kind"] == "mixed_versions":
            assert json.loads(line).get("version", 1) != json.loads(text[problem["line"] - 2]).get(
                "version", 1
            )


def test_pieces_of_several_files_keep_each_files_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = messy_file(tmp_path / "a.jsonl", maps=120, seed=1)
    second = messy_file(tmp_path / "b.jsonl", maps=90, seed=2)
    one_pass = build_report([first, second, first], pieces_per_file=1)
    monkeypatch.setattr(heuristics, "REPORT_PIECE_BYTES", 1)
    split = build_report([first, second, first], pieces_per_file=4)
    # one file given twice: each decision id of it is linked once, then waits again; in pieces
    # the ids of the second reading meet the first reading's and count as duplicates instead
    for report in (one_pass, split):
        report.pop("linking")
        for section in ("overall", *report["call_sites"]):
            stats = report["overall"] if section == "overall" else report["call_sites"][section]
            for name in (
                "linked",
                "left_on_table_s",
                "left_on_table_runs",
                "left_by_reason",
                "estimated_gain_s",
                "estimated_gain_decisions",
                "saved_s",
                "lost_s",
                "lost_runs",
                "fallbacks",
            ):
                stats.pop(name)
        report.pop("recommendations")
    assert split == one_pass


@pytest.mark.timeout(120)
def test_a_large_file_is_read_by_worker_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoder: str
) -> None:
    if decoder == "json" and importlib.util.find_spec("orjson") is not None:
        # the workers are fresh interpreters: they take orjson when it is installed (its
        # messages for malformed lines differ from the standard library's)
        pytest.skip("the workers decode with orjson: the orjson run of this test covers it")
    path = messy_file(tmp_path / "t.jsonl")
    expected = build_report([path], pieces_per_file=1)
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CE_PARALLEL", raising=False)
    telemetry = tmp_path / "self.jsonl"
    monkeypatch.setenv("CE_PARALLEL_TELEMETRY", str(telemetry))
    monkeypatch.setattr(heuristics, "REPORT_PIECE_BYTES", 1)
    # a cost per byte that makes the pieces worth a pool, whatever this machine's speed
    monkeypatch.setattr(heuristics, "REPORT_SECONDS_PER_BYTE", 1e-3)
    assert build_report([path], pieces_per_file=2) == expected
    records = [json.loads(line) for line in telemetry.read_text().splitlines()]
    decisions = [r for r in records if r["event"] == "decision"]
    runs = [r for r in records if r["event"] == "run"]
    assert [d["use_parallel"] for d in decisions] == [True], decisions
    assert [(r["serial"], r["strategy"], r["fallbacks"]) for r in runs] == [(False, "joblib", 0)]
    assert not [r for r in records if r["event"] == "fallback"]


def test_the_kill_switch_reads_the_pieces_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = messy_file(tmp_path / "t.jsonl", maps=60)
    expected = build_report([path], pieces_per_file=1)
    telemetry = tmp_path / "self.jsonl"
    monkeypatch.setenv("CE_PARALLEL", "off")
    monkeypatch.setenv("CE_PARALLEL_TELEMETRY", str(telemetry))
    monkeypatch.setattr(heuristics, "REPORT_PIECE_BYTES", 1)
    monkeypatch.setattr(heuristics, "REPORT_SECONDS_PER_BYTE", 1e-3)
    assert build_report([path], pieces_per_file=3) == expected
    records = [json.loads(line) for line in telemetry.read_text().splitlines()]
    assert [(r["use_parallel"], r["reason"]) for r in records if r["event"] == "decision"] == [
        (False, "operator_off")
    ]


def test_plan_pieces_cuts_at_line_starts(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"".join(b"x" * (k % 13) + b"\n" for k in range(500)))
    data = path.read_bytes()
    for wanted in (1, 2, 5, 64):
        pieces = plan_pieces([str(path)], wanted, 16)
        assert pieces[0].start == 0 and pieces[-1].end is None
        for a, b in itertools.pairwise(pieces):
            assert a.end == b.start and data[b.start - 1 : b.start] == b"\n"
        assert len(pieces) <= wanted
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_bytes(b'{"event": "x"}\n')
    assert len(plan_pieces([str(tiny)], 8, 1 << 20)) == 1
