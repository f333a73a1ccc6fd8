"""The calibrated-explanations example, run with CE_PARALLEL_TELEMETRY, reads back as a report
whose totals match the run records in the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXTRA = "needs the ce extra (pip install 'ce-parallel[ce]'): calibrated-explanations, scikit-learn"
pytest.importorskip("calibrated_explanations", reason=EXTRA)
pytest.importorskip("sklearn", reason=EXTRA)

from ce_parallel.fieldreport import build_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "calibrated_explanations_parallel.py"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_example_telemetry_report_totals_match_the_run_records(tmp_path: Path) -> None:
    path = tmp_path / "ce.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CE_PARALLEL")}
    env["CE_PARALLEL_TELEMETRY"] = str(path)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--quick", "--strategy", "threads"],
        capture_output=True,
        text=True,
        env=env,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    runs = [r for r in records if r["event"] == "run"]
    decisions = [r for r in records if r["event"] == "decision"]
    assert runs

    report = build_report([str(path)])
    overall = report["overall"]
    assert report["lines"]["skipped"] == 0
    assert report["lines"]["records"] == len(records)
    assert overall["decisions"] == len(decisions)
    assert overall["serial_runs"] + overall["parallel_runs"] == len(runs)
    assert overall["serial_items"] + overall["parallel_items"] == sum(r["items"] for r in runs)
    measured = overall["serial_wall_s"] + overall["parallel_wall_s"]
    assert measured == pytest.approx(sum(r["wall_time_s"] for r in runs), rel=1e-6, abs=1e-5)
    per_site = sum(s["serial_runs"] + s["parallel_runs"] for s in report["call_sites"].values())
    assert per_site == len(runs)
    # every map wrote a run record linked to its decision (version 2 records)
    assert all(isinstance(r.get("decision_id"), str) for r in runs + decisions)
    assert report["linking"]["linked"] == len(runs)
    assert report["linking"]["unlinked_runs"] == 0
    assert report["linking"]["runs_without_decision"] == 0
