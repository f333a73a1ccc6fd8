"""The ablation harness runs end to end and writes the documented JSON schema.

Speed is never checked here: the numbers of a seconds-long run mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from ce_parallel.bench import ablation, measure, runners
from ce_parallel.bench.workloads import WORKLOADS, Case, Workload, get_workload

SMOKE_WORKLOADS = "tiny,sleep,cpu_coarse"
SMOKE_RUNNERS = "ce:sequential,ce:threads,ce:auto,facade:serial,cf:threads,ce:threads:cold"
STAT_KEYS = {"repeats", "times_s", "min_s", "median_s", "max_s", "correct", "error"}
RATIO_KEYS = {"speedup_vs_serial", "ratio_vs_best_baseline"}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # a folder that does not exist yet: the harness creates it before the run
    out = tmp_path_factory.mktemp("bench") / "new" / "results.json"
    markdown = out.with_suffix(".md")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ce_parallel.bench.ablation",
            "--tiny",
            "--workloads",
            SMOKE_WORKLOADS,
            "--runners",
            SMOKE_RUNNERS,
            "--out",
            str(out),
            "--markdown",
            str(markdown),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "| workload |" in completed.stdout
    assert markdown.read_text(encoding="utf-8") in completed.stdout
    assert "[1/3] tiny" in completed.stderr  # progress goes to stderr
    assert "Traceback" not in completed.stderr
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:  # the chart is written next to the JSON by default
        assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    return json.loads(out.read_text(encoding="utf-8"))


def test_document_names_the_machine(document: dict[str, Any]) -> None:
    machine = document["machine"]
    assert isinstance(machine["cpu_budget"], int) and machine["cpu_budget"] >= 1
    assert isinstance(machine["cpu_budget_source"], str)
    assert machine["python"].count(".") == 2
    for library in ("ce_parallel", "joblib", "loky"):
        assert machine["versions"][library]
    assert machine["blas"]["requested_threads"] == 1
    assert document["mode"] == "tiny" and document["repeats"] == ablation.REPEATS["tiny"]


def test_every_runner_and_workload_has_statistics(document: dict[str, Any]) -> None:
    expected_runners = {"serial", *SMOKE_RUNNERS.split(",")}
    assert set(document["runners"]) == expected_runners
    assert set(document["results"]) == set(SMOKE_WORKLOADS.split(","))
    for workload, result in document["results"].items():
        runners = result["runners"]
        # cold runners are measured on the tiny workload only in tiny mode
        cold = {"ce:threads:cold"} if workload != "tiny" else set()
        assert set(runners) == expected_runners - cold
        for name, stats in runners.items():
            assert set(stats) >= STAT_KEYS | RATIO_KEYS, (workload, name)
            if stats["error"] is None:
                assert stats["repeats"] == document["repeats"]
                assert stats["min_s"] <= stats["median_s"] <= stats["max_s"]
                assert stats["correct"] is True, (workload, name)
                assert stats["speedup_vs_serial"] > 0
            else:
                assert isinstance(stats["error"], str)
        assert result["best_baseline"] == "cf:threads"
        assert runners["cf:threads"]["ratio_vs_best_baseline"] == pytest.approx(1.0)


def test_auto_choice_and_regret_are_reported(document: dict[str, Any]) -> None:
    for result in document["results"].values():
        auto = result["auto"]
        assert set(auto) == {"chose", "reasons", "median_s", "regret", "error"}
        assert result["best_fixed_strategy"] in ("sequential", "threads")
        if auto["error"] is None:
            assert auto["regret"] > 0
            assert auto["chose"], "auto ran but its choice was not recorded"


def test_targets_are_reported_not_asserted(document: dict[str, Any]) -> None:
    targets = document["targets"]
    assert {"coarse_processes_speedup", "facade_serial_overhead_tiny", "auto_regret"} <= set(
        targets
    )
    for target in targets.values():
        assert {"description", "value", "target", "met"} <= set(target)
    # ce:processes was not run, so its target is reported as unmeasured rather than invented
    assert targets["coarse_processes_speedup"]["met"] is None


def _raising(x: int) -> int:
    raise RuntimeError("machinery missing")


def _wrong(state: Any, fn: Any, items: list[Any]) -> list[Any]:
    return [fn(x) + 1 for x in items]


def _broken(state: Any, fn: Any, items: list[Any]) -> list[Any]:
    raise OSError("pipe closed")


def _unstartable() -> Any:
    raise RuntimeError("pool refused to start")


def test_wrong_answers_and_errors_are_recorded_not_raised() -> None:
    lineup = [
        runners.Runner("serial", "serial", runners.serial_run),
        runners.Runner("wrong", "ce", _wrong),
        runners.Runner("broken", "ce", _broken),
        runners.Runner("unstartable", "ce", runners.serial_run, _unstartable),
    ]
    tiny = Workload(
        "t", "three squares", lambda: Case(lambda x: x * x, [1, 2, 3], "3"), {"tiny": {}}
    )
    cells, facts, unavailable = measure.measure(
        [tiny], lineup, mode="tiny", repeats=2, cold_workloads=None
    )
    assert unavailable == {}
    row = cells["t"]
    assert row["serial"].correct and len(row["serial"].times) == 2
    assert row["wrong"].correct is False and len(row["wrong"].times) == 2
    assert row["broken"].error.startswith("OSError") and row["broken"].times == []
    assert row["unstartable"].error == "RuntimeError: pool refused to start"
    assert facts["t"]["items"] == 3


def test_a_workload_with_missing_packages_is_skipped_with_a_reason() -> None:
    absent = Workload(
        "absent",
        "needs a package",
        lambda: Case(_raising, [1], "1"),
        {"tiny": {}},
        ("ce_parallel_no_such_package",),
    )
    cells, facts, _ = measure.measure(
        [absent],
        [runners.Runner("serial", "serial", runners.serial_run)],
        mode="tiny",
        repeats=1,
        cold_workloads=None,
    )
    assert cells == {}
    assert "ce_parallel_no_such_package not installed" in facts["absent"]["skipped"]


@pytest.mark.parametrize(
    ("expected", "got", "equal"),
    [
        ([1, 2, 3], [1, 2, 3], True),
        ([1, 2, 3], [1, 3, 2], False),
        ([1, 2], [1, 2, 3], False),
        ([0.1 + 0.2], [0.3], True),
        ([1.0], [1.001], False),
        ("a", "a", True),
    ],
)
def test_results_equal_is_exact_for_ints_and_close_for_floats(
    expected: Any, got: Any, equal: bool
) -> None:
    assert measure.results_equal(expected, got) is equal


def test_results_equal_compares_arrays_by_shape_and_value() -> None:
    np = pytest.importorskip("numpy")
    a = np.linspace(0, 1, 5)
    assert measure.results_equal([a], [a.copy()])
    assert not measure.results_equal([a], [a[:4]])
    assert not measure.results_equal([a], [a + 1e-3])


def test_every_workload_is_deterministic_in_tiny_mode() -> None:
    for workload in WORKLOADS:
        if workload.missing():
            continue
        first, second = workload.case("tiny"), workload.case("tiny")
        assert measure.results_equal(
            [first.fn(x) for x in first.items], [second.fn(x) for x in second.items]
        ), workload.name


def test_unknown_names_are_refused_with_the_accepted_list() -> None:
    with pytest.raises(ValueError, match="expected one of tiny"):
        get_workload("nope")
    with pytest.raises(SystemExit, match="--runners bogus is not accepted"):
        ablation.main(["--tiny", "--runners", "bogus"])


class _MissingExtra(RuntimeError):
    pass


def _needs_missing_backend() -> Any:
    try:
        import ce_parallel_no_such_backend  # type: ignore[import-not-found]  # noqa: F401
    except ImportError as exc:
        raise _MissingExtra("strategy 'x' needs the x extra: pip install 'ce-parallel[x]'") from exc


def _run_needs_missing_backend(state: Any, fn: Any, items: list[Any]) -> list[Any]:
    _needs_missing_backend()
    return []


def test_a_runner_whose_package_is_missing_is_left_out_with_the_reason() -> None:
    lineup = [
        runners.Runner("serial", "serial", runners.serial_run),
        runners.Runner("ce:x", "ce", runners.serial_run, _needs_missing_backend),
        # cold: its warm sibling is missing, so it is left out without being timed
        runners.Runner("ce:x:cold", "ce-cold", runners.serial_run, cold=True),
        # cold alone: left out when its first run finds the package missing
        runners.Runner("ce:y:cold", "ce-cold", _run_needs_missing_backend, cold=True),
    ]
    tiny = Workload("t", "squares", lambda: Case(lambda x: x * x, [1, 2], "2"), {"tiny": {}})
    cells, _, unavailable = measure.measure(
        [tiny], lineup, mode="tiny", repeats=2, cold_workloads=None
    )
    why = "strategy 'x' needs the x extra: pip install 'ce-parallel[x]'"
    assert unavailable == {"ce:x": why, "ce:x:cold": why, "ce:y:cold": why}
    assert set(cells["t"]) == {"serial"}  # no ERR cell, no cold figure


def test_the_summary_names_left_out_runners_in_one_line() -> None:
    document = {
        "mode": "tiny",
        "repeats": 1,
        "machine": {
            "cpu_budget": 2,
            "cpu_budget_source": "affinity",
            "python": "3.11.0",
            "platform": "test",
            "blas": {"requested_threads": 1},
        },
        "runners": ["serial", "ce:threads"],
        "unavailable": {"ce:dask": "needs dask", "ce:dask:cold": "needs dask"},
        "workloads": {"t": {"size": "2"}},
        "results": {
            "t": {
                "serial_median_s": 0.1,
                "auto": {"chose": None, "regret": None},
                "runners": {"ce:threads": {"speedup_vs_serial": 1.5, "correct": True}},
            }
        },
        "targets": {},
    }
    summary = ablation.markdown_summary(document)
    assert "ce:dask" not in summary.split("Left out")[0]  # no column for it
    assert "Left out: ce:dask, ce:dask:cold (needs dask)." in summary
    assert "ERR" not in summary.replace("ERR = raised", "")


def test_an_output_folder_that_cannot_be_made_fails_before_the_run(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    def run_must_not_start(args: Any) -> Any:
        raise AssertionError("the benchmark ran before its output folder was checked")

    monkeypatch.setattr(ablation, "run", run_must_not_start)
    with pytest.raises(SystemExit, match="cannot be created"):
        ablation.main(["--tiny", "--out", str(blocker / "sub" / "results.json")])


def test_the_chart_goes_next_to_the_json_unless_told_otherwise() -> None:
    parse = ablation.build_parser().parse_args
    assert ablation.chart_path(parse(["--out", "r/results.json"])) == "r/results.png"
    assert ablation.chart_path(parse(["--out", "r.json", "--plot", "c.png"])) == "c.png"
    assert ablation.chart_path(parse(["--out", "r.json", "--no-plot"])) is None
    assert ablation.chart_path(parse([])) is None
