"""Run every fault case once and report what happened and how long recovery took.

Usage::

    python evaluation/faults_report.py [--out evaluation/results/faults.json]

Each case is the scenario the fault suite (``tests/faults``) checks, run in its own process;
this script only times it and prints one markdown table row per case. Times are wall seconds
on this machine and include loky pool restarts; they are measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from faults.harness import Scenario, kill_group, run_scenario, wait_gone  # noqa: E402
from faults.test_interrupts import (  # noqa: E402
    ENDURANCE_BODY,
    LIMIT_BODY,
    MAPS,
    interrupt,
)
from faults.test_serialization import BODY as SERIALIZATION_BODY  # noqa: E402
from faults.test_start_failure import MISSING_JOBLIB  # noqa: E402
from faults.test_thread_exit import (  # noqa: E402
    HANGING_INIT,
    LONG_ITEM_S,
    SIGNALLED,
    WITH_TIMEOUT,
)
from faults.test_worker_death import CRASH_BODY, KILL_BODY, PARENT_KILL_BODY  # noqa: E402

Row = dict[str, Any]


def crash_rows(tmp: str) -> list[Row]:
    rows = []
    for strategy in ("processes", "joblib"):
        body = CRASH_BODY.format(strategy=strategy, log=f"{tmp}/crash-{strategy}", n=12, cs=2)
        out = run_scenario(body).result
        serial, raised = out["modes"]["serial"], out["modes"]["raise"]
        record = serial["fallbacks"][0]
        rows.append(
            {
                "case": f"os._exit(1) in a worker ({strategy})",
                "serial": f"complete result; chunks {record['chunks']} re-ran in the caller",
                "raise": f"{raised['error'][0]}, {len(raised['error'][1])} items incomplete",
                "recovery_s": serial["seconds"],
            }
        )
    out = run_scenario(KILL_BODY.format(log=f"{tmp}/kill", n=20, cs=2)).result
    rows.append(
        {
            "case": "SIGKILL of a worker mid-map (processes)",
            "serial": f"complete result; chunks {out['fallbacks'][0]['chunks']} re-ran",
            "raise": "(same path as os._exit)",
            "recovery_s": out["seconds"],
        }
    )
    return rows


def serialization_rows() -> list[Row]:
    rows = []
    for strategy in ("processes", "joblib"):
        started = time.perf_counter()
        out = run_scenario(SERIALIZATION_BODY.format(strategy=strategy)).result
        took = time.perf_counter() - started
        for case, what in (("item", "a threading.Lock item"), ("result", "a Lock result")):
            serial = out["cases"][f"{case}-serial"]["fallbacks"][0]
            raised = out["cases"][f"{case}-raise"]["error"]
            rows.append(
                {
                    "case": f"unpicklable: {what} ({strategy})",
                    "serial": f"complete result; chunks {serial['chunks']} re-ran",
                    "raise": f"{raised[0]}, items {raised[1]} incomplete",
                    "recovery_s": None,
                    "scenario_s": took,
                }
            )
    return rows


def start_failure_rows() -> list[Row]:
    from ce_parallel import ParallelConfig, ProcessExecutor

    class BrokenProcesses(ProcessExecutor):
        def start_pool(self) -> None:
            raise OSError("cannot start workers (injected)")

    records: list[tuple[str, dict[str, Any]]] = []
    with BrokenProcesses(ParallelConfig(telemetry=lambda e, p: records.append((e, p)))) as ex:
        started = time.perf_counter()
        ex.map(abs, range(100))
        took = time.perf_counter() - started
    steps = [f"{p['strategy']}->{p['action']}" for e, p in records if e == "fallback"]
    out = run_scenario(MISSING_JOBLIB).result
    missing = out["modes"]["serial"]["fallbacks"][0]
    return [
        {
            "case": "pool start fails (processes)",
            "serial": f"complete result on threads; records: {', '.join(steps)}",
            "raise": "BackendUnavailableError, every item incomplete",
            "recovery_s": took,
        },
        {
            "case": "joblib not importable",
            "serial": f"complete result; {missing['strategy']}->{missing['action']}",
            "raise": out["modes"]["raise"]["error"][0],
            "recovery_s": None,
        },
    ]


def interrupt_rows(tmp: str) -> list[Row]:
    rows = []
    for strategy in ("processes", "joblib", "threads", "sequential"):
        out, latency = interrupt(strategy, f"{tmp}/sigint-{strategy}")
        rows.append(
            {
                "case": f"SIGINT to the process group ({strategy})",
                "serial": f"{out['outcome']}; {len(out['survivors'])} workers left; reusable",
                "raise": "(same)",
                "recovery_s": latency,
            }
        )
    for strategy in ("processes", "joblib", "threads"):
        sleep = 0.5 if strategy == "threads" else 30.0
        body = LIMIT_BODY.format(log=f"{tmp}/limit-{strategy}", strategy=strategy, sleep=sleep)
        report = run_scenario(body).result["report"]
        for how, label in (("timeout", "timeout=0.3 s"), ("cancel", "cancel() after 0.3 s")):
            case = report[how]
            rows.append(
                {
                    "case": f"{label} ({strategy})",
                    "serial": f"{case['error']}; {len(case['survivors'])} busy workers left",
                    "raise": "(same)",
                    "recovery_s": case["seconds"],
                }
            )
    return rows


def parent_kill_rows() -> list[Row]:
    rows = []
    for strategy in ("processes", "joblib"):
        scenario = Scenario(PARENT_KILL_BODY.format(strategy=strategy))
        try:
            workers = scenario.wait_ready()["all_children"]
            time.sleep(0.3)
            sent = time.monotonic()
            os.kill(scenario.proc.pid, signal.SIGKILL)
            survivors, _ = wait_gone(workers)
            took = time.monotonic() - sent
        finally:
            kill_group(scenario.proc)
            scenario.proc.communicate()
        rows.append(
            {
                "case": f"parent SIGKILLed ({strategy})",
                "serial": f"{len(workers) - len(survivors)}/{len(workers)} workers exited alone",
                "raise": "(same)",
                "recovery_s": took,
            }
        )
    return rows


def endurance_rows() -> list[Row]:
    out = run_scenario(ENDURANCE_BODY.format(maps=MAPS), timeout=120).result["report"]
    rows = []
    for strategy, numbers in out.items():
        first, last = numbers["first"], numbers["last"]
        rows.append(
            {
                "case": f"{MAPS} consecutive maps ({strategy})",
                "serial": (
                    f"fds {first['fds']}->{last['fds']}, threads {first['threads']}->"
                    f"{last['threads']}, RSS {(last['rss'] - first['rss']) / 2**20:+.1f} MiB"
                ),
                "raise": "-",
                "recovery_s": numbers["seconds"] / MAPS,
            }
        )
    return rows


def telemetry_row() -> Row:
    from ce_parallel import ParallelConfig, create_executor

    def explode(event: str, payload: dict[str, Any]) -> None:
        raise RuntimeError("sink is down")

    with tempfile.TemporaryDirectory() as folder:
        config = ParallelConfig(strategy="threads", telemetry=explode, telemetry_path=folder)
        with create_executor(config) as ex:
            ok = ex.map(abs, range(-5, 5)) == [abs(x) for x in range(-5, 5)]
    return {
        "case": "telemetry callback raises, file sink unwritable",
        "serial": "complete result; one warning per sink" if ok else "WRONG RESULT",
        "raise": "(same)",
        "recovery_s": None,
    }


def _timed(fn: Any) -> tuple[str, float]:
    """Run ``fn()`` and return what happened (its text, or the error's type) and the seconds."""
    started = time.perf_counter()
    try:
        shown = str(fn())
    except BaseException as exc:
        shown = f"{type(exc).__name__}"
        index = getattr(exc, "ce_parallel_item_index", getattr(exc, "item_index", None))
        if index is not None:
            shown += f" at item {index}"
    return shown, time.perf_counter() - started


def reliability_rows(tmp: str) -> list[Row]:
    """The cases of issue 18: item counts, initializers, re-entrancy, shutdown, typed errors."""
    import threading

    from faults import faultfns
    from faults.test_reliability import _short_chunks

    from ce_parallel import ParallelConfig, ParallelFacade, create_executor
    from ce_parallel.errors import ExecutorClosedError

    def config(strategy: str, **changes: Any) -> ParallelConfig:
        return ParallelConfig(
            enabled=True, strategy=strategy, full_matrix=True, max_workers=2, **changes
        )

    rows: list[Row] = []
    for strategy in ("sequential", "threads", "processes", "joblib", "auto"):
        log = Path(tmp) / f"stop-{strategy}"
        items = [(str(log), i, 5) for i in range(12)]
        with create_executor(config(strategy)) as ex:
            shown, took = _timed(
                lambda ex=ex, items=items: ex.map(faultfns.next_on_empty_at, items)
            )
        runs = log.read_text().split()
        rows.append(
            {
                "case": f"StopIteration from fn at item 5 of 12 ({strategy})",
                "serial": f"{shown}; most runs of one item: {max(runs.count(r) for r in runs)}",
                "raise": "(same)",
                "recovery_s": took,
            }
        )
    for strategy in ("threads", "processes", "joblib"):
        outcome = {}
        for mode in ("serial", "raise"):
            ex = _short_chunks(strategy)(config(strategy, fallback=mode))
            shown, took = _timed(
                lambda ex=ex: (
                    "complete result"
                    if ex.map(abs, range(-12, 0), chunksize=3) == list(range(12, 0, -1))
                    else "WRONG RESULT"
                )
            )
            ex.shutdown()
            outcome[mode] = (shown, took)
        rows.append(
            {
                "case": f"every chunk returns one result too few ({strategy})",
                "serial": outcome["serial"][0] + " (lost chunks re-ran)",
                "raise": outcome["raise"][0],
                "recovery_s": outcome["serial"][1],
            }
        )
    for strategy in ("sequential", "threads", "processes", "joblib"):
        flag = Path(tmp) / f"init-{strategy}"
        cfg = config(
            strategy,
            worker_initializer=faultfns.init_fails_first,
            worker_init_args=(str(flag),),
        )
        seen = []
        with create_executor(cfg) as ex:
            for _ in range(3):
                shown, _ = _timed(
                    lambda ex=ex: (
                        "initialized"
                        if all(ex.map(faultfns.was_initialized, range(8), chunksize=1))
                        else "RAN WITHOUT INITIALIZER"
                    )
                )
                seen.append(shown)
        rows.append(
            {
                "case": f"worker_initializer fails once; three maps ({strategy})",
                "serial": ", ".join(seen),
                "raise": "(same)",
                "recovery_s": None,
            }
        )

    def nested_facade() -> str:
        outer, inner = ParallelFacade(environ={}), ParallelFacade(environ={})
        try:
            return str(outer.map(lambda x: sum(inner.map(abs, [x, -x])), range(4)))
        finally:
            outer.close()
            inner.close()

    shown, took = _timed(nested_facade)
    rows.append(
        {
            "case": "facade.map inside a facade.map's fn (default serial config)",
            "serial": shown,
            "raise": "(same)",
            "recovery_s": took,
        }
    )
    for strategy in ("sequential", "threads"):
        with create_executor(config(strategy)) as ex:
            shown, took = _timed(
                lambda ex=ex: ex.map(lambda x: sum(ex.map(abs, [x, -x])), range(4))
            )
        rows.append(
            {
                "case": f"fn calls the same executor's map ({strategy})",
                "serial": shown,
                "raise": "(same)",
                "recovery_s": took,
            }
        )
    for strategy in ("threads", "processes", "joblib"):
        holder: dict[str, Any] = {"busy": False, "maps": 0}

        def callback(event: str, payload: dict[str, Any], holder: dict[str, Any] = holder) -> None:
            if event == "run" and not holder["busy"]:
                holder["busy"] = True
                try:
                    holder["ex"].map(abs, [-1])
                    holder["maps"] += 1
                finally:
                    holder["busy"] = False

        with create_executor(config(strategy, telemetry=callback)) as ex:
            holder["ex"] = ex
            shown, took = _timed(lambda ex=ex: ex.map(abs, [-1, -2, -3]))
        rows.append(
            {
                "case": f"a telemetry callback calls executor.map ({strategy})",
                "serial": f"{shown}; nested maps: {holder['maps']}",
                "raise": "(same)",
                "recovery_s": took,
            }
        )
    records: list[tuple[str, dict[str, Any]]] = []
    with create_executor(config("processes", telemetry=lambda e, p: records.append((e, p)))) as ex:
        shown, took = _timed(lambda ex=ex: ex.map(lambda x: (ex, x)[1], range(4)))
    causes = [p["cause"] for e, p in records if e == "fallback"]
    rows.append(
        {
            "case": "a closure over a process executor pickled into its own map",
            "serial": f"{shown}; fallback records: {causes}",
            "raise": "SerializationError",
            "recovery_s": took,
        }
    )
    for strategy in ("sequential", "threads", "processes", "joblib"):
        for how in ("shutdown()", "shutdown(cancel=True)"):
            ex = create_executor(config(strategy))
            out: dict[str, Any] = {}

            def run(ex: Any = ex, out: dict[str, Any] = out) -> None:
                out["shown"], _ = _timed(
                    lambda: f"{len(ex.map(faultfns.nap_long, range(120), chunksize=2))} results"
                )

            runner = threading.Thread(target=run)
            runner.start()
            time.sleep(1.0)
            started = time.perf_counter()
            ex.shutdown(cancel=how.endswith("True)"))
            took = time.perf_counter() - started
            runner.join(30)
            after, _ = _timed(lambda ex=ex: ex.map(abs, [1]))
            rows.append(
                {
                    "case": f"{how} from another thread during a 15 s map ({strategy})",
                    "serial": f"map: {out.get('shown')}; a later map: {after}",
                    "raise": "(same)",
                    "recovery_s": took,
                }
            )
    for strategy in ("processes", "joblib"):
        for fn, what in (
            (faultfns.raise_two_arg_at_3, "an exception whose __init__ needs two args"),
            (faultfns.raise_locked_at_3, "an exception holding a lock"),
            (faultfns.unrebuildable_at_3, "a result that pickles but cannot be unpickled"),
        ):
            outcome = {}
            for mode in ("serial", "raise"):
                with create_executor(config(strategy, fallback=mode)) as ex:
                    # chunks of 2: item 3 is the second item of its chunk
                    outcome[mode] = _timed(
                        lambda ex=ex, fn=fn: f"{len(ex.map(fn, range(6), chunksize=2))} ok"
                    )
            rows.append(
                {
                    "case": f"{what}, item 3 of 0..5 in chunks of 2 ({strategy})",
                    "serial": outcome["serial"][0],
                    "raise": outcome["raise"][0],
                    "recovery_s": outcome["serial"][1],
                }
            )
    ex = create_executor(config("processes"))
    ex.map(abs, [1])
    ex.shutdown()
    shown, took = _timed(lambda: ex.map(abs, [1]))
    rows.append(
        {
            "case": "a map after shutdown() (processes)",
            "serial": shown
            + (" (nothing started)" if shown == ExecutorClosedError.__name__ else ""),
            "raise": "(same)",
            "recovery_s": took,
        }
    )
    if hasattr(os, "mkfifo"):
        fifo = Path(tmp) / "fifo"
        os.mkfifo(fifo)
        with create_executor(config("threads", telemetry_path=str(fifo))) as ex:
            shown, took = _timed(lambda ex=ex: ex.map(abs, [-1, -2]))
        rows.append(
            {
                "case": "CE_PARALLEL_TELEMETRY is a FIFO without reader (threads)",
                "serial": f"{shown}; the record is skipped with one warning",
                "raise": "(same)",
                "recovery_s": took,
            }
        )
    cfg = config("threads")
    with create_executor(cfg) as ex:
        cfg.max_workers = 0
        shown, _ = _timed(lambda ex=ex: ex.map(abs, [1]))
    rows.append(
        {
            "case": "config.max_workers = 0 after construction",
            "serial": shown,
            "raise": "(same)",
            "recovery_s": None,
        }
    )
    return rows


def thread_exit_rows() -> list[Row]:
    rows = []
    for how, signum in (("ctrl-c", signal.SIGINT), ("sigterm", signal.SIGTERM)):
        scenario = Scenario(SIGNALLED.format(how=how, long=LONG_ITEM_S))
        scenario.wait_ready()
        time.sleep(0.3)
        sent = time.time()
        scenario.signal_group(signum)
        out = scenario.finish(timeout=LONG_ITEM_S + 10).result
        rows.append(
            {
                "case": f"{how.upper()} during a threads map of {LONG_ITEM_S:.0f} s items",
                "serial": f"the caller got {out['caught']}; the interpreter exited",
                "raise": "(same)",
                "recovery_s": time.time() - sent,
            }
        )
    started = time.time()
    out = run_scenario(WITH_TIMEOUT.format(long=LONG_ITEM_S), timeout=LONG_ITEM_S + 10).result
    rows.append(
        {
            "case": f"leave a with block after a threads TimeoutError ({LONG_ITEM_S:.0f} s items)",
            "serial": f"left after {out['left_with_after']:.2f} s; process ended",
            "raise": "(same)",
            "recovery_s": time.time() - started,
        }
    )
    out = run_scenario(HANGING_INIT, timeout=40).result
    rows.append(
        {
            "case": "a hanging worker_initializer, then shutdown(cancel=True) (threads)",
            "serial": f"the map raised {out['map_error']}; the process exited",
            "raise": "(same)",
            "recovery_s": out["shutdown_s"],
        }
    )
    return rows


def load_row() -> Row:
    one, five, fifteen = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "case": "machine load while measuring (times are informational)",
        "serial": f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} CPUs",
        "raise": "-",
        "recovery_s": None,
    }


def markdown(rows: list[Row]) -> str:
    lines = [
        "| case | fallback=serial | fallback=raise | recovery / latency (s) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        seconds = row.get("recovery_s")
        shown = "-" if seconds is None else f"{seconds:.3f}"
        lines.append(f"| {row['case']} | {row['serial']} | {row['raise']} | {shown} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the rows as JSON to this path")
    args = parser.parse_args(argv)
    rows: list[Row] = [load_row()]
    with tempfile.TemporaryDirectory() as tmp:
        rows += crash_rows(tmp)
        rows += serialization_rows()
        rows += start_failure_rows()
        rows += interrupt_rows(tmp)
        rows += parent_kill_rows()
        rows.append(telemetry_row())
        rows += endurance_rows()
        rows += reliability_rows(tmp)
        rows += thread_exit_rows()
    rows.append(load_row())
    print(markdown(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
