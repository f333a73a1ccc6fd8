"""The CPU budget: every source, the tie-break, malformed input, and the resources snapshot.

cgroup trees live under ``tests/fixtures/sysfs/<case>`` and are read through ``sysfs_root``;
the operating system's affinity and machine counts are injected, never monkeypatched.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ce_parallel.resources import (
    IGNORED,
    NUMERIC_THREAD_VARIABLES,
    POOL_START_SECONDS,
    CpuBudget,
    Resources,
    cpu_budget,
    detect_ci,
    detect_resources,
    numeric_thread_env,
    threads_per_worker,
)

SYSFS = Path(__file__).resolve().parent.parent / "fixtures" / "sysfs"
BIG = 64  # a machine large enough that the source under test is the one that limits


def budget(
    case: str | None = None,
    env: dict[str, str] | None = None,
    *,
    max_workers: int | None = None,
    affinity: int = BIG,
    machine: int = BIG,
) -> CpuBudget:
    root = str(SYSFS / case) if case else str(SYSFS / "absent")
    return cpu_budget(
        env or {},
        root,
        max_workers=max_workers,
        affinity_count=affinity,
        machine_count=machine,
    )


def assert_consistent(result: CpuBudget) -> None:
    assert result.count >= 1
    assert result.sources[result.limited_by] == result.count


# --- cgroup v2 -----------------------------------------------------------------------------


def test_cgroup_v2_reads_the_own_nested_path_and_rounds_the_quota_up() -> None:
    # pod1 allows 1.5 CPUs (-> 2); its parent allows 4; the root and the leaf say max.
    result = budget("v2_nested")
    assert (result.count, result.limited_by) == (2, "cgroup")
    assert "kubepods/pod1/cpu.max" in result.details["cgroup"]
    assert_consistent(result)


def test_cgroup_v2_quota_on_an_ancestor_caps_the_own_cgroup() -> None:
    result = budget("v2_ancestor")  # batch: 0.5 CPU -> 1; batch/job7: max
    assert (result.count, result.limited_by) == (1, "cgroup")


def test_cgroup_v2_max_is_read_as_no_limit() -> None:
    result = budget("v2_max")
    assert result.sources["cgroup"] is None
    assert "session-1.scope/cpu.max" in result.details["cgroup"]
    assert result.count == BIG


@pytest.mark.parametrize("case", ["v2_empty", "v2_garbage", "v1_garbage"])
def test_malformed_cgroup_file_is_reported_and_ignored(case: str) -> None:
    result = budget(case, affinity=3)
    assert result.sources["cgroup"].startswith(IGNORED)
    assert (result.count, result.limited_by) == (3, "affinity")


def test_garbage_proc_self_cgroup_is_reported_and_ignored() -> None:
    result = budget("proc_garbage")
    assert result.sources["cgroup"].startswith(IGNORED)
    assert "proc/self/cgroup" in result.sources["cgroup"]
    assert result.count == BIG


# --- cgroup v1 -----------------------------------------------------------------------------


def test_cgroup_v1_reads_the_cpu_controller_path_under_a_hybrid_mount() -> None:
    # the mount root says -1 (unlimited); the process's own cgroup allows 2.5 CPUs -> 3
    result = budget("v1")
    assert (result.count, result.limited_by) == (3, "cgroup")
    assert "docker/abc/cpu.cfs_quota_us" in result.details["cgroup"]


def test_cgroup_v1_inside_a_container_falls_back_to_the_mount_root() -> None:
    # /proc/self/cgroup names a host path that does not exist inside the container's mount
    result = budget("v1_container")
    assert (result.count, result.limited_by) == (1, "cgroup")


def test_cgroup_v1_minus_one_is_no_limit() -> None:
    result = budget("v1_unlimited", machine=6, affinity=6)
    assert result.sources["cgroup"] is None
    assert result.count == 6


def test_no_cgroup_files_means_no_cgroup_source() -> None:
    assert "cgroup" not in budget(None).sources


# --- schedulers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "key", "count"),
    [
        ({"SLURM_CPUS_PER_TASK": "4"}, "SLURM_CPUS_PER_TASK", 4),
        ({"SLURM_CPUS_ON_NODE": "6"}, "SLURM_CPUS_ON_NODE", 6),
        ({"SLURM_JOB_CPUS_PER_NODE": "24(x2),4"}, "SLURM_JOB_CPUS_PER_NODE", 24),
        ({"SLURM_JOB_CPUS_PER_NODE": "12"}, "SLURM_JOB_CPUS_PER_NODE", 12),
        ({"SLURM_CPUS_PER_TASK": "3", "SLURM_CPUS_ON_NODE": "8"}, "SLURM_CPUS_PER_TASK", 3),
        ({"NCPUS": "5"}, "NCPUS", 5),
        ({"PBS_NUM_PPN": "7"}, "PBS_NUM_PPN", 7),
        ({"LSB_DJOB_NUMPROC": "9"}, "LSB_DJOB_NUMPROC", 9),
        ({"NSLOTS": "10"}, "NSLOTS", 10),
        ({"NSLOTS": " 10\n"}, "NSLOTS", 10),
    ],
)
def test_scheduler_allocation_limits_the_budget(env: dict[str, str], key: str, count: int) -> None:
    result = budget(env=env)
    assert (result.count, result.limited_by) == (count, key)
    assert_consistent(result)


@pytest.mark.parametrize("junk", ["", "abc", "0", "-2", "2.5", "(x2)", "four", "4 cpus"])
def test_junk_scheduler_values_are_reported_and_the_next_variable_is_used(junk: str) -> None:
    env = {"SLURM_CPUS_PER_TASK": junk, "SLURM_CPUS_ON_NODE": "5", "NSLOTS": junk}
    result = budget(env=env)
    assert result.sources["SLURM_CPUS_PER_TASK"].startswith(IGNORED)
    assert repr(junk) in result.sources["SLURM_CPUS_PER_TASK"]
    assert result.sources["NSLOTS"].startswith(IGNORED)
    assert (result.count, result.limited_by) == (5, "SLURM_CPUS_ON_NODE")


def test_junk_per_node_list_is_ignored() -> None:
    result = budget(env={"SLURM_JOB_CPUS_PER_NODE": "x(24),4"}, affinity=8)
    assert result.sources["SLURM_JOB_CPUS_PER_NODE"].startswith(IGNORED)
    assert (result.count, result.limited_by) == (8, "affinity")


def test_the_smallest_scheduler_family_wins() -> None:
    result = budget(env={"SLURM_CPUS_PER_TASK": "8", "NSLOTS": "3"})
    assert (result.count, result.limited_by) == (3, "NSLOTS")
    assert result.sources["SLURM_CPUS_PER_TASK"] == 8


# --- affinity, machine, max_workers, tie-break ---------------------------------------------


def test_affinity_smaller_than_the_machine_limits_the_budget() -> None:
    result = budget(affinity=2, machine=16)
    assert (result.count, result.limited_by) == (2, "affinity")
    assert result.sources["machine"] == 16


def test_max_workers_limits_the_budget() -> None:
    result = budget("v2_nested", {"NSLOTS": "8"}, max_workers=1)
    assert (result.count, result.limited_by) == (1, "max_workers")


def test_max_workers_above_the_budget_does_not_raise_it() -> None:
    result = budget(max_workers=100, affinity=4)
    assert (result.count, result.limited_by) == (4, "affinity")


@pytest.mark.parametrize(
    ("max_workers", "env", "case", "expected"),
    [
        (2, {"NSLOTS": "2"}, "v2_nested", "max_workers"),
        (None, {"NSLOTS": "2"}, "v2_nested", "NSLOTS"),
        (None, {}, "v2_nested", "cgroup"),
    ],
)
def test_on_a_tie_the_most_specific_source_is_named(
    max_workers: int | None, env: dict[str, str], case: str, expected: str
) -> None:
    result = budget(case, env, max_workers=max_workers, affinity=2, machine=2)
    assert (result.count, result.limited_by) == (2, expected)


def test_affinity_is_named_over_the_machine_on_a_tie() -> None:
    result = budget(affinity=4, machine=4)
    assert result.limited_by == "affinity"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_invalid_max_workers_raises_naming_the_setting(bad: object) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        cpu_budget({}, max_workers=bad)  # type: ignore[arg-type]


def test_budget_of_this_process_is_consistent() -> None:
    result = cpu_budget()
    assert_consistent(result)
    assert "machine" in result.sources
    assert str(result.count) in result.describe()


# --- resources snapshot ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "provider"),
    [
        ({}, None),
        ({"CI": "true"}, "generic"),
        ({"CI": "false"}, None),
        ({"CI": "0"}, None),
        ({"GITHUB_ACTIONS": "true", "CI": "true"}, "github-actions"),
        ({"GITLAB_CI": "true"}, "gitlab"),
        ({"BUILDKITE": "true"}, "buildkite"),
        ({"TF_BUILD": "True"}, "azure-pipelines"),
    ],
)
def test_ci_detection_names_the_provider(env: dict[str, str], provider: str | None) -> None:
    assert detect_ci(env) == provider


def test_detect_resources_snapshot() -> None:
    resources = detect_resources({"GITHUB_ACTIONS": "true", "NSLOTS": "1"})
    assert isinstance(resources, Resources)
    assert (resources.budget.count, resources.budget.limited_by) == (1, "NSLOTS")
    assert resources.ci and resources.ci_provider == "github-actions"
    assert resources.start_method in ("fork", "spawn", "forkserver")
    assert resources.spawn_cost_s == POOL_START_SECONDS[resources.start_method]
    assert resources.physical_cores is None or resources.physical_cores >= 1


def test_detect_resources_does_not_fix_the_start_method() -> None:
    import multiprocessing

    before = multiprocessing.get_start_method(allow_none=True)
    detect_resources({})
    assert multiprocessing.get_start_method(allow_none=True) == before


# --- numeric-thread caps --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget_count", "workers", "threads"),
    [(8, 2, 4), (8, 3, 2), (2, 2, 1), (2, 4, 1), (1, 1, 1), (4, 0, 4)],
)
def test_threads_per_worker_keeps_workers_times_threads_within_the_budget(
    budget_count: int, workers: int, threads: int
) -> None:
    assert threads_per_worker(budget_count, workers) == threads


def test_numeric_thread_env_sets_every_variable() -> None:
    env = numeric_thread_env(3)
    assert set(env) == set(NUMERIC_THREAD_VARIABLES)
    assert set(env.values()) == {"3"}
    assert set(numeric_thread_env(0).values()) == {"1"}


def test_resources_module_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ce_parallel.resources as r; r.cpu_budget(); "
        "print(','.join(m for m in ('psutil', 'loky', 'joblib', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --- LOKY_MAX_CPU_COUNT: the cap joblib and scikit-learn users already set ---------------


def test_loky_max_cpu_count_limits_the_budget_and_is_named() -> None:
    result = budget(env={"LOKY_MAX_CPU_COUNT": "1"})
    assert (result.count, result.limited_by) == (1, "LOKY_MAX_CPU_COUNT")
    assert result.sources["LOKY_MAX_CPU_COUNT"] == 1
    assert "LOKY_MAX_CPU_COUNT='1'" in result.describe()


def test_loky_max_cpu_count_above_the_other_sources_does_not_raise_the_budget() -> None:
    result = budget(env={"LOKY_MAX_CPU_COUNT": "32"}, affinity=4)
    assert (result.count, result.limited_by) == (4, "affinity")
    assert result.sources["LOKY_MAX_CPU_COUNT"] == 32


def test_loky_max_cpu_count_beats_the_scheduler_when_smaller() -> None:
    result = budget(env={"LOKY_MAX_CPU_COUNT": "2", "SLURM_CPUS_PER_TASK": "8"})
    assert (result.count, result.limited_by) == (2, "LOKY_MAX_CPU_COUNT")


def test_loky_max_cpu_count_is_named_over_the_scheduler_on_a_tie() -> None:
    result = budget(env={"LOKY_MAX_CPU_COUNT": "4", "NSLOTS": "4"})
    assert result.limited_by == "LOKY_MAX_CPU_COUNT"
    assert budget(env={"LOKY_MAX_CPU_COUNT": "4"}, max_workers=4).limited_by == "max_workers"


@pytest.mark.parametrize("junk", ["", "0", "-2", "1.5", "two"])
def test_junk_loky_max_cpu_count_is_reported_and_ignored(junk: str) -> None:
    result = budget(env={"LOKY_MAX_CPU_COUNT": junk}, affinity=4)
    assert (result.count, result.limited_by) == (4, "affinity")
    assert result.sources["LOKY_MAX_CPU_COUNT"].startswith(IGNORED)


def test_loky_max_cpu_count_is_read_from_the_given_environment_only() -> None:
    # the injected environment is the whole environment: the process's own is not consulted
    assert "LOKY_MAX_CPU_COUNT" not in budget(env={}).sources


def test_detect_resources_carries_the_loky_limit() -> None:
    resources = detect_resources({"LOKY_MAX_CPU_COUNT": "1"}, str(SYSFS / "absent"))
    assert (resources.budget.count, resources.budget.limited_by) == (1, "LOKY_MAX_CPU_COUNT")


def test_every_public_name_is_still_importable_from_resources() -> None:
    import ce_parallel.resources as resources

    for name in resources.__all__:
        assert hasattr(resources, name), name
    assert resources.SCHEDULER_VARIABLES[0][0] == "SLURM_CPUS_PER_TASK"
