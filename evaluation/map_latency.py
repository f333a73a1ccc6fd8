"""Per-map latency on warm process pools: many small maps, one after another.

A library calling ``map`` in a loop (per fold, per bootstrap) pays each map's fixed cost many
times. The case: ``--maps`` maps of 50 items that each spin for 200 us of pure Python, on two
workers, every pool warm. Runners, interleaved block by block in a shuffled (seeded) order:

* ``ce:processes``: ``create_executor(ParallelConfig(enabled=True, strategy="processes"))``,
  its own chunk plan (after the warm-up maps, two chunks of 25: the items ran steadily), and
  ``chunksize=13`` as the peers below
* ``cf:processes``: ``concurrent.futures.ProcessPoolExecutor(2).map`` (``chunksize=1``, its
  default, and ``chunksize=13``, about four chunks per worker as ce-parallel plans)
* ``loky``: a warm ``loky.get_reusable_executor(2).map``, same two chunk sizes

    python evaluation/map_latency.py --maps 500 --blocks 5 \
        --json evaluation/results/map_latency.json

The figure is milliseconds per map (median over the blocks of each block's mean).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from ce_parallel import ParallelConfig, create_executor

WORKERS = 2
ITEMS = 50
SPIN_S = 200e-6


def spin(x: int) -> int:
    """About ``SPIN_S`` of pure Python (holds the GIL), then ``x``."""
    end = time.perf_counter() + SPIN_S
    while time.perf_counter() < end:
        pass
    return x


def runners() -> tuple[dict[str, Callable[[list[int]], list[int]]], list[Any]]:
    import loky

    ce = create_executor(ParallelConfig(enabled=True, strategy="processes", max_workers=WORKERS))
    pool = cf.ProcessPoolExecutor(WORKERS)
    reusable = loky.get_reusable_executor(WORKERS)
    table: dict[str, Callable[[list[int]], list[int]]] = {
        "ce:processes": lambda items: ce.map(spin, items),
        "ce:processes chunksize=13": lambda items: ce.map(spin, items, chunksize=13),
        "cf:processes": lambda items: list(pool.map(spin, items)),
        "cf:processes chunksize=13": lambda items: list(pool.map(spin, items, chunksize=13)),
        "loky": lambda items: list(reusable.map(spin, items)),
        "loky chunksize=13": lambda items: list(reusable.map(spin, items, chunksize=13)),
    }
    return table, [ce, pool, reusable]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=500, help="maps per block")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    items = list(range(ITEMS))
    table, pools = runners()
    load_before = os.getloadavg()[0]
    per_map: dict[str, list[float]] = {name: [] for name in table}
    try:
        for run in table.values():
            for _ in range(20):  # warm: workers started, functions imported
                assert run(items) == items
        ce = pools[0]
        before = ce.metrics.chunks
        table["ce:processes"](items)
        ce_chunks = ce.metrics.chunks - before
        for block in range(args.blocks):
            order = list(table)
            random.Random(block).shuffle(order)
            for name in order:
                run = table[name]
                started = time.perf_counter()
                for _ in range(args.maps):
                    run(items)
                per_map[name].append((time.perf_counter() - started) / args.maps)
    finally:
        for pool in pools:
            pool.shutdown()
    medians = {name: statistics.median(v) * 1e3 for name, v in per_map.items()}
    best_peer = min(v for k, v in medians.items() if not k.startswith("ce:"))
    print(f"{args.maps} maps of {ITEMS} x {SPIN_S * 1e6:.0f} us on {WORKERS} workers, warm pools")
    print(f"{'runner':<28}{'ms / map':>10}{'x best peer':>13}")
    for name, ms in medians.items():
        print(f"{name:<28}{ms:>10.3f}{ms / best_peer:>13.2f}")
    load_after = os.getloadavg()[0]
    print(f"ce:processes planned {ce_chunks} chunks a map")
    print(f"load average before {load_before:.1f}, after {load_after:.1f}, {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "command": "python evaluation/map_latency.py " + " ".join(argv or sys.argv[1:]),
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "maps_per_block": args.maps,
                    "items": ITEMS,
                    "spin_s": SPIN_S,
                    "ce_processes_chunks_per_map": ce_chunks,
                    "ms_per_map_median": {k: round(v, 4) for k, v in medians.items()},
                    "ms_per_map_blocks": {
                        k: [round(x * 1e3, 4) for x in v] for k, v in per_map.items()
                    },
                    "load_average_before": round(load_before, 2),
                    "load_average_after": round(load_after, 2),
                },
                out,
                indent=1,
            )
            out.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
