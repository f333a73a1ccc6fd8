"""Workers that die mid-map: ``os._exit``, SIGKILL from outside, and a killed parent."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from faults.harness import (
    Scenario,
    alive,
    assert_settled,
    chunk_items,
    kill_group,
    run_scenario,
    runs_by_item,
    wait_gone,
)

N, CHUNK = 12, 2

CRASH_BODY = """
STRATEGY, LOG, N, CS = {strategy!r}, {log!r}, {n}, {cs}

def crash_once(x):
    log_run(LOG, x)
    if x == 5 and os.getpid() != PARENT:
        os._exit(1)  # only in a worker: the serial re-run in the parent succeeds
    return x * 10

before = usage()
modes = {{}}
for mode in ("serial", "raise"):
    RECORDS.clear()
    open(LOG, "w").close()
    ex = create_executor(
        ParallelConfig(strategy=STRATEGY, max_workers=2, fallback=mode, telemetry=record)
    )
    started = time.perf_counter()
    try:
        result, error = ex.map(crash_once, range(N), chunksize=CS), None
    except Exception as exc:
        result, error = None, [type(exc).__name__, list(getattr(exc, "incomplete", ()))]
    seconds = time.perf_counter() - started
    again = ex.map(abs, range(-4, 0), chunksize=1)
    ex.shutdown()
    modes[mode] = dict(
        result=result, error=error, fallbacks=fallbacks(), log=open(LOG).read(),
        seconds=seconds, again=again,
    )
done(parent=PARENT, modes=modes, before=before, after=settle(before))
"""


def check_rerun(log: str, parent: int, record: dict[str, Any], n: int, cs: int) -> list[int]:
    """Items of the lost chunks re-ran once in the parent; every other item ran once."""
    lost = chunk_items(record["chunks"], cs, n)
    in_worker, in_parent = runs_by_item(log, parent)
    assert sorted(in_parent) == lost
    assert all(count == 1 for count in in_parent.values())
    for item in set(range(n)) - set(lost):
        assert in_worker.get(item) == 1, f"item {item} ran {in_worker.get(item)} times"
    return lost


@pytest.mark.parametrize("strategy", ["processes", "joblib"])
def test_worker_exit_falls_back_or_raises_with_incomplete_items(strategy: str, tmp_path) -> None:
    body = CRASH_BODY.format(strategy=strategy, log=str(tmp_path / "runs"), n=N, cs=CHUNK)
    out = run_scenario(body).result
    parent = out["parent"]

    serial = out["modes"]["serial"]
    assert serial["result"] == [x * 10 for x in range(N)]
    (record,) = serial["fallbacks"]
    assert record["cause"] == "WorkerCrashedError"
    assert record["action"] == "serial"
    lost = check_rerun(serial["log"], parent, record, N, CHUNK)
    assert 5 in lost
    assert record["items"] == len(lost)

    raised = out["modes"]["raise"]
    assert raised["result"] is None
    (record,) = raised["fallbacks"]
    assert record["action"] == "raise"
    name, incomplete = raised["error"]
    assert name == "WorkerCrashedError"
    assert incomplete == chunk_items(record["chunks"], CHUNK, N)
    assert 5 in incomplete
    assert runs_by_item(raised["log"], parent)[1] == {}

    for mode in ("serial", "raise"):
        assert out["modes"][mode]["again"] == [4, 3, 2, 1]  # the broken pool was replaced
    assert_settled(out)


KILL_BODY = """
LOG, N, CS = {log!r}, {n}, {cs}
open(LOG, "w").close()

def slow(x):
    log_run(LOG, x)
    time.sleep(0.05)
    return x * 10

def kill_one_worker():
    # as soon as a worker runs an item of the map, SIGKILL it from outside
    while True:
        pids = [int(l.split()[0]) for l in open(LOG).read().splitlines()]
        pids = [p for p in pids if p != PARENT]
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            return pids[0]
        time.sleep(0.005)

before = usage()
ex = create_executor(ParallelConfig(strategy="processes", max_workers=2, telemetry=record))
ex.map(abs, range(4), chunksize=1)
victims = []
killer = threading.Thread(target=lambda: victims.append(kill_one_worker()))
killer.start()
started = time.perf_counter()
result = ex.map(slow, range(N), chunksize=CS)
seconds = time.perf_counter() - started
killer.join()
again = ex.map(abs, range(-3, 0))
ex.shutdown()
done(parent=PARENT, result=result, fallbacks=fallbacks(), log=open(LOG).read(),
     victim=victims[0], seconds=seconds, again=again, before=before, after=settle(before))
"""


def test_sigkilled_worker_reruns_only_its_lost_chunks(tmp_path) -> None:
    n, cs = 20, 2
    out = run_scenario(KILL_BODY.format(log=str(tmp_path / "runs"), n=n, cs=cs)).result
    assert out["result"] == [x * 10 for x in range(n)]
    (record,) = out["fallbacks"]
    assert record["cause"] == "WorkerCrashedError"
    check_rerun(out["log"], out["parent"], record, n, cs)
    assert out["again"] == [3, 2, 1]
    assert alive([out["victim"]]) == []
    assert_settled(out)


PARENT_KILL_BODY = """
def pid_of(x):
    time.sleep(0.05)
    return os.getpid()

ex = create_executor(ParallelConfig(strategy={strategy!r}, max_workers=2))
pids = sorted(set(ex.map(pid_of, range(8), chunksize=1)))
ready(workers=pids, all_children=worker_children())
ex.map(time.sleep, [60] * 4, chunksize=1)
"""


@pytest.mark.parametrize("strategy", ["processes", "joblib"])
def test_workers_exit_on_their_own_when_the_parent_is_sigkilled(strategy: str) -> None:
    scenario = Scenario(PARENT_KILL_BODY.format(strategy=strategy))
    try:
        info = scenario.wait_ready()
        workers = info["all_children"]
        assert workers and set(info["workers"]) <= set(workers)
        time.sleep(0.3)  # the workers are now inside time.sleep(60)
        os.kill(scenario.proc.pid, signal.SIGKILL)
        scenario.proc.wait()
        survivors, _ = wait_gone(workers)
        assert survivors == []
    finally:
        kill_group(scenario.proc)  # the resource trackers, and anything left on failure
        scenario.proc.communicate()
