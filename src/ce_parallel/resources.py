"""The CPU budget and the machine facts that decisions depend on.

``cpu_budget`` answers one question, "how many CPUs may this process use?", as the minimum over
every source that can limit it, and says which source won and what every source said:

========================  ==========================================================
source (key in sources)   where it comes from
========================  ==========================================================
``max_workers``           the config's worker cap (``CE_PARALLEL workers=N``)
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
``max_workers`` > scheduler > cgroup > affinity > machine.

This module imports nothing else from ce-parallel and is the only one that calls
``os.cpu_count()``. psutil, loky and multiprocessing are imported inside the functions that need
them so that importing ce-parallel stays light.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Prefix of every ``sources`` value that records a malformed, ignored input.
IGNORED = "ignored: "

#: Tie-break rank of each kind of source: the most specific source (lowest rank) is named.
_RANK_MAX_WORKERS, _RANK_SCHEDULER, _RANK_CGROUP, _RANK_AFFINITY, _RANK_MACHINE = range(5)

#: Scheduler families, each an ordered chain of variables: the first usable one counts.
#: ``SLURM_JOB_CPUS_PER_NODE`` is a per-node list such as ``24(x2),4``; its first field is used.
SCHEDULER_VARIABLES: tuple[tuple[str, ...], ...] = (
    ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "SLURM_JOB_CPUS_PER_NODE"),
    ("NCPUS", "PBS_NUM_PPN"),
    ("LSB_DJOB_NUMPROC",),
    ("NSLOTS",),
)
_PER_NODE_LIST_VARIABLES = frozenset({"SLURM_JOB_CPUS_PER_NODE"})

#: Directory names under which cgroup v1 mounts the ``cpu`` controller, in the order tried.
_CGROUP_V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")

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
#: loky 194 ms (ANCHORS.md: fork 20 ms, loky 260 ms). Imports of the pool modules are excluded.
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


class _Reading:
    """Collects what each source said while the budget is computed."""

    def __init__(self) -> None:
        self.sources: dict[str, Any] = {}
        self.details: dict[str, str] = {}
        self.candidates: list[tuple[int, int, str]] = []  # (count, rank, key)

    def limit(self, key: str, count: int, rank: int, detail: str) -> None:
        self.sources[key] = count
        self.details[key] = detail
        self.candidates.append((count, rank, key))

    def unlimited(self, key: str, detail: str) -> None:
        self.sources[key] = None
        self.details[key] = detail

    def ignore(self, key: str, why: str) -> None:
        self.sources[key] = IGNORED + why


def _positive_int(raw: str) -> int | None:
    text = raw.strip()
    if not text.isdigit():
        return None
    value = int(text)
    return value if value >= 1 else None


def _read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist or cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _read_scheduler(env: Mapping[str, str], reading: _Reading) -> None:
    for chain in SCHEDULER_VARIABLES:
        for name in chain:
            raw = env.get(name)
            if raw is None:
                continue
            text = raw.split(",")[0].split("(")[0] if name in _PER_NODE_LIST_VARIABLES else raw
            count = _positive_int(text)
            if count is None:
                reading.ignore(name, f"{name}={raw!r} is not a positive whole number")
                continue
            reading.limit(name, count, _RANK_SCHEDULER, f"{name}={raw!r}")
            break  # the first usable variable of a family counts; later ones are fallbacks


def _own_cgroup_paths(sysfs_root: str) -> tuple[str | None, str | None, str | None]:
    """(v2 path, v1 cpu path, problem) of this process, from ``proc/self/cgroup``."""
    text = _read_text(os.path.join(sysfs_root, "proc", "self", "cgroup"))
    if text is None:
        return None, None, None
    v2_path = v1_path = None
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            if line.strip():
                return (
                    None,
                    None,
                    f"proc/self/cgroup line {line.strip()!r} is not id:controllers:path",
                )
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    return v2_path, v1_path, None


def _ancestors(root: str, path: str) -> list[str]:
    """``root/path`` and every parent directory up to ``root``, deepest first."""
    parts = [p for p in path.split("/") if p and p != ".."]
    return [os.path.join(root, *parts[:depth]) for depth in range(len(parts), -1, -1)]


def _quota_cpus(quota_us: float, period_us: float) -> int:
    # A quota is a fraction of CPU time; a fraction of a CPU still needs one whole CPU to run on.
    return max(1, math.ceil(quota_us / period_us))


def _cgroup_v2_limit(directory: str) -> tuple[int | None, str, str | None]:
    """(cpus or None for no limit, what was read, problem) of one ``cpu.max`` file."""
    path = os.path.join(directory, "cpu.max")
    raw = _read_text(path)
    if raw is None:
        return None, "", None
    fields = raw.split()
    shown = f"{path} = {raw.strip()!r}"
    if fields[:1] == ["max"] and len(fields) <= 2:
        return None, shown, None
    if len(fields) != 2 or not all(f.isdigit() for f in fields) or int(fields[1]) == 0:
        return None, shown, f"{path} holds {raw.strip()!r}, expected 'max PERIOD' or 'QUOTA PERIOD'"
    return _quota_cpus(int(fields[0]), int(fields[1])), shown, None


def _cgroup_v1_limit(directory: str) -> tuple[int | None, str, str | None]:
    """(cpus or None for no limit, what was read, problem) of a v1 quota/period pair."""
    quota_path = os.path.join(directory, "cpu.cfs_quota_us")
    period_path = os.path.join(directory, "cpu.cfs_period_us")
    quota_raw, period_raw = _read_text(quota_path), _read_text(period_path)
    if quota_raw is None:
        return None, "", None
    quota_text, period_text = quota_raw.strip(), (period_raw or "").strip()
    shown = f"{quota_path} = {quota_text!r}, cpu.cfs_period_us = {period_text!r}"
    if quota_text == "-1":
        return None, shown, None
    period = _positive_int(period_text)
    if not quota_text.isdigit() or int(quota_text) == 0 or period is None:
        return (
            None,
            shown,
            (
                f"{quota_path} = {quota_text!r} with period {period_text!r}; "
                "expected -1 or a positive quota and a positive period"
            ),
        )
    return _quota_cpus(int(quota_text), period), shown, None


def _read_cgroup(sysfs_root: str, reading: _Reading) -> None:
    v2_path, v1_path, problem = _own_cgroup_paths(sysfs_root)
    if problem is not None:
        reading.ignore("cgroup", problem)
        return
    cgroup_root = os.path.join(sysfs_root, "sys", "fs", "cgroup")
    levels: list[tuple[Callable[[str], tuple[int | None, str, str | None]], str]] = []
    # Without /proc/self/cgroup (not Linux, or hidden) only the mount roots are read.
    if v2_path is not None or v1_path is None:
        levels += [(_cgroup_v2_limit, d) for d in _ancestors(cgroup_root, v2_path or "/")]
    if v1_path is not None or v2_path is None:
        for mount in _CGROUP_V1_CPU_MOUNTS:
            mount_root = os.path.join(cgroup_root, mount)
            if os.path.isdir(mount_root):
                levels += [(_cgroup_v1_limit, d) for d in _ancestors(mount_root, v1_path or "/")]
                break
    # A quota on any ancestor caps every cgroup below it, so the effective limit is the
    # smallest over the whole path. Inside a container the own path may not exist under the
    # mount (the container's cgroup is the mount root); missing levels are skipped.
    best: tuple[int, str] | None = None
    seen: list[str] = []
    problems: list[str] = []
    for read, directory in levels:
        cpus, shown, bad = read(directory)
        if bad is not None:
            problems.append(bad)
        elif shown:
            seen.append(shown)
            if cpus is not None and (best is None or cpus < best[0]):
                best = (cpus, shown)
    if best is not None:
        reading.limit("cgroup", best[0], _RANK_CGROUP, best[1] + " (quota rounded up)")
    elif seen:
        reading.unlimited("cgroup", "; ".join(seen))
    if problems:
        key = "cgroup" if best is None and not seen else "cgroup (ignored)"
        reading.ignore(key, "; ".join(problems))


def _affinity_count() -> tuple[int | None, str]:
    if hasattr(os, "process_cpu_count"):  # Python 3.13+: affinity and -X cpu_count
        count = os.process_cpu_count()
        return count, "os.process_cpu_count()"
    if hasattr(os, "sched_getaffinity"):
        try:
            return len(os.sched_getaffinity(0)), "os.sched_getaffinity(0)"
        except OSError:
            return None, ""
    return None, ""


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
    reading = _Reading()

    machine = machine_count if machine_count is not None else os.cpu_count()
    origin = "given by the caller" if machine_count is not None else "os.cpu_count()"
    if machine is not None and machine >= 1:
        reading.limit("machine", machine, _RANK_MACHINE, origin)
    else:
        reading.ignore("machine", "os.cpu_count() did not report a count")

    affinity: int | None
    if affinity_count is not None:
        affinity, origin = affinity_count, "given by the caller"
    else:
        affinity, origin = _affinity_count()
    if affinity is not None and affinity >= 1:
        reading.limit("affinity", affinity, _RANK_AFFINITY, origin)

    _read_cgroup(sysfs_root, reading)
    _read_scheduler(env, reading)
    if max_workers is not None:
        reading.limit("max_workers", max_workers, _RANK_MAX_WORKERS, "the config's worker cap")

    if not reading.candidates:
        reading.limit("fallback", 1, _RANK_MACHINE + 1, "no source reported a CPU count")
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
