"""Explain a random forest with calibrated-explanations, serially and on ce-parallel's pools.

The only change an existing calibrated-explanations program needs is the import of
``ParallelConfig`` and ``ParallelExecutor``; the explainer must use the instance-parallel plugins,
the only ones through which calibrated-explanations 1.0.2 hands work to an executor.

    python examples/calibrated_explanations_parallel.py            # 200 rows, 100 trees
    python examples/calibrated_explanations_parallel.py --quick    # a few seconds
    CE_PARALLEL_TELEMETRY=/tmp/ce.jsonl python examples/calibrated_explanations_parallel.py
        # also appends every telemetry record to /tmp/ce.jsonl (read it: ce-parallel report)

Needs the ``ce`` extra: ``pip install 'ce-parallel[ce]'``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from typing import Any

import numpy as np
from calibrated_explanations import CalibratedExplainer
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

from ce_parallel.compat.calibrated_explanations import ParallelConfig, ParallelExecutor

INSTANCE_PLUGINS = {
    "factual_plugin": "core.explanation.factual.instance_parallel",
    "alternative_plugin": "core.explanation.alternative.instance_parallel",
}


def explanation_values(explanations: Any) -> list[tuple[Any, ...]]:
    """The numbers and rules of each explanation (the batch-wide probability table aside)."""
    return [
        (
            item.feature_weights,
            item.feature_predict,
            {k: v for k, v in item.prediction.items() if k != "__full_probabilities__"},
            item.rules,
            item.binned,
        )
        for item in explanations.explanations
    ]


def run(explainer: CalibratedExplainer, x: Any) -> tuple[float, list[Any], list[Any]]:
    """Seconds for explain_factual + explore_alternatives, and both sets of values."""
    started = time.perf_counter()
    factual = explainer.explain_factual(x)
    alternatives = explainer.explore_alternatives(x)
    seconds = time.perf_counter() - started
    return seconds, explanation_values(factual), explanation_values(alternatives)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 rows, 10 trees, 10 features")
    parser.add_argument("--strategy", default="processes", help="threads, processes, joblib, ...")
    args = parser.parse_args(argv)
    rows, trees, features, chunk = (40, 10, 10, 10) if args.quick else (200, 100, 30, 100)

    x, y = load_breast_cancer(return_X_y=True)
    x = x[:, :features]
    x_rest, x_test, y_rest, _ = train_test_split(x, y, test_size=rows, random_state=0)
    x_fit, x_cal, y_fit, y_cal = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0)
    model = RandomForestClassifier(n_estimators=trees, random_state=0).fit(x_fit, y_fit)

    # calibrated-explanations takes some values of an explanation from the chunk of rows it is
    # explained in, so the serial reference runs the same chunks, one after another.
    telemetry_path = os.environ.get("CE_PARALLEL_TELEMETRY") or None
    serial_executor = ParallelExecutor(
        ParallelConfig(
            enabled=True,
            strategy="sequential",
            instance_chunk_size=chunk,
            telemetry_path=telemetry_path,
        )
    )
    executor = ParallelExecutor(
        ParallelConfig(
            enabled=True,
            strategy=args.strategy,
            instance_chunk_size=chunk,
            telemetry_path=telemetry_path,
        )
    )
    serial = CalibratedExplainer(
        model,
        x_cal,
        y_cal,
        mode="classification",
        perf_parallel=serial_executor,
        **INSTANCE_PLUGINS,
    )
    parallel = CalibratedExplainer(
        model, x_cal, y_cal, mode="classification", perf_parallel=executor, **INSTANCE_PLUGINS
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # calibrated-explanations' notices on chunked runs
            serial_s, factual, alternatives = run(serial, x_test)
            cold_s, _, _ = run(parallel, x_test)  # starts the pool
            warm_s, p_factual, p_alternatives = run(parallel, x_test)  # reuses it
        np.testing.assert_equal(p_factual, factual)
        np.testing.assert_equal(p_alternatives, alternatives)
    finally:
        executor.shutdown()

    print(f"{rows} rows, {features} features, random forest of {trees} trees, {chunk} rows a task")
    print("explain_factual + explore_alternatives:")
    print(f"  serial                      {serial_s:6.2f} s")
    print(f"  {args.strategy:<10} first call      {cold_s:6.2f} s (starts the pool)")
    print(
        f"  {args.strategy:<10} next call       {warm_s:6.2f} s ({serial_s / warm_s:.2f}x serial)"
    )
    print(f"explanations identical: yes ({len(factual)} factual, {len(alternatives)} alternative)")
    print("executor metrics:", executor.metrics.snapshot())


if __name__ == "__main__":
    main()
