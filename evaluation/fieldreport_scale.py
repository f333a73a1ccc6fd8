"""How fast ``ce-parallel report`` reads a large telemetry file, and how much memory it takes.

    python evaluation/fieldreport_scale.py                 # 10^6 lines, written to a temp dir
    python evaluation/fieldreport_scale.py --lines 200000 --keep /tmp/big.jsonl

Writes a version 2 file of ``--lines`` records (decision and run pairs from a few call sites,
a fallback now and then, a run before its decision now and then), then builds the report in a
fresh child process, once in one pass and once in parallel pieces (the default), and prints
the wall time, the child's CPU time and its peak resident set size (Linux ``ru_maxrss``; the
pieces' worker processes are not included). A second, smaller file shows whether the peak
grows with the file. The decoder is orjson when it is installed (the ``report`` extra), else
the standard library's: run it in both environments to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

SITES = ("app.calibrate:fit", "app.explain:explain_factual", "app.explain:explore", "lib.cv:folds")
REASONS_SERIAL = ("tiny_workload", "below_min_instances", "spawn_cost", "disabled")


def write_file(path: str, lines: int, seed: int = 0) -> None:
    """``lines`` records: pairs of decision + run, every 50th map with a fallback."""
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        n = 0
        while written < lines:
            n += 1
            parallel = rng.random() < 0.4
            site = SITES[n % len(SITES)]
            wall = rng.uniform(0.001, 0.5)
            est = wall * rng.uniform(0.6, 1.6)
            decision = {
                "event": "decision",
                "time": 1.7e9 + n,
                "version": 2,
                "pid": 1000 + n % 4,
                "host": "node-1",
                "decision_id": f"d{n}",
                "call_site": site,
                "use_parallel": parallel,
                "decision": "parallel" if parallel else "serial",
                "strategy": "threads" if parallel else "sequential",
                "workers": 2 if parallel else 1,
                "reason": "enabled" if parallel else REASONS_SERIAL[n % len(REASONS_SERIAL)],
                "detail": "generated",
                "n_instances": rng.randint(1, 400),
                "n_features": 10,
                "bytes_hint": None,
                "seconds_per_item": None,
                "estimated_work_s": est,
                "requested_strategy": "threads",
                "full_matrix": False,
                "executor_type": "ThreadExecutor",
                "platform": "linux/fork",
                "ci": False,
                "cpu_budget": 2,
                "cpu_limited_by": "machine",
                "cost_source": "assumed",
                "per_item_s": 0.0005,
                "start_cost_s": 0.0012,
                "estimated_serial_s": est,
                "estimated_parallel_s": est / 2 + 0.0012,
            }
            run = {
                "event": "run",
                "time": 1.7e9 + n + wall,
                "version": 2,
                "pid": 1000 + n % 4,
                "host": "node-1",
                "decision_id": f"d{n}",
                "call_site": site,
                "serial": not parallel,
                "strategy": decision["strategy"],
                "items": 100,
                "chunks": 8 if parallel else None,
                "workers": decision["workers"],
                "wall_time_s": wall / (1.8 if parallel else 1.0),
                "busy_time_s": wall if parallel else None,
                "utilisation_pct": None,
                "fallbacks": 0,
                "error": None,
            }
            pair = [run, decision] if n % 97 == 0 else [decision, run]
            if n % 50 == 0 and parallel:
                pair.insert(
                    1,
                    {
                        "event": "fallback",
                        "time": 1.7e9 + n,
                        "version": 2,
                        "pid": 1000 + n % 4,
                        "host": "node-1",
                        "decision_id": f"d{n}",
                        "strategy": "threads",
                        "stage": "run",
                        "cause": "WorkerCrashedError",
                        "detail": "generated",
                        "action": "serial",
                        "items": 10,
                        "chunks": [3],
                    },
                )
            for record in pair:
                if written < lines:
                    out.write(json.dumps(record, sort_keys=True) + "\n")
                    written += 1


CHILD = """
import json, resource, sys, time
from ce_parallel.fieldreport import build_report
from ce_parallel.fieldreport.reader import _decoder
pieces = None if sys.argv[2] == "auto" else int(sys.argv[2])
started = time.perf_counter()
report = build_report([sys.argv[1]], pieces_per_file=pieces)
seconds = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "peak_rss_mb": usage.ru_maxrss / 1024,
                  "records": report["lines"]["records"], "orjson": _decoder()[1],
                  "linked": report["linking"]["linked"],
                  "skipped": report["lines"]["skipped"]}))
"""


def measure(path: str, pieces: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, path, pieces], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--keep", help="write the big file here and keep it")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        big = args.keep or os.path.join(tmp, "big.jsonl")
        small = os.path.join(tmp, "small.jsonl")
        started = time.perf_counter()
        write_file(big, args.lines)
        write_file(small, max(1, args.lines // 10), seed=1)
        print(
            f"wrote {args.lines} lines ({os.path.getsize(big) / 1e6:.0f} MB) in "
            f"{time.perf_counter() - started:.1f} s"
        )
        for label, path in ((f"{args.lines // 10} lines", small), (f"{args.lines} lines", big)):
            for pieces in ("1", "auto"):
                m = measure(path, pieces)
                how = "one pass" if pieces == "1" else "pieces"
                print(
                    f"{label:>16}, {how:>8}: {m['seconds']:.2f} s wall, "
                    f"{m['cpu_s']:.2f} s CPU here, peak RSS here {m['peak_rss_mb']:.0f} MB, "
                    f"{m['records']} records, {m['linked']} linked, {m['skipped']} skipped, "
                    f"decoder: {'orjson' if m['orjson'] else 'json (standard library)'}"
                )


if __name__ == "__main__":
    main()
