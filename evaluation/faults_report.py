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
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += crash_rows(tmp)
        rows += serialization_rows()
        rows += start_failure_rows()
        rows += interrupt_rows(tmp)
        rows += parent_kill_rows()
        rows.append(telemetry_row())
        rows += endurance_rows()
    print(markdown(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
