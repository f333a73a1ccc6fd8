"""Where the CPU budget's numbers come from: scheduler variables, loky's cap, cgroups, affinity.

Each ``read_*`` function reads one kind of source (from an injected environment or a stand-in
``/``) into a ``Reading``; ``ce_parallel.resources.cpu_budget`` takes the minimum. Nothing here
raises for malformed input: it is recorded as ``IGNORED + why`` and skipped. Imports nothing
else from ce-parallel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

#: Prefix of every ``sources`` value that records a malformed, ignored input.
IGNORED = "ignored: "

#: Tie-break rank of each kind of source: the most specific source (lowest rank) is named.
#: ``LOKY_MAX_CPU_COUNT`` is a cap the user set, like ``max_workers``, so it ranks next to it.
RANK_MAX_WORKERS, RANK_LOKY, RANK_SCHEDULER, RANK_CGROUP, RANK_AFFINITY, RANK_MACHINE = range(6)

#: loky's (and so joblib's and scikit-learn's) own CPU cap: ``LOKY_MAX_CPU_COUNT=N``.
LOKY_VARIABLE = "LOKY_MAX_CPU_COUNT"

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


class Reading:
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


def read_scheduler(env: Mapping[str, str], reading: Reading) -> None:
    """SLURM, PBS, LSF and SGE allocations: the first usable variable of each family counts."""
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
            reading.limit(name, count, RANK_SCHEDULER, f"{name}={raw!r}")
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


def read_cgroup(sysfs_root: str, reading: Reading) -> None:
    """The smallest cgroup v2 / v1 CPU quota along this process's own cgroup path."""
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
        reading.limit("cgroup", best[0], RANK_CGROUP, best[1] + " (quota rounded up)")
    elif seen:
        reading.unlimited("cgroup", "; ".join(seen))
    if problems:
        key = "cgroup" if best is None and not seen else "cgroup (ignored)"
        reading.ignore(key, "; ".join(problems))


def read_affinity() -> tuple[int | None, str]:
    """The CPUs this process may run on, and how that was read (None where unknown)."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13+: affinity and -X cpu_count
        count = os.process_cpu_count()
        return count, "os.process_cpu_count()"
    if hasattr(os, "sched_getaffinity"):
        try:
            return len(os.sched_getaffinity(0)), "os.sched_getaffinity(0)"
        except OSError:
            return None, ""
    return None, ""


def read_loky_limit(env: Mapping[str, str], reading: Reading) -> None:
    """``LOKY_MAX_CPU_COUNT``: the cap joblib, loky and scikit-learn users already set."""
    raw = env.get(LOKY_VARIABLE)
    if raw is None:
        return
    count = _positive_int(raw)
    if count is None:
        reading.ignore(LOKY_VARIABLE, f"{LOKY_VARIABLE}={raw!r} is not a positive whole number")
        return
    reading.limit(LOKY_VARIABLE, count, RANK_LOKY, f"{LOKY_VARIABLE}={raw!r}")


__all__ = [
    "IGNORED",
    "LOKY_VARIABLE",
    "SCHEDULER_VARIABLES",
    "Reading",
    "read_affinity",
    "read_cgroup",
    "read_loky_limit",
    "read_scheduler",
]
