"""Leak checks for processes, threads and file descriptors, shared by the test suites."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psutil
import pytest

#: loky and joblib each keep one resource-tracker helper per process for its lifetime; it is not
#: a worker and is not ours to stop.
HELPER_MARKERS = ("resource_tracker",)
#: distributed keeps one process-wide offload thread (``distributed.utils._offload_executor``)
#: from its first use until the interpreter exits; it is not a worker and is not ours to stop.
HELPER_THREAD_PREFIXES = ("Dask-Offload",)


def worker_children() -> list[psutil.Process]:
    """Child processes of this test process, other than long-lived resource trackers."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if not any(marker in cmdline for marker in HELPER_MARKERS):
            out.append(child)
    return out


def worker_threads() -> list[threading.Thread]:
    """Live threads of this process, other than long-lived library helpers."""
    return [t for t in threading.enumerate() if not t.name.startswith(HELPER_THREAD_PREFIXES)]


@dataclass
class Snapshot:
    children: int
    threads: int
    fds: int


def _fds_other_than_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed while listing
        count += not target.startswith("socket:")
    return count


def snapshot(ignore_sockets: bool = False) -> Snapshot:
    """Counts to compare after a test. ``ignore_sockets`` leaves out socket descriptors, which a
    long-lived client shared by several tests (a dask ``Client``) opens and pools as it likes."""
    fds = _fds_other_than_sockets() if ignore_sockets else psutil.Process().num_fds()
    return Snapshot(len(worker_children()), len(worker_threads()), fds)


def assert_no_leaks(before: Snapshot, settle_s: float = 5.0, ignore_sockets: bool = False) -> None:
    """Wait up to ``settle_s`` for children, threads and fds to return to ``before``."""
    deadline = time.monotonic() + settle_s
    while True:
        now = snapshot(ignore_sockets)
        ok = (
            now.children <= before.children
            and now.threads <= before.threads
            and now.fds <= before.fds
        )
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert now.children <= before.children, f"child processes left: {worker_children()}"
    assert now.threads <= before.threads, f"threads left: {worker_threads()}"
    assert now.fds <= before.fds, f"file descriptors left: {before.fds} -> {now.fds}"


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves a worker process, a thread or a file descriptor behind."""
    before = snapshot()
    yield
    assert_no_leaks(before)


def files_left_by_a_killed_process(
    script: str, files_of: Callable[[int], list[str]], seconds: float = 60.0
) -> list[str]:
    """Run ``script`` (it prints its pid, then makes files), SIGKILL it once ``files_of(pid)``
    is not empty, and return what is still there after waiting up to ``seconds``: the
    executor's helpers (workers, the resource tracker) must remove it without the parent."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        deadline = time.monotonic() + seconds
        while not files_of(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert files_of(child), "the script made no file to leave behind"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + seconds
        while files_of(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        return files_of(child)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
