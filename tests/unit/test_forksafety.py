"""Fork-safety hooks: weak registration, child-only runs, failure isolation, warnings."""

from __future__ import annotations

import gc
import os
from typing import Any

import pytest

from ce_parallel import ParallelConfig, ProcessExecutor, forksafety
from ce_parallel.forksafety import register_fork_hook, registered_hooks, run_fork_hooks


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    monkeypatch.setattr(forksafety, "_hooks", [])
    monkeypatch.setattr(forksafety, "_warned_fork_with_threads", False)


class Cache:
    def __init__(self) -> None:
        self.resets = 0

    def forksafe_reset(self) -> None:
        self.resets += 1


def test_objects_and_callables_run_and_are_counted() -> None:
    cache, calls = Cache(), []

    def clear() -> None:
        calls.append(1)

    register_fork_hook(cache)
    register_fork_hook(clear)
    runs_before = forksafety.hook_runs()
    assert run_fork_hooks() == 2
    assert cache.resets == 1 and calls == [1]
    assert forksafety.hook_runs() == runs_before + 2


def test_registration_does_not_keep_the_object_alive() -> None:
    cache = Cache()
    register_fork_hook(cache)
    register_fork_hook(Cache().forksafe_reset)  # a bound method of an object nobody keeps
    gc.collect()
    assert registered_hooks() == 1
    del cache
    gc.collect()
    assert registered_hooks() == 0
    assert run_fork_hooks() == 0


def test_registering_runs_nothing_in_the_parent() -> None:
    cache = Cache()
    register_fork_hook(cache)
    assert cache.resets == 0


def test_a_failing_hook_is_logged_and_the_others_still_run(caplog) -> None:
    cache = Cache()

    def broken() -> None:
        raise RuntimeError("cannot reset")

    register_fork_hook(broken)
    register_fork_hook(cache)
    failures = forksafety.hook_failures()
    assert run_fork_hooks() == 1
    assert cache.resets == 1
    assert forksafety.hook_failures() == failures + 1
    assert "cannot reset" in caplog.text


def test_anything_else_is_refused_with_a_message() -> None:
    with pytest.raises(TypeError, match="forksafe_reset"):
        register_fork_hook(42)  # type: ignore[arg-type]


def fork_and_report(parent_check: Any) -> bytes:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        try:
            os.write(write, parent_check())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as fh:
        return fh.read()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_hooks_run_in_the_child_after_fork_not_in_the_parent() -> None:
    cache = Cache()
    register_fork_hook(cache)
    assert fork_and_report(lambda: str(cache.resets).encode()) == b"1"
    assert cache.resets == 0


def run_isolated(code: str) -> str:
    """Run ``code`` in a fresh interpreter: thread checks must not see other tests' threads."""
    import subprocess
    import sys
    import textwrap

    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forking_with_live_threads_warns_once() -> None:
    out = run_isolated(
        """
        import os, threading, warnings
        from ce_parallel import forksafety

        stop = threading.Event()
        helper = threading.Thread(target=stop.wait, name="busy-helper")
        helper.start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                os.waitpid(pid, 0)
        stop.set()
        helper.join()
        texts = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        print(len(texts), "busy-helper" in texts[0] if texts else False)
        """
    )
    assert out == "1 True"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_no_warning_without_other_threads() -> None:
    out = run_isolated(
        """
        import os, warnings
        from ce_parallel import forksafety

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        print(len(caught), forksafety.warn_if_threads_at_fork())
        """
    )
    assert out == "0 False"


def test_process_workers_run_module_hooks_once_and_report_them() -> None:
    from forkhook_module import cache_state

    records: list[tuple[str, dict[str, Any]]] = []
    config = ParallelConfig(telemetry=lambda e, p: records.append((e, p)))
    with ProcessExecutor(config, max_workers=2) as ex:
        first = ex.map(cache_state, range(8), chunksize=1)
        second = ex.map(cache_state, range(8), chunksize=1)
    # each worker reset its (import-time) cache exactly once, before its first chunk
    assert {resets for _, resets in first + second} == {1}
    assert all(pid != os.getpid() for pid, _ in first)
    reports = [p for e, p in records if e == "fork_hooks"]
    assert sorted(r["pid"] for r in reports) == sorted({pid for pid, _ in first + second})
    assert all(r["hooks"] == 1 and r["failed"] == 0 for r in reports)
    assert all(r["strategy"] == "processes" for r in reports)
