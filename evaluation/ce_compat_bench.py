"""calibrated-explanations: serial vs its own executor vs ce-parallel's adapter.

Two workloads: ``--data breast_cancer`` (a random forest on scikit-learn's breast-cancer data,
the earlier table in evaluation/results/ce_compat.md) and ``--data synthetic``, the
configuration of the data-movement targets: ``make_classification(3000, 20)``, a random forest
of 50 trees fitted on 1,000 rows, 1,000 calibration rows, explaining 200 or 1,000 of the rest.
Every runner is an explainer built once; each keeps its pool across calls. Its first
``COLD_CALLS`` calls are timed one after another (the facade may keep the first call serial and
start its pool on the second); the rounds after them are warm. Runners are interleaved round by
round so that a busy machine slows them alike; the table shows the first call, the worst of
the cold calls and the median of the rounds. Every runner's feature weights are compared with
the serial explainer's.

    python evaluation/ce_compat_bench.py --rounds 7
    python evaluation/ce_compat_bench.py --data synthetic --trees 50 --rows 200 1000 \
        --methods explain_factual explore_alternatives --rounds 5 \
        --json evaluation/results/ce_compat.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

#: A user's first calls, timed one after another before the warm rounds: a pool started on
#: the first or second call (and warmed up while the caller works) shows within them.
COLD_CALLS = 3

INSTANCE_PLUGINS = {
    "factual_plugin": "core.explanation.factual.instance_parallel",
    "alternative_plugin": "core.explanation.alternative.instance_parallel",
}


def build(data: str, rows: int, trees: int) -> tuple[Any, Any, Any, Any]:
    """Model, calibration data and the rows to explain (deterministic)."""
    from sklearn.ensemble import RandomForestClassifier

    if data == "synthetic":
        from sklearn.datasets import make_classification

        x, y = make_classification(3000, 20, random_state=0)
        model = RandomForestClassifier(n_estimators=trees, random_state=0)
        model.fit(x[:1000], y[:1000])
        return model, x[1000:2000], y[1000:2000], x[2000 : 2000 + rows]
    from sklearn.datasets import load_breast_cancer
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


def weights(result: Any) -> list[Any]:
    """The feature weights of every explanation, to compare runners with."""
    return [e.feature_weights for e in result.explanations]


def same_weights(a: list[Any], b: list[Any]) -> bool:
    import numpy as np

    if len(a) != len(b):
        return False
    for wa, wb in zip(a, b, strict=True):
        if set(wa) != set(wb):
            return False
        for key in wa:
            if not np.array_equal(np.asarray(wa[key]), np.asarray(wb[key])):
                return False
    return True


def run_case(args: argparse.Namespace, rows: int, method: str) -> dict[str, Any]:
    """One (rows, method) case: every runner cold, then ``args.rounds`` warm rounds."""
    model, x_cal, y_cal, x_test = build(args.data, rows, args.trees)
    table = runners(model, x_cal, y_cal, args.runners)
    cold: dict[str, list[float]] = {}
    results: dict[str, Any] = {}
    for name, (explainer, executor) in table.items():
        # a user's first calls, one after another: the pool starts (and warms up) within them
        cold[name] = []
        for _ in range(COLD_CALLS):
            started = time.perf_counter()
            results[name] = getattr(explainer, method)(x_test)
            cold[name].append(time.perf_counter() - started)
        # warm-ups still running must not slow the next runner's calls
        core = getattr(executor, "executor", None)
        if core is not None and hasattr(core, "wait_until_warm"):
            core.wait_until_warm(120)
    first = {name: calls[0] for name, calls in cold.items()}
    reference = weights(results["serial"])
    correct = {name: same_weights(reference, weights(r)) for name, r in results.items()}
    times: dict[str, list[float]] = {name: [] for name in table}
    parallel_rounds: dict[str, int] = {name: 0 for name in table}
    names = list(table)
    for round_ in range(args.rounds):
        # order rotated each round: no runner always follows another one's pool
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            explainer = table[name][0]
            times[name].append(timed(lambda e=explainer: getattr(e, method)(x_test)))
            decision = getattr(table[name][1], "last_decision", None)
            parallel_rounds[name] += bool(decision is not None and decision.use_parallel)
    for _, executor in table.values():
        if executor is not None and hasattr(executor, "shutdown"):
            executor.shutdown()
    serial = statistics.median(times["serial"])
    cold_serial = first["serial"]
    return {
        "rows": rows,
        "method": method,
        "runners": {
            name: {
                "first_s": round(first[name], 4),
                "median_s": round(statistics.median(values), 4),
                "min_s": round(min(values), 4),
                "speedup_vs_serial": round(serial / statistics.median(values), 3),
                "first_vs_serial_first": round(first[name] / cold_serial, 3),
                "first_vs_serial_median": round(first[name] / serial, 3),
                "cold_calls_s": [round(t, 4) for t in cold[name]],
                "worst_cold_vs_serial_median": round(max(cold[name]) / serial, 3),
                # rounds the facade ran in parallel (ours only: their executor decides alone)
                "parallel_rounds": parallel_rounds[name] if name.startswith("ours:") else None,
                "same_feature_weights": correct[name],
            }
            for name, values in times.items()
        },
    }


def print_case(case: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\n{case['method']}, {case['rows']} rows ({args.data}), random forest of {args.trees} "
        f"trees, median of {args.rounds} warm rounds (runners interleaved)"
    )
    print(
        f"{'runner':<16}{'first s':>9}{'median s':>10}{'min s':>8}{'x serial':>10}"
        f"{'first/serial':>14}{'worst cold/serial':>19}{'weights':>9}"
    )
    for name, row in case["runners"].items():
        print(
            f"{name:<16}{row['first_s']:>9.2f}{row['median_s']:>10.2f}{row['min_s']:>8.2f}"
            f"{row['speedup_vs_serial']:>10.2f}{row['first_vs_serial_median']:>14.2f}"
            f"{row['worst_cold_vs_serial_median']:>19.2f}"
            f"{'same' if row['same_feature_weights'] else 'DIFFER':>9}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["breast_cancer", "synthetic"], default="breast_cancer")
    parser.add_argument("--rows", type=int, nargs="+", default=[200])
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["explain_factual"],
        choices=["explain_factual", "explore_alternatives"],
    )
    parser.add_argument(
        "--runners",
        nargs="+",
        default=["ours:processes", "ours:threads", "ours:joblib", "ce:processes", "ce:threads"],
        help="owner:strategy, owner 'ours' (ce-parallel adapter) or 'ce' (its own executor)",
    )
    parser.add_argument(
        "--warmup-caller-cpus",
        type=int,
        help="CPUs a pool's warm-ups leave to the caller (heuristics.WARMUP_CALLER_CPUS)",
    )
    parser.add_argument("--json", help="write the cases and the machine's facts here")
    parser.add_argument("--plot", help="write a bar chart of the speed-ups here (PNG)")
    args = parser.parse_args(argv)
    from ce_parallel import heuristics

    if args.warmup_caller_cpus is not None:
        heuristics.WARMUP_CALLER_CPUS = args.warmup_caller_cpus
    warnings.simplefilter("ignore")  # calibrated-explanations warns on every call it chunks
    load_before = os.getloadavg()
    cases = []
    for rows in args.rows:
        for method in args.methods:
            case = run_case(args, rows, method)
            print_case(case, args)
            cases.append(case)
    load_after = os.getloadavg()
    print(
        f"\nload average before {load_before[0]:.1f}, after {load_after[0]:.1f}, "
        f"{os.cpu_count()} CPUs"
    )
    if args.json:
        import json
        import platform

        import calibrated_explanations
        import sklearn

        facts = {
            "command": "python evaluation/ce_compat_bench.py " + " ".join(argv or sys.argv[1:]),
            "data": args.data,
            "trees": args.trees,
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "calibrated_explanations": calibrated_explanations.__version__,
            "scikit_learn": sklearn.__version__,
            "warmup_caller_cpus": heuristics.WARMUP_CALLER_CPUS,
            "load_average_before": round(load_before[0], 2),
            "load_average_after": round(load_after[0], 2),
        }
        with open(args.json, "w") as out:
            json.dump({"facts": facts, "cases": cases}, out, indent=1)
            out.write("\n")
    if args.plot:
        plot(cases, args.plot)


def plot(cases: list[dict[str, Any]], path: str) -> None:
    """Warm speed-up (bars) and first call (dots) against the serial explainer, per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in cases[0]["runners"] if n != "serial"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [i + k * width for i in range(len(cases))]
        ax.bar(xs, [c["runners"][name]["speedup_vs_serial"] for c in cases], width, label=name)
        ax.plot(
            xs,
            [1 / c["runners"][name]["first_vs_serial_median"] for c in cases],
            "k.",
            markersize=8,
        )
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    ax.set_xticklabels([f"{c['method']}\n{c['rows']} rows" for c in cases], fontsize=8)
    ax.set_ylabel("x serial (bars: warm median; dots: first call)")
    ax.set_title("calibrated-explanations through ce-parallel vs its own executor")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
