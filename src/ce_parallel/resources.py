"""The CPU budget and the machine facts that decisions depend on.

``cpu_budget`` answers one question, "how many CPUs may this process use?", as the minimum over
every source that can limit it, and says which source won and what every source said:

========================  ==========================================================
source (key in sources)   where it comes from
========================  ==========================================================
``max_workers``           the config's worker cap (``CE_PARALLEL workers=N``)
``LOKY_MAX_CPU_COUNT``    loky's own cap, which joblib and scikit-learn users set
``SLURM_CPUS_PER_TASK``   SLURM, else ``SLURM_CPUS_ON_NODE``, else the first node's
                          count in ``SLURM_JOB_CPUS_PER_NODE`` (``24(x2),4`` -> 24)
``NCPUS``                 PBS Pro, else ``PBS_NUM_PPN`` (Torque)
``LSB_DJOB_NUMPROC``      LSF
``NSLOTS``                SGE / Univa Grid Engine
``cgroup``                cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us`` /
                          ``cpu.cfs_period_us`` along the process's own cgroup path
                          (from ``/proc/self/cgroup``) and every ancestor, rounded up
``affinity``              ``os.process_cpu_count()`` (3.13+) or ``os.sched_getaffinity``
``machine``               ``os.cpu_count()``
========================  ==========================================================

A value in ``sources`` is an ``int`` when the source limits the count, ``None`` when it was read
and sets no limit (a cgroup with ``max``), or a string starting with ``"ignored: "`` when it was
present but malformed; malformed input never raises. On a tie the most specific source is named:
``max_workers`` > ``LOKY_MAX_CPU_COUNT`` > scheduler > cgroup > affinity > machine.

The sources are read by ``ce_parallel.cpu_sources``; this module combines them. Apart from that
module it imports nothing else from ce-parallel, and it is the only one that calls
``os.cpu_count()``. psutil, loky and multiprocessing are imported inside the functions that need
them so that importing ce-parallel stays light.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .cpu_sources import (
    IGNORED,
    RANK_AFFINITY,
    RANK_MACHINE,
    RANK_MAX_WORKERS,
    SCHEDULER_VARIABLES,
    Reading,
    read_affinity,
    read_cgroup,
    read_loky_limit,
    read_scheduler,
)

#: CI providers by the variable each one sets; the first match names the provider. ``CI`` alone
#: (set by most providers and by hand) gives the provider ``"generic"``.
CI_VARIABLES: tuple[tuple[str, str], ...] = (
    ("GITHUB_ACTIONS", "github-actions"),
    ("GITLAB_CI", "gitlab"),
    ("BUILDKITE", "buildkite"),
    ("CIRCLECI", "circleci"),
    ("TRAVIS", "travis"),
    ("TF_BUILD", "azure-pipelines"),
    ("APPVEYOR", "appveyor"),
    ("JENKINS_URL", "jenkins"),
    ("TEAMCITY_VERSION", "teamcity"),
    ("BITBUCKET_BUILD_NUMBER", "bitbucket"),
    ("CODEBUILD_BUILD_ID", "aws-codebuild"),
    ("DRONE", "drone"),
    ("CI", "generic"),
)
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})

#: Cold start of a 2-worker pool plus its first tiny map, in seconds, by start method ("loky" is
#: the spawn-like executor ``ProcessExecutor`` uses; "threads" is a thread pool). Median of 7
#: fresh interpreters on the 2-core reference machine (Python 3.11, Linux), measured with
#: ``measure_pool_start``: threads 1.2 ms, fork 9.9 ms, forkserver 91 ms, spawn 92 ms,
#: loky 194 ms (evaluation/results/full.md: ce:processes:cold, create + tiny map + shutdown,
#: 227 ms). Imports of the pool modules are excluded.
POOL_START_SECONDS: dict[str, float] = {
    "threads": 0.001,
    "fork": 0.010,
    "forkserver": 0.09,
    "spawn": 0.09,
    "loky": 0.20,
}
#: The start method whose cost is assumed when the platform's default is not in the table.
_UNKNOWN_START_METHOD_COST = POOL_START_SECONDS["spawn"]


@dataclass(frozen=True)
class CpuBudget:
    """How many CPUs this process may use, which source limited it, and every source read.

    ``count`` is a number of logical CPUs, at least 1. ``limited_by`` is a key of ``sources``
    whose value equals ``count``. ``details`` says, per source, what exactly was read (a file
    path and its content, a variable and its value) so the budget explains itself.
    """

    count: int
    limited_by: str
    sources: dict[str, Any] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for logs and ``ce-parallel doctor``: the count and where it came from."""
        origin = self.details.get(self.limited_by, self.limited_by)
        return f"{self.count} CPU(s), limited by {self.limited_by} ({origin})"


def cpu_budget(
    environ: Mapping[str, str] | None = None,
    sysfs_root: str = "/",
    *,
    max_workers: int | None = None,
    affinity_count: int | None = None,
    machine_count: int | None = None,
) -> CpuBudget:
    """Return the CPU budget: the minimum over every source that can limit this process.

    ``environ`` defaults to ``os.environ`` read now; ``sysfs_root`` stands in for ``/`` when
    reading ``proc/self/cgroup`` and ``sys/fs/cgroup``. ``affinity_count`` and ``machine_count``
    replace what the operating system reports (for tests, and for callers who know better).
    Malformed variables and files are recorded in ``sources`` and ignored; this never raises for
    them. ``max_workers`` must be None or an integer >= 1 (``ValueError`` otherwise).
    """
    if max_workers is not None and (
        isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
    ):
        raise ValueError(f"max_workers={max_workers!r} is not accepted; expected an integer >= 1")
    env = os.environ if environ is None else environ
    reading = Reading()

    machine = machine_count if machine_count is not None else os.cpu_count()
    origin = "given by the caller" if machine_count is not None else "os.cpu_count()"
    if machine is not None and machine >= 1:
        reading.limit("machine", machine, RANK_MACHINE, origin)
    else:
        reading.ignore("machine", "os.cpu_count() did not report a count")

    affinity: int | None
    if affinity_count is not None:
        affinity, origin = affinity_count, "given by the caller"
    else:
        affinity, origin = read_affinity()
    if affinity is not None and affinity >= 1:
        reading.limit("affinity", affinity, RANK_AFFINITY, origin)

    read_cgroup(sysfs_root, reading)
    read_scheduler(env, reading)
    read_loky_limit(env, reading)
    if max_workers is not None:
        reading.limit(
            "max_workers",
            max_workers,
            RANK_MAX_WORKERS,
            "an explicit worker count (honoured above the budget)",
        )

    if not reading.candidates:
        reading.limit("fallback", 1, RANK_MACHINE + 1, "no source reported a CPU count")
    count, _, limited_by = min(reading.candidates)
    return CpuBudget(count, limited_by, reading.sources, reading.details)


@dataclass(frozen=True)
class Resources:
    """A snapshot of what the machine offers this process, for decisions and selection.

    ``start_method`` is the multiprocessing start method a plain pool would use here and
    ``spawn_cost_s`` its measured cold-start cost; ``process_start_s`` is the cold-start cost of
    the loky pool behind ``ProcessExecutor``. ``physical_cores`` is the machine's count (psutil),
    reported for diagnosis; workers are sized from ``budget.count`` (logical CPUs), see
    ``heuristics.PHYSICAL_CORES_FOR_PROCESSES``.
    """

    budget: CpuBudget
    ci: bool = False
    ci_provider: str | None = None
    platform: str = "linux"
    start_method: str = "fork"
    spawn_cost_s: float = POOL_START_SECONDS["fork"]
    physical_cores: int | None = None
    thread_start_s: float = POOL_START_SECONDS["threads"]
    process_start_s: float = POOL_START_SECONDS["loky"]


def detect_ci(environ: Mapping[str, str] | None = None) -> str | None:
    """The CI provider this process runs under (``"generic"`` for a bare ``CI``), else None."""
    env = os.environ if environ is None else environ
    for name, provider in CI_VARIABLES:
        value = env.get(name)
        if value is not None and value.strip().lower() not in _FALSE_WORDS:
            return provider
    return None


def default_start_method() -> str:
    """The start method multiprocessing uses here, without fixing it for the program.

    ``multiprocessing.get_start_method()`` would set the default context as a side effect and
    make a later ``set_start_method`` in the caller's program fail, so it is not called.
    """
    import multiprocessing

    chosen = multiprocessing.get_start_method(allow_none=True)
    return chosen or multiprocessing.get_all_start_methods()[0]


def _physical_cores() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    try:
        count = psutil.cpu_count(logical=False)
    except Exception:  # psutil may fail in restricted containers; the count is only a fact
        return None
    return count if count else None


def detect_resources(
    environ: Mapping[str, str] | None = None,
    sysfs_root: str = "/",
    *,
    max_workers: int | None = None,
) -> Resources:
    """Read the CPU budget, CI detection and platform facts once, into one snapshot."""
    env = os.environ if environ is None else environ
    provider = detect_ci(env)
    method = default_start_method()
    return Resources(
        budget=cpu_budget(env, sysfs_root, max_workers=max_workers),
        ci=provider is not None,
        ci_provider=provider,
        platform=sys.platform,
        start_method=method,
        spawn_cost_s=POOL_START_SECONDS.get(method, _UNKNOWN_START_METHOD_COST),
        physical_cores=_physical_cores(),
    )


def _square(x: int) -> int:
    return x * x


def measure_pool_start(method: str, workers: int = 2) -> float:
    """Seconds to create a pool of ``workers`` and finish a first tiny map on it.

    ``method`` is a multiprocessing start method, ``"loky"`` or ``"threads"``. The pool is shut
    down afterwards. Only meaningful in a fresh interpreter (a warm loky executor is reused);
    this is how ``POOL_START_SECONDS`` was measured.
    """
    if method == "loky":
        from loky import get_reusable_executor

        start = time.perf_counter()
        executor: Any = get_reusable_executor(max_workers=workers)
    elif method == "threads":
        from concurrent.futures import ThreadPoolExecutor

        start = time.perf_counter()
        executor = ThreadPoolExecutor(workers)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context(method)
        start = time.perf_counter()
        executor = ProcessPoolExecutor(workers, mp_context=context)
    try:
        list(executor.map(_square, range(2 * workers)))
        return time.perf_counter() - start
    finally:
        executor.shutdown(wait=True)


#: Environment variables that size the thread pools of numeric libraries (OpenMP, OpenBLAS,
#: MKL, BLIS, Accelerate, numexpr). Set in a process worker before those libraries load.
NUMERIC_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def threads_per_worker(budget_count: int, workers: int) -> int:
    """Numeric-library threads per process worker, so workers x threads fits the budget.

    At least 1: a worker always computes, even when there are more workers than CPUs.
    """
    return max(1, budget_count // max(1, workers))


def numeric_thread_env(threads: int) -> dict[str, str]:
    """The environment that caps numeric libraries at ``threads`` threads (at least 1)."""
    return {name: str(max(1, threads)) for name in NUMERIC_THREAD_VARIABLES}


__all__ = [
    "IGNORED",
    "NUMERIC_THREAD_VARIABLES",
    "POOL_START_SECONDS",
    "SCHEDULER_VARIABLES",
    "CpuBudget",
    "Resources",
    "cpu_budget",
    "default_start_method",
    "detect_ci",
    "detect_resources",
    "measure_pool_start",
    "numeric_thread_env",
    "threads_per_worker",
]
