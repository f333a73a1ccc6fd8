"""calibrated-explanations ``explain_factual``: serial vs its own executor vs ce-parallel's adapter.

The workload: a random forest on scikit-learn's breast-cancer data, explain_factual on 200 rows
(results in evaluation/results/ce_compat.md). Every runner is an explainer built once; each
keeps its pool across calls, so after one warm-up call the rounds measure warm calls. Runners
are interleaved round by round so that a busy machine slows them alike; the table shows the
median of the rounds and the first (cold) call.

    python evaluation/ce_compat_bench.py --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

INSTANCE_PLUGINS = {
    "factual_plugin": "core.explanation.factual.instance_parallel",
    "alternative_plugin": "core.explanation.alternative.instance_parallel",
}


def build(rows: int, trees: int) -> tuple[Any, Any, Any, Any]:
    """Model, calibration data and the rows to explain (deterministic)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x_rest, x_test, y_rest, _ = train_test_split(x, y, test_size=rows, random_state=0)
    x_fit, x_cal, y_fit, y_cal = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0)
    model = RandomForestClassifier(n_estimators=trees, random_state=0).fit(x_fit, y_fit)
    return model, x_cal, y_cal, x_test


def runners(model: Any, x_cal: Any, y_cal: Any, names: list[str]) -> dict[str, tuple[Any, Any]]:
    """name -> (explainer, executor or None)."""
    from calibrated_explanations import CalibratedExplainer
    from calibrated_explanations.parallel import ParallelConfig as TheirConfig
    from calibrated_explanations.parallel import ParallelExecutor as TheirExecutor

    from ce_parallel.compat.calibrated_explanations import ParallelConfig, ParallelExecutor

    out: dict[str, tuple[Any, Any]] = {
        "serial": (CalibratedExplainer(model, x_cal, y_cal, mode="classification"), None)
    }
    for name in names:
        owner, _, strategy = name.partition(":")
        if owner == "ce":
            executor: Any = TheirExecutor(TheirConfig(enabled=True, strategy=strategy))
        else:
            executor = ParallelExecutor(ParallelConfig(enabled=True, strategy=strategy))
        explainer = CalibratedExplainer(
            model, x_cal, y_cal, mode="classification", perf_parallel=executor, **INSTANCE_PLUGINS
        )
        out[name] = (explainer, executor)
    return out


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--runners",
        nargs="+",
        default=["ours:processes", "ours:threads", "ours:joblib", "ce:processes", "ce:threads"],
        help="owner:strategy, owner 'ours' (ce-parallel adapter) or 'ce' (its own executor)",
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # calibrated-explanations warns on every call it chunks
    load_before = os.getloadavg()
    model, x_cal, y_cal, x_test = build(args.rows, args.trees)
    table = runners(model, x_cal, y_cal, args.runners)
    first = {name: timed(lambda e=e: e.explain_factual(x_test)) for name, (e, _) in table.items()}
    times: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(args.rounds):
        for name, (explainer, _) in table.items():
            times[name].append(timed(lambda e=explainer: e.explain_factual(x_test)))
    serial = statistics.median(times["serial"])
    print(f"explain_factual, {args.rows} rows, random forest of {args.trees} trees,")
    print(f"median of {args.rounds} warm rounds (runners interleaved)")
    load_after = os.getloadavg()
    print(
        f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'runner':<16}{'first s':>9}{'median s':>10}{'min s':>8}{'x serial':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:<16}{first[name]:>9.2f}{median:>10.2f}{min(values):>8.2f}"
            f"{serial / median:>10.2f}"
        )
    for _, executor in table.values():
        if executor is not None and hasattr(executor, "shutdown"):
            executor.shutdown()


if __name__ == "__main__":
    main()
