"""Ctrl-C, ``timeout=`` and ``cancel()`` during a map; and 1000 maps in a row."""

from __future__ import annotations

import signal
import time

import pytest
from faults.harness import Scenario, assert_settled, run_scenario, worker_pids

#: per strategy, how long one item sleeps: a thread cannot be interrupted, so its item is short
SLEEP_S = {"processes": 30.0, "joblib": 30.0, "threads": 1.0, "sequential": 30.0}

SIGINT_BODY = """
LOG = {log!r}
open(LOG, "w").close()

def slow(x):
    log_run(LOG, x)
    time.sleep({sleep})
    return x

before = usage()
ex = create_executor(ParallelConfig(strategy={strategy!r}, max_workers=2))
ready()
try:
    ex.map(slow, range(8), chunksize=1)
    outcome = "finished"
except KeyboardInterrupt:
    outcome = "KeyboardInterrupt"
caught = time.time()
runners = sorted({{int(l.split()[0]) for l in open(LOG).read().splitlines()}} - {{PARENT}})
survivors = wait_exit(runners)
again = ex.map(abs, range(-3, 0), chunksize=1)
ex.shutdown()
done(outcome=outcome, caught=caught, runners=runners, survivors=survivors, again=again,
     before=before, after=settle(before))
"""


def interrupt(strategy: str, log: str) -> tuple[dict, float]:
    """Run a map, SIGINT the process group once an item runs; return the result and latency."""
    scenario = Scenario(SIGINT_BODY.format(log=log, strategy=strategy, sleep=SLEEP_S[strategy]))
    scenario.wait_ready()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(log) as fh:
            if fh.read().strip():
                break
        time.sleep(0.01)
    time.sleep(0.1)  # let the other worker pick up its item too
    sent = scenario.signal_group(signal.SIGINT)
    out = scenario.finish().result
    return out, out["caught"] - sent


@pytest.mark.parametrize("strategy", ["processes", "joblib", "threads", "sequential"])
def test_sigint_reaches_the_caller_and_leaves_no_worker(strategy: str, tmp_path) -> None:
    out, _latency = interrupt(strategy, str(tmp_path / "runs"))
    assert out["outcome"] == "KeyboardInterrupt"
    assert out["survivors"] == []
    if strategy in ("processes", "joblib"):
        assert out["runners"], "no worker process ran an item before the interrupt"
    assert out["again"] == [3, 2, 1]  # the executor is usable again
    assert_settled(out)


LIMIT_BODY = """
LOG = {log!r}
open(LOG, "w").close()

def slow(x):
    log_run(LOG, x)
    time.sleep({sleep})
    return x

before = usage()
ex = create_executor(ParallelConfig(strategy={strategy!r}, max_workers=2))
ex.map(abs, range(4), chunksize=1)
report = {{}}
for how in ("timeout", "cancel"):
    open(LOG, "w").close()
    timer = threading.Timer(0.3, ex.cancel) if how == "cancel" else None
    if timer:
        timer.start()
    started = time.perf_counter()
    try:
        ex.map(slow, range(6), chunksize=1, timeout=0.3 if how == "timeout" else None)
        error = None
    except BaseException as exc:
        error = type(exc).__name__
    seconds = time.perf_counter() - started
    busy = sorted({{int(l.split()[0]) for l in open(LOG).read().splitlines()}} - {{PARENT}})
    survivors = wait_exit(busy)
    report[how] = dict(error=error, seconds=seconds, busy=busy, survivors=survivors,
                       again=ex.map(abs, [-1, -2]), counters=ex.metrics.snapshot())
ex.shutdown()
done(report=report, before=before, after=settle(before))
"""


@pytest.mark.parametrize("strategy", ["processes", "joblib", "threads"])
def test_timeout_and_cancel_stop_the_map_and_kill_busy_workers(strategy: str, tmp_path) -> None:
    sleep = 0.5 if strategy == "threads" else 30.0
    body = LIMIT_BODY.format(log=str(tmp_path / "runs"), strategy=strategy, sleep=sleep)
    out = run_scenario(body).result
    timeout, cancel = out["report"]["timeout"], out["report"]["cancel"]
    assert timeout["error"] == "TimeoutError"
    assert cancel["error"] == "MapCancelledError"
    for case in (timeout, cancel):
        assert case["survivors"] == []  # busy process workers were terminated
        assert case["again"] == [1, 2]
    if strategy != "threads":
        assert timeout["busy"] and cancel["busy"]
    assert cancel["counters"]["timeouts"] == 1
    assert cancel["counters"]["cancellations"] == 1
    assert_settled(out)


ENDURANCE_BODY = """
import resource
report = {{}}
for strategy in ("threads", "processes"):
    ex = create_executor(ParallelConfig(strategy=strategy, max_workers=2))
    for _ in range(50):
        ex.map(abs, range(4), chunksize=1)
    gc.collect()
    first = dict(usage(), rss=psutil.Process().memory_info().rss)
    started = time.perf_counter()
    for i in range({maps}):
        assert ex.map(abs, range(-i, -i + 4), chunksize=1) == [abs(v) for v in range(-i, -i + 4)]
    seconds = time.perf_counter() - started
    gc.collect()
    last = dict(usage(), rss=psutil.Process().memory_info().rss)
    ex.shutdown()
    report[strategy] = dict(first=first, last=last, seconds=seconds)
done(report=report)
"""

MAPS = 1000
#: RSS may move by allocator noise; a leak of one small object per map would exceed this.
RSS_SLACK_BYTES = 8 * 1024 * 1024


def test_a_thousand_maps_keep_fds_threads_and_memory_flat() -> None:
    out = run_scenario(ENDURANCE_BODY.format(maps=MAPS), timeout=80).result
    for strategy, numbers in out["report"].items():
        first, last = numbers["first"], numbers["last"]
        assert last["fds"] == first["fds"], strategy
        assert last["threads"] == first["threads"], strategy
        assert last["children"] == first["children"], strategy
        assert last["rss"] - first["rss"] < RSS_SLACK_BYTES, strategy


__all__ = ["interrupt", "worker_pids"]
