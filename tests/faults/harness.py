"""Run a fault scenario in a fresh Python process and read back what it reports.

A scenario is a snippet of Python that runs after ``PRELUDE``; it reports with
``ready(**info)`` (a line the driver can wait for before it sends a signal) and
``done(**result)`` (the final JSON result). Anything that can kill or hang the interpreter
(``os._exit`` in a worker, signals, a killed parent) therefore happens far from pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

#: Seconds a scenario may run before the driver kills its whole process group.
SCENARIO_TIMEOUT_S = 40.0
#: Seconds that worker processes get to disappear once their parent is gone.
EXIT_GRACE_S = 10.0

PRELUDE = '''
import gc, json, os, signal, sys, threading, time

# a shell runs a background job with SIGINT ignored, and Python then never installs its Ctrl-C
# handler: a scenario stands for a program run from a terminal, where Ctrl-C raises
signal.signal(signal.SIGINT, signal.default_int_handler)

import psutil
from ce_parallel import ParallelConfig, create_executor

PARENT = os.getpid()
RECORDS = []


def record(event, payload):
    RECORDS.append([event, payload])


def fallbacks():
    return [p for e, p in RECORDS if e == "fallback"]


def worker_children():
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                out.append(child.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return out


TRACKERS = (
    "multiprocessing.resource_tracker",
    "loky.backend.resource_tracker",
    "joblib.externals.loky.backend.resource_tracker",
)


def tracker_fds():
    """Pipes to the process-wide resource trackers, which live as long as the process."""
    fds = set()
    for name in TRACKERS:
        tracker = getattr(sys.modules.get(name), "_resource_tracker", None)
        fd = getattr(tracker, "_fd", None)
        if fd is not None:
            fds.add(fd)
    return fds


def usage():
    return {
        "children": len(worker_children()),
        "threads": threading.active_count(),
        "fds": psutil.Process().num_fds() - len(tracker_fds()),
    }


def settle(before, limit=10.0):
    """Wait until children, threads and fds are back to ``before``; return what is left."""
    deadline = time.monotonic() + limit
    while True:
        gc.collect()  # a failed map's traceback cycles can hold a pipe until collected
        now = usage()
        if all(now[k] <= before[k] for k in before) or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


def running(pids):
    """The pids that still run (a zombie has exited)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_exit(pids, limit=5.0):
    """Wait up to ``limit`` seconds for ``pids`` to exit; return those still running."""
    deadline = time.monotonic() + limit
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    return running(pids)


def log_run(path, x):
    # one short O_APPEND write per call: lines of concurrent writers never interleave
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{os.getpid()} {x}\\n".encode())
    finally:
        os.close(fd)


def ready(**info):
    print("READY " + json.dumps(info), flush=True)


def done(**result):
    print("RESULT " + json.dumps(result), flush=True)
'''


@dataclass
class Outcome:
    """What a scenario printed: its ``done`` result, its ``ready`` info and its stderr."""

    result: dict[str, Any]
    ready: dict[str, Any] = field(default_factory=dict)
    stderr: str = ""
    returncode: int = 0


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", PRELUDE + "\n" + textwrap.dedent(body)]


def _parse(stdout: str, stderr: str, returncode: int) -> Outcome:
    result: dict[str, Any] | None = None
    info: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
        elif line.startswith("READY "):
            info = json.loads(line[len("READY ") :])
    if result is None:
        raise AssertionError(
            f"scenario printed no result (exit {returncode})\nstdout:\n{stdout}\nstderr:\n{stderr}"
        )
    return Outcome(result, info, stderr, returncode)


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CE_PARALLEL", None)
    env.pop("CE_PARALLEL_TELEMETRY", None)
    env.update(extra or {})
    return env


def run_scenario(
    body: str, *, timeout: float = SCENARIO_TIMEOUT_S, env: dict[str, str] | None = None
) -> Outcome:
    """Run ``body`` in a new Python process (own session) and return what it reported."""
    proc = subprocess.Popen(
        _script(body),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(env),
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(
            f"scenario hung for {timeout} s\nstdout:\n{out}\nstderr:\n{err}"
        ) from None
    return _parse(out, err, proc.returncode)


class Scenario:
    """A running scenario the driver interacts with: wait for ``ready``, signal, collect."""

    def __init__(self, body: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            _script(body),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(env),
            start_new_session=True,
        )
        self.ready: dict[str, Any] = {}

    def wait_ready(self, timeout: float = SCENARIO_TIMEOUT_S) -> dict[str, Any]:
        """Block until the scenario prints its ``READY`` line; return its info."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("READY "):
                self.ready = json.loads(line[len("READY ") :])
                return self.ready
        kill_group(self.proc)
        _, err = self.proc.communicate()
        raise AssertionError(f"scenario never became ready\nstderr:\n{err}")

    def signal_group(self, signum: int) -> float:
        """Send ``signum`` to the scenario's whole process group; return ``time.time()``."""
        sent = time.time()
        os.killpg(self.proc.pid, signum)
        return sent

    def finish(self, timeout: float = SCENARIO_TIMEOUT_S) -> Outcome:
        """Wait for the scenario to end and return its result."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            out, err = self.proc.communicate()
            raise AssertionError(f"scenario hung\nstdout:\n{out}\nstderr:\n{err}") from None
        outcome = _parse(out, err, self.proc.returncode)
        outcome.ready = self.ready
        return outcome


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL everything in ``proc``'s session (it was started with its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def alive(pids: Iterable[int]) -> list[int]:
    """The pids that still run (zombies count as gone: they have exited)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(pids: Iterable[int], limit: float = EXIT_GRACE_S) -> tuple[list[int], float]:
    """Wait until every pid has exited; return the survivors and the seconds waited."""
    started = time.monotonic()
    pending = list(pids)
    while pending and time.monotonic() - started < limit:
        pending = alive(pending)
        if pending:
            time.sleep(0.01)
    return pending, time.monotonic() - started


def runs_by_item(log: str, parent: int) -> tuple[dict[int, int], dict[int, int]]:
    """Read a run log (``pid item`` lines): runs of each item in workers, and in the parent."""
    in_worker: dict[int, int] = {}
    in_parent: dict[int, int] = {}
    for line in log.splitlines():
        pid, item = (int(v) for v in line.split())
        target = in_parent if pid == parent else in_worker
        target[item] = target.get(item, 0) + 1
    return in_worker, in_parent


def worker_pids(log: str, parent: int) -> set[int]:
    """The pids other than ``parent`` that appear in a run log."""
    return {int(line.split()[0]) for line in log.splitlines()} - {parent}


def assert_settled(out: dict[str, Any]) -> None:
    """The scenario's children, threads and fds went back to what they were before it."""
    before, after = out["before"], out["after"]
    assert all(after[k] <= before[k] for k in before), f"left behind: {before} -> {after}"


def chunk_items(chunks: Iterable[int], chunksize: int, n: int) -> list[int]:
    """The item indices of the listed chunks, for a map cut with ``chunksize``."""
    return [k for c in chunks for k in range(c * chunksize, min((c + 1) * chunksize, n))]
