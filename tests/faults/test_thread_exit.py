"""Threads strategy: Ctrl-C, SIGTERM, a timeout or a hanging initializer never keep the
interpreter alive for the length of a running item (each scenario runs in its own process).
"""

from __future__ import annotations

import signal
import time

import pytest
from faults.harness import Scenario, run_scenario

#: every item of these scenarios sleeps this long: an interpreter that waits for a busy
#: worker thread at exit takes at least this long to end
LONG_ITEM_S = 30.0

SIGNALLED = """
HOW = {how!r}
if HOW == "sigterm":
    def on_term(signum, frame):
        raise SystemExit(3)
    signal.signal(signal.SIGTERM, on_term)

def long_item(x):
    if x == 0:
        ready(pid=os.getpid())
    time.sleep({long})
    return x

ex = create_executor(ParallelConfig(enabled=True, strategy="threads", max_workers=2))
caught = None
try:
    ex.map(long_item, range(8), chunksize=1)
except BaseException as exc:
    caught = type(exc).__name__
done(caught=caught, stopped_at=time.time())
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("how", "signum"), [("ctrl-c", signal.SIGINT), ("sigterm", signal.SIGTERM)]
)
def test_a_signal_during_a_threads_map_lets_the_interpreter_exit_promptly(
    how: str, signum: int
) -> None:
    scenario = Scenario(SIGNALLED.format(how=how, long=LONG_ITEM_S))
    scenario.wait_ready()
    time.sleep(0.3)
    sent = scenario.signal_group(signum)
    outcome = scenario.finish(timeout=LONG_ITEM_S + 10)
    exited = time.time()
    assert outcome.result["caught"] == ("KeyboardInterrupt" if how == "ctrl-c" else "SystemExit")
    # the caller saw the signal at once, and the interpreter did not wait for the long items
    assert outcome.result["stopped_at"] - sent < 5.0
    assert exited - sent < LONG_ITEM_S / 2, f"the interpreter took {exited - sent:.1f} s to exit"


WITH_TIMEOUT = """
def long_item(x):
    time.sleep({long})
    return x

started = time.time()
try:
    with create_executor(ParallelConfig(enabled=True, strategy="threads", max_workers=2)) as ex:
        ex.map(long_item, range(8), chunksize=1, timeout=0.5)
except TimeoutError:
    pass
done(left_with_after=time.time() - started)
"""


@pytest.mark.timeout(60)
def test_leaving_a_with_block_after_a_threads_timeout_is_prompt() -> None:
    started = time.time()
    outcome = run_scenario(WITH_TIMEOUT.format(long=LONG_ITEM_S), timeout=LONG_ITEM_S + 10)
    assert outcome.result["left_with_after"] < 5.0
    assert time.time() - started < LONG_ITEM_S / 2, "the interpreter waited for the workers"


HANGING_INIT = """
hang = threading.Event()
config = ParallelConfig(
    enabled=True, strategy="threads", max_workers=2, worker_initializer=lambda: hang.wait(300)
)
ex = create_executor(config)
outcome = {}
def run():
    try:
        ex.map(abs, range(4))
    except BaseException as exc:
        outcome["error"] = type(exc).__name__
runner = threading.Thread(target=run)
runner.start()
time.sleep(0.3)
t0 = time.time()
ex.shutdown(cancel=True)
took = time.time() - t0
runner.join(10)
done(shutdown_s=took, map_error=outcome.get("error"), map_alive=runner.is_alive())
"""


@pytest.mark.timeout(60)
def test_a_hanging_initializer_neither_holds_shutdown_nor_the_interpreter() -> None:
    started = time.time()
    outcome = run_scenario(HANGING_INIT, timeout=40)
    assert outcome.result["shutdown_s"] < 5.0
    assert outcome.result["map_error"] == "MapCancelledError"
    assert not outcome.result["map_alive"]
    assert time.time() - started < 30.0


STOP_AFTER_SIGNAL = """
HOW = {how!r}
if HOW == "sigterm":
    def on_term(signum, frame):
        raise SystemExit(3)
    signal.signal(signal.SIGTERM, on_term)

STARTS = []
def short_item(x):
    STARTS.append(time.monotonic())
    if x == 0:
        ready()
    time.sleep(0.2)
    return x

ex = create_executor(ParallelConfig(enabled=True, strategy="threads", max_workers=2))
caught = None
try:
    ex.map(short_item, range(200), chunksize=50)
except BaseException as exc:
    caught = type(exc).__name__
ended = time.monotonic()
time.sleep(1.5)
done(caught=caught, started_after=sum(1 for t in STARTS if t > ended + 0.05))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("how", "signum"), [("ctrl-c", signal.SIGINT), ("sigterm", signal.SIGTERM)]
)
def test_after_a_signal_thread_workers_take_no_new_item(how: str, signum: int) -> None:
    scenario = Scenario(STOP_AFTER_SIGNAL.format(how=how))
    scenario.wait_ready()
    time.sleep(0.5)
    scenario.signal_group(signum)
    outcome = scenario.finish(timeout=40)
    assert outcome.result["caught"] in ("KeyboardInterrupt", "SystemExit")
    assert outcome.result["started_after"] == 0, outcome.result
