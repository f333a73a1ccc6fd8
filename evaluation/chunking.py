"""Which default chunk size? Chunks per worker 1, 2, 4, 8, 16 and chunksize=1, measured.

The executor's default chunk size is ``ceil(n / (workers * CHUNKS_PER_WORKER))``
(``ce_parallel.heuristics``). This script measures the process and thread strategies on the
tiny, fine and coarse workloads of ``ce_parallel.bench.workloads`` with each candidate, warm
pools, runs interleaved across repeats, and writes the medians to JSON.

Usage::

    python evaluation/chunking.py [--quick] [--repeats N] [--out evaluation/results/chunking.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any

from ce_parallel.bench.workloads import get_workload
from ce_parallel.config import ParallelConfig, StrategyName
from ce_parallel.executor import create_executor
from ce_parallel.heuristics import CHUNKS_PER_WORKER
from ce_parallel.resources import cpu_budget

STRATEGIES: tuple[StrategyName, ...] = ("processes", "threads")
WORKLOADS = ("tiny", "cpu_fine", "cpu_coarse")
#: Chunks per worker to compare; ``None`` stands for chunksize=1 (one item per task).
CANDIDATES: tuple[int | None, ...] = (1, 2, 4, 8, 16, None)
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "chunking.json")


def _load() -> list[float] | None:
    """The 1, 5 and 15-minute load averages: other processes on the machine skew timings."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def label(candidate: int | None) -> str:
    """Column name of a candidate: ``cpw=4`` or ``chunksize=1``."""
    return "chunksize=1" if candidate is None else f"cpw={candidate}"


def chunksize_for(candidate: int | None, n: int, workers: int) -> int:
    """The chunk size a candidate gives for ``n`` items on ``workers`` workers."""
    if candidate is None:
        return 1
    return max(1, math.ceil(n / (workers * candidate)))


def main(argv: list[str] | None = None) -> int:
    """Measure every candidate and write the JSON; print a table. Returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="quick-mode workload sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    workers = cpu_budget().count
    cases = {name: get_workload(name).case(mode) for name in WORKLOADS}
    expected = {name: [case.fn(x) for x in case.items] for name, case in cases.items()}
    times: dict[str, dict[str, dict[str, list[float]]]] = {
        w: {s: {label(c): [] for c in CANDIDATES} for s in STRATEGIES} for w in WORKLOADS
    }
    serial: dict[str, list[float]] = {w: [] for w in WORKLOADS}
    executors = {
        s: create_executor(ParallelConfig(enabled=True, strategy=s, full_matrix=True))
        for s in STRATEGIES
    }
    started = time.perf_counter()
    load_before = _load()
    try:
        for executor in executors.values():
            executor.map(abs, list(range(64)))  # start the pool before timing
        for name, case in cases.items():
            n = len(case.items)
            for repeat in range(args.repeats):
                t0 = time.perf_counter()
                [case.fn(x) for x in case.items]
                serial[name].append(time.perf_counter() - t0)
                for strategy, executor in executors.items():
                    # rotate the candidates each repeat so machine drift does not favour one
                    shift = repeat % len(CANDIDATES)
                    for candidate in CANDIDATES[shift:] + CANDIDATES[:shift]:
                        size = chunksize_for(candidate, n, workers)
                        t0 = time.perf_counter()
                        got = executor.map(case.fn, case.items, chunksize=size)
                        elapsed = time.perf_counter() - t0
                        if got != expected[name]:
                            raise AssertionError(f"{strategy} {label(candidate)} on {name}: wrong")
                        times[name][strategy][label(candidate)].append(elapsed)
                print(
                    f"{name} repeat {repeat + 1}/{args.repeats} done "
                    f"({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for executor in executors.values():
            executor.shutdown()
    medians = {
        w: {s: {c: statistics.median(v) for c, v in row.items()} for s, row in by_s.items()}
        for w, by_s in times.items()
    }
    document: dict[str, Any] = {
        "command": "python evaluation/chunking.py " + " ".join(sys.argv[1:]),
        "mode": mode,
        "repeats": args.repeats,
        "workers": workers,
        "current_chunks_per_worker": CHUNKS_PER_WORKER,
        "sizes": {w: cases[w].size for w in WORKLOADS},
        "serial_median_s": {w: statistics.median(v) for w, v in serial.items()},
        "median_s": medians,
        "times_s": times,
        "load_average_before": load_before,
        "load_average_after": _load(),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2)
        handle.write("\n")
    print(table(document))
    return 0


def table(document: dict[str, Any]) -> str:
    """Markdown table: median time per candidate, and its ratio to the best in the row."""
    columns = [label(c) for c in CANDIDATES]
    lines = [
        f"Median of {document['repeats']} ({document['mode']} sizes, {document['workers']} "
        f"workers, 1-min load average {document['load_average_before']} before); "
        "x = ratio to the best candidate in the row.",
        "",
        "| workload | strategy | serial | " + " | ".join(columns) + " |",
        "|---|---|---:|" + "---:|" * len(columns),
    ]
    for workload, by_strategy in document["median_s"].items():
        for strategy, row in by_strategy.items():
            best = min(row.values())
            cells = [f"{row[c] * 1e3:.1f} ms ({row[c] / best:.2f}x)" for c in columns]
            serial = document["serial_median_s"][workload] * 1e3
            lines.append(
                f"| {workload} | {strategy} | {serial:.1f} ms | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
