"""``ce-parallel doctor`` and the ``ce-parallel`` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ce_parallel import cli
from ce_parallel.heuristics import FACADE_MIN_INSTANCES

_CE_VARIABLES = (
    "CE_PARALLEL",
    "CE_PARALLEL_FULL",
    "CE_PARALLEL_TELEMETRY",
    "CEPARALLEL_IN_WORKER",
)
# CI variables the CI detection reads; cleared so a test's outcome does not depend on the runner
_CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "TF_BUILD", "JENKINS_URL")


def _environ(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CE_VARIABLES and k not in _CI_VARIABLES}
    env.update(overrides)
    return env


def _doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ce_parallel", "doctor", *args],
        capture_output=True,
        text=True,
        env=_environ(**env),
        timeout=60,
    )


def test_doctor_table_names_budget_winner_settings_and_decisions() -> None:
    proc = _doctor(CE_PARALLEL="threads,workers=1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "CPU budget: 1 CPU(s), limited by max_workers" in out
    assert "<- winner" in out
    assert "threads,workers=1" in out  # the raw environment value
    assert "Configuration (ParallelConfig.from_env)" in out
    # one worker cannot run in parallel: the facade says so for every sample workload
    assert "no_cpu_budget" in out
    assert "status: ok" in out


def test_doctor_json_reports_every_section_and_the_decisions() -> None:
    proc = _doctor("--json", CE_PARALLEL="joblib")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for key in ("cpu_budget", "platform", "ci", "backends", "configuration", "blas", "facade"):
        assert key in report
    budget = report["cpu_budget"]
    assert budget["sources"][budget["limited_by"]] == budget["count"]
    assert report["configuration"]["settings"]["strategy"] == "joblib"
    assert report["configuration"]["settings"]["enabled"] is True
    assert {b["name"] for b in report["backends"]} >= {"joblib", "loky", "distributed"}
    joblib_row = next(b for b in report["backends"] if b["name"] == "joblib")
    assert joblib_row["importable"] is True and joblib_row["version"]
    # joblib is requested, so no what-if scenarios are added
    scenarios = report["facade"]["scenarios"]
    assert [s["scenario"] for s in scenarios] == ["as configured"]
    decisions = scenarios[0]["decisions"]
    assert len(decisions) == len(cli.SAMPLE_WORKLOADS)
    tiny = decisions[0]
    assert tiny["n_instances"] < FACADE_MIN_INSTANCES
    assert tiny["decision"] == "serial"
    assert tiny["reason"] in {"below_min_instances", "no_cpu_budget"}
    assert report["status"] == 0


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("CE_PARALLEL", "thread", "'thread'"),
        ("CE_PARALLEL", "workers=0", "'workers=0'"),
        ("CE_PARALLEL_FULL", "maybe", "CE_PARALLEL_FULL"),
    ],
)
def test_doctor_exits_2_and_prints_the_error_for_a_bad_setting(
    variable: str, value: str, named: str
) -> None:
    proc = _doctor(**{variable: value})
    assert proc.returncode == cli.EXIT_BAD_CONFIG
    assert "INVALID" in proc.stdout
    assert named in proc.stdout
    assert "status: configuration invalid" in proc.stdout


def test_doctor_json_with_a_bad_setting_carries_the_exact_error() -> None:
    proc = _doctor("--json", CE_PARALLEL="on,fallback=never")
    assert proc.returncode == cli.EXIT_BAD_CONFIG
    report = json.loads(proc.stdout)
    conf = report["configuration"]
    assert conf["valid"] is False
    assert "fallback=never" in conf["error"] and "CE_PARALLEL" in conf["error"]
    assert report["facade"]["error"] is not None
    assert report["status"] == cli.EXIT_BAD_CONFIG


def test_gather_shows_what_if_scenarios_when_serial_is_configured() -> None:
    report = cli.gather(_environ(CE_PARALLEL="workers=2"))
    labels = [s["scenario"] for s in report["facade"]["scenarios"]]
    # the what-if keeps the operator's own tokens and adds a strategy
    assert labels == [
        "as configured",
        "if CE_PARALLEL=workers=2,threads",
        "if CE_PARALLEL=workers=2,joblib",
    ]
    assert all(d["reason"] == "disabled" for d in report["facade"]["scenarios"][0]["decisions"])


def test_gather_reports_the_ci_provider() -> None:
    report = cli.gather(_environ(GITHUB_ACTIONS="true", CE_PARALLEL="workers=2"))
    assert report["ci"] == {"detected": True, "provider": "github-actions"}


def test_gather_does_not_write_decisions_to_the_telemetry_file(tmp_path) -> None:
    path = tmp_path / "records.jsonl"
    report = cli.gather(_environ(CE_PARALLEL="threads", CE_PARALLEL_TELEMETRY=str(path)))
    assert report["configuration"]["settings"]["telemetry_path"] == str(path)
    assert not path.exists()


def test_render_table_aligns_columns() -> None:
    text = cli.render_table(["a", "bb"], [("xxx", 1), ("y", None)], indent="")
    lines = text.splitlines()
    assert lines == ["a    bb", "---  --", "xxx  1", "y    -"]


def test_render_table_wraps_a_long_last_column_under_itself() -> None:
    text = cli.render_table(["k", "why"], [("a", "word " * 30)], indent="", width=60)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 60
    assert lines[2].startswith("a  word") and all(line.startswith("   w") for line in lines[3:])


def test_render_table_moves_a_squeezed_last_column_below_its_row() -> None:
    text = cli.render_table(["k", "why"], [("x" * 30, "word " * 10)], indent="", width=40)
    lines = text.splitlines()
    assert lines[2] == "x" * 30
    assert lines[3].startswith("    word") and max(len(line) for line in lines) <= 40


def test_doctor_lines_fit_in_100_columns() -> None:
    proc = _doctor(CE_PARALLEL="joblib")
    assert proc.returncode == 0, proc.stderr
    widest = max(proc.stdout.splitlines(), key=len)
    assert len(widest) <= 100, widest


def test_doctor_names_loky_max_cpu_count_as_the_limit() -> None:
    proc = _doctor(LOKY_MAX_CPU_COUNT="1")
    assert proc.returncode == 0, proc.stderr
    assert "CPU budget: 1 CPU(s), limited by LOKY_MAX_CPU_COUNT" in proc.stdout


def test_main_without_a_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 0
    assert "doctor" in capsys.readouterr().out


def test_bench_delegates_every_argument_to_the_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    from ce_parallel.bench import ablation

    seen: list[list[str]] = []
    monkeypatch.setattr(ablation, "main", lambda argv: seen.append(list(argv)) or 7)
    assert cli.main(["bench", "--tiny", "--out", "x.json"]) == 7
    assert seen == [["--tiny", "--out", "x.json"]]
