"""The facade's regret on a grid of item cost x item count, side by side with what it chooses from.

For each requested strategy (``joblib``, ``threads``) and each cell (a cost per item x a number of
items), three runners are timed, interleaved in an order that rotates each repeat, after one
untimed warm-up call each:

* ``loop``: the plain ``[fn(x) for x in items]``;
* ``strategy``: a warm executor of the requested strategy, always parallel;
* ``facade``: ``ParallelFacade(ParallelConfig(enabled=True, strategy=...))`` with no hints, kept
  across calls as a library would keep it (its first call pilots; later calls recall the
  measurement). Its pool is warmed once before the cells, as the strategy's is: the grid
  measures the steady state of a long-lived library, where a pool is up; what a cold pool
  costs is weighed by the start-up rule (``AUTO_EXPECTED_MAPS_PER_POOL``), not here.

Regret is facade time / the better of loop and strategy. The targets (issue "one decision engine
that measures"): regret <= 1.10 everywhere; facade <= 1.05x the loop where parallel loses; parallel
wherever the strategy wins by 1.3x or more. Work for ``joblib`` is pure Python (it holds the GIL);
work for ``threads`` is SHA-256 of a buffer (hashlib releases the GIL for buffers of 2 KiB and
more), so that each strategy is asked a question it can win. zlib, used before, allocates a
256 KiB state per call; its threads then contend in the kernel and scaled 0.9-1.7x from one
call to the next, which measured the allocator rather than the decision.

    python evaluation/facade_grid.py --quick     # cells up to 3 s of serial work
    python evaluation/facade_grid.py             # cells up to 60 s

Writes ``evaluation/results/facade_grid.json`` and a heat map ``facade_grid.png`` beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ce_parallel import ParallelConfig, ParallelFacade, create_executor
from ce_parallel.costs import MEMORY

COSTS_S = (1e-6, 30e-6, 300e-6, 3e-3, 30e-3)
COUNTS = (10, 100, 1_000, 10_000)
STRATEGIES = ("joblib", "threads")
RESULTS = Path(__file__).parent / "results"


def _spin(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i
    return total


def _calibrate_spin() -> float:
    """Loop iterations per second of ``_spin`` on this machine (median of 5)."""
    rates = []
    for _ in range(5):
        started = time.perf_counter()
        _spin(200_000)
        rates.append(200_000 / (time.perf_counter() - started))
    return statistics.median(rates)


def _calibrate_hash() -> float:
    """Bytes per second SHA-256 digests a pseudo-random buffer at (median of 5)."""
    data = os.urandom(1 << 22)
    rates = []
    for _ in range(5):
        started = time.perf_counter()
        hashlib.sha256(data).digest()
        rates.append(len(data) / (time.perf_counter() - started))
    return statistics.median(rates)


class Spin:
    """A pure-Python item of about ``cost`` seconds (picklable, a new object per cell)."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def __call__(self, x: int) -> int:
        return _spin(self.iterations) + x


class Digest:
    """A GIL-releasing item of about ``cost`` seconds: SHA-256 of a buffer of the right size
    (below 2 KiB, about 1 us, hashlib keeps the GIL: such items are as small as work gets)."""

    def __init__(self, size: int) -> None:
        self.data = os.urandom(max(64, size))

    def __call__(self, x: int) -> int:
        return hashlib.sha256(self.data).digest()[0] + x


def _time(call: Callable[[], Any], floor_s: float = 0.05) -> float:
    """Seconds one call takes; calls shorter than ``floor_s`` are repeated and averaged."""
    started = time.perf_counter()
    call()
    took = time.perf_counter() - started
    if took >= floor_s:
        return took
    repeats = max(2, int(floor_s / max(took, 1e-7)))
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats


def run(quick: bool, repeats: int) -> dict[str, Any]:
    budget_s = 3.0 if quick else 60.0
    spin_rate, hash_rate = _calibrate_spin(), _calibrate_hash()
    cells: list[dict[str, Any]] = []
    for strategy in STRATEGIES:
        config = ParallelConfig(enabled=True, strategy=strategy)
        facade = ParallelFacade(config, environ={})
        forced = create_executor(config)
        try:
            # both pools up before the first cell: a hint that the work pays starts the facade's
            forced.map(abs, range(8))
            facade.map(abs, range(64), seconds_per_item=1.0)
            for cost in COSTS_S:
                for count in COUNTS:
                    serial = cost * count
                    cell: dict[str, Any] = {"strategy": strategy, "cost_s": cost, "count": count}
                    if serial > budget_s:
                        cell["skipped"] = f"{serial:.0f} s of serial work > {budget_s:.0f} s"
                        cells.append(cell)
                        continue
                    MEMORY.clear()  # every cell is a new function: the facade starts unknowing
                    fn: Callable[[int], int] = (
                        Spin(max(1, int(cost * spin_rate)))
                        if strategy == "joblib"
                        else Digest(int(cost * hash_rate))
                    )
                    items = list(range(count))
                    runners: dict[str, Callable[[], Any]] = {
                        "loop": lambda fn=fn, items=items: [fn(x) for x in items],
                        "strategy": lambda fn=fn, items=items, ex=forced: ex.map(fn, items),
                        "facade": lambda fn=fn, items=items, f=facade: f.map(fn, items),
                    }
                    started = time.perf_counter()
                    facade.map(fn, items)
                    cell["facade_first_s"] = time.perf_counter() - started
                    first = facade.last_decision
                    for name, call in runners.items():
                        if name != "facade":
                            call()  # warm-up
                    times: dict[str, list[float]] = {name: [] for name in runners}
                    names = list(runners)
                    for repeat in range(repeats):
                        # the order rotates: a runner that always followed the pool's run
                        # paid for its clean-up (its garbage, its threads winding down)
                        for name in names[repeat % 3 :] + names[: repeat % 3]:
                            times[name].append(_time(runners[name]))
                    med = {name: statistics.median(t) for name, t in times.items()}
                    decision = facade.last_decision
                    best = min(med["loop"], med["strategy"])
                    cell.update(
                        {
                            "median_s": med,
                            "regret": med["facade"] / best,
                            "facade_vs_loop": med["facade"] / med["loop"],
                            "strategy_speedup": med["loop"] / med["strategy"],
                            "first_decision": None if first is None else first.decision,
                            "first_cost_source": None if first is None else first.cost_source,
                            "decision": None if decision is None else decision.decision,
                            "reason": None if decision is None else decision.reason,
                            "cost_source": None if decision is None else decision.cost_source,
                        }
                    )
                    cells.append(cell)
                    print(
                        f"{strategy:8s} {cost * 1e6:8.0f} us x {count:6d}: regret "
                        f"{cell['regret']:.2f}, facade/loop {cell['facade_vs_loop']:.2f}, "
                        f"strategy {cell['strategy_speedup']:.2f}x, "
                        f"{cell['decision']} ({cell['reason']}, {cell['cost_source']})",
                        flush=True,
                    )
        finally:
            facade.close()
            forced.shutdown()
    return {
        "mode": "quick" if quick else "full",
        "repeats": repeats,
        "budget_s": budget_s,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_start_end": None,
        },
        "calibration": {"spin_iterations_per_s": spin_rate, "sha256_bytes_per_s": hash_rate},
        "cells": cells,
        "summary": summarise(cells),
    }


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """How the targets fared: worst regret, worst facade/loop where parallel loses, misses."""
    ran = [c for c in cells if "regret" in c]
    loses = [c for c in ran if c["strategy_speedup"] < 1.0]
    wins = [c for c in ran if c["strategy_speedup"] >= 1.3]
    return {
        "cells_run": len(ran),
        "worst_regret": max((c["regret"] for c in ran), default=None),
        "cells_over_1_10": [
            (c["strategy"], c["cost_s"], c["count"]) for c in ran if c["regret"] > 1.10
        ],
        "worst_facade_vs_loop_where_parallel_loses": max(
            (c["facade_vs_loop"] for c in loses), default=None
        ),
        "serial_where_strategy_wins_1_3x": [
            (c["strategy"], c["cost_s"], c["count"]) for c in wins if c["decision"] != "parallel"
        ],
    }


def plot(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(STRATEGIES), figsize=(6 * len(STRATEGIES), 4.6))
    for ax, strategy in zip(axes, STRATEGIES, strict=True):
        grid = [[float("nan")] * len(COUNTS) for _ in COSTS_S]
        labels = [[""] * len(COUNTS) for _ in COSTS_S]
        for c in data["cells"]:
            if c["strategy"] != strategy:
                continue
            i, j = COSTS_S.index(c["cost_s"]), COUNTS.index(c["count"])
            if "regret" in c:
                grid[i][j] = c["regret"]
                mark = "P" if c["decision"] == "parallel" else "S"
                labels[i][j] = f"{c['regret']:.2f}\n{mark} {c['strategy_speedup']:.1f}x"
            else:
                labels[i][j] = "not run"
        image = ax.imshow(grid, cmap="RdYlGn_r", vmin=0.9, vmax=1.5, aspect="auto")
        for i in range(len(COSTS_S)):
            for j in range(len(COUNTS)):
                ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(COUNTS)), [f"{n:,}" for n in COUNTS])
        ax.set_yticks(range(len(COSTS_S)), [f"{c * 1e6:g} us" for c in COSTS_S])
        ax.set_xlabel("items per map")
        ax.set_ylabel("cost per item")
        ax.set_title(f"facade regret, strategy={strategy!r}")
        fig.colorbar(image, ax=ax, label="facade / best of loop and strategy")
    fig.suptitle(
        "P/S: the facade's decision; Nx: the strategy's speed-up over the loop "
        f"({data['mode']} mode, medians of {data['repeats']})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="cells up to 3 s of serial work")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "facade_grid.json")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    data = run(args.quick, args.repeats)
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    data["machine"]["loadavg_start_end"] = [load_start, load_end]
    args.out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    plot(data, args.out.with_suffix(".png"))
    print(json.dumps(data["summary"], indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
