"""A calibration sweep on one node: every (model, calibration method, seed) setting is one item.

Each item fits a classifier, calibrates it (Platt scaling or isotonic regression, 3-fold) and
scores the calibrated probabilities on held-out data (Brier score, log loss, expected
calibration error). The items run through ``ce_parallel.ParallelFacade``, configured for the
process strategy; the operator's ``CE_PARALLEL`` / ``CE_PARALLEL_FULL`` variables decide what
actually runs, and the decision is printed and written to ``CE_PARALLEL_TELEMETRY``.

    python calibration_sweep.py --local            # a small sweep, here, in a few seconds
    sbatch sbatch_calibration_sweep.sh             # the full sweep on one SLURM node

The CSV goes to ``--out``, else into ``--out-dir``: by default the current directory on the
cluster and a new temporary directory with ``--local`` (a demo leaves nothing behind).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from ce_parallel import ParallelConfig, ParallelFacade, cpu_budget

#: Equal-width probability bins of the expected calibration error.
ECE_BINS = 15
#: Share of the data held out for scoring.
TEST_FRACTION = 0.25
CALIBRATION_METHODS = ("sigmoid", "isotonic")
CALIBRATION_FOLDS = 3
#: Fewest settings worth a pool: one item is a full fit, so two already keep two workers busy.
MIN_ITEMS = 2


@dataclass(frozen=True)
class Scale:
    """How big the sweep is: the full sweep for a node, a small one for ``--local``."""

    samples: int
    features: int
    trees: int
    seeds: int


FULL = Scale(samples=20_000, features=40, trees=200, seeds=5)
LOCAL = Scale(samples=400, features=8, trees=5, seeds=1)

#: Base models of the sweep: (name, random-forest max_depth or None for naive Bayes).
MODELS: tuple[tuple[str, int | None], ...] = (
    ("naive_bayes", None),
    ("forest_depth_4", 4),
    ("forest_depth_8", 8),
    ("forest_depth_16", 16),
)


def sweep_grid(scale: Scale) -> list[dict[str, Any]]:
    """Every setting of the sweep, one dict per item, in a fixed order."""
    return [
        {"model": name, "depth": depth, "method": method, "seed": seed, "scale": scale}
        for name, depth in MODELS
        for method in CALIBRATION_METHODS
        for seed in range(scale.seeds)
    ]


def expected_calibration_error(y_true: Any, prob: Any, bins: int = ECE_BINS) -> float:
    """Weighted mean |accuracy - confidence| over equal-width bins of the positive-class prob."""
    import numpy as np

    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            error += mask.mean() * abs(y_true[mask].mean() - prob[mask].mean())
    return float(error)


def evaluate_setting(setting: dict[str, Any]) -> dict[str, Any]:
    """Fit, calibrate and score one setting; the data depend only on the setting's seed."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import brier_score_loss, log_loss
    from sklearn.model_selection import train_test_split
    from sklearn.naive_bayes import GaussianNB

    scale: Scale = setting["scale"]
    started = time.perf_counter()
    x, y = make_classification(
        n_samples=scale.samples,
        n_features=scale.features,
        n_informative=scale.features // 2,
        random_state=setting["seed"],
    )
    x_fit, x_test, y_fit, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=setting["seed"], stratify=y
    )
    if setting["depth"] is None:
        base: Any = GaussianNB()
    else:
        # n_jobs=1: the sweep is the parallel level; nested pools would oversubscribe the node
        base = RandomForestClassifier(
            n_estimators=scale.trees,
            max_depth=setting["depth"],
            random_state=setting["seed"],
            n_jobs=1,
        )
    model = CalibratedClassifierCV(base, method=setting["method"], cv=CALIBRATION_FOLDS)
    model.fit(x_fit, y_fit)
    prob = model.predict_proba(x_test)[:, 1]
    return {
        "model": setting["model"],
        "method": setting["method"],
        "seed": setting["seed"],
        "brier": round(float(brier_score_loss(y_test, prob)), 6),
        "log_loss": round(float(log_loss(y_test, prob)), 6),
        "ece": round(expected_calibration_error(y_test, prob), 6),
        "seconds": round(time.perf_counter() - started, 3),
        "pid": os.getpid(),
    }


def run_sweep(scale: Scale, facade: ParallelFacade) -> list[dict[str, Any]]:
    """Run every setting; the first one runs here first, so the decision knows an item's cost."""
    grid = sweep_grid(scale)
    # imported here first, so that the pilot times the work rather than the import
    import sklearn.calibration
    import sklearn.ensemble  # noqa: F401

    started = time.perf_counter()
    pilot = evaluate_setting(grid[0])
    per_item = max(time.perf_counter() - started, 1e-6)
    rest = facade.map(evaluate_setting, grid[1:], seconds_per_item=per_item)
    return [pilot, *rest]


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out`` and ``--out-dir``, shared by the sweep's scripts."""
    parser.add_argument("--out", help="CSV of every setting (default: a name in --out-dir)")
    parser.add_argument(
        "--out-dir",
        help="folder of the CSV (default: the current folder; a new temporary one with --local)",
    )


def output_path(args: argparse.Namespace, name: str) -> str:
    """Where the CSV goes: ``--out`` as given, else ``name`` in ``--out-dir`` (created)."""
    if args.out:
        return str(args.out)
    if args.out_dir:
        folder = args.out_dir
    elif args.local:
        folder = tempfile.mkdtemp(prefix="ce-parallel-sweep-")
    else:
        folder = os.getcwd()
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true", help="a small sweep that runs anywhere")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    scale = LOCAL if args.local else FULL
    out = output_path(args, "calibration_sweep.csv")

    budget = cpu_budget()
    print(f"CPU budget: {budget.count} (limited by {budget.limited_by})")
    # The code asks for processes; CE_PARALLEL (e.g. "off", "workers=8") and CE_PARALLEL_FULL
    # from the job script are applied on top, so the operator has the last word. Each item is
    # a whole model fit, not one instance: the facade's "too few / too tiny" thresholds, made
    # for per-instance work, are lowered to 2 items; its pool-start rule still applies, fed
    # with the measured cost of one item. This script is the application, not a library called
    # by one, so it opts in to the process strategy (outside the conservative subset) itself.
    config = ParallelConfig(
        enabled=True,
        strategy="processes",
        full_matrix=True,
        min_instances_for_parallel=MIN_ITEMS,
        tiny_workload_threshold=MIN_ITEMS,
    )
    with ParallelFacade.from_env(config) as facade:
        started = time.perf_counter()
        rows = run_sweep(scale, facade)
        wall = time.perf_counter() - started
        decision = facade.last_decision
    assert decision is not None
    print(
        f"decision: {decision.decision} on {decision.strategy} x {decision.workers} "
        f"({decision.reason}: {decision.detail})"
    )
    report(rows, out, f"{wall:.1f} s on {len({row['pid'] for row in rows})} process(es)")
    return 0


def report(rows: list[dict[str, Any]], out: str, where: str) -> None:
    """Write the CSV and print the best setting (``where``: how and where the sweep ran)."""
    write_csv(rows, out)
    best = min(rows, key=lambda row: row["ece"])
    print(
        f"{len(rows)} settings in {where}; lowest ECE {best['ece']:.4f}: {best['model']} + "
        f"{best['method']} (seed {best['seed']}); results in {out}"
    )
    telemetry = os.environ.get("CE_PARALLEL_TELEMETRY")
    if telemetry:
        print(f"telemetry records appended to {telemetry}")


if __name__ == "__main__":
    sys.exit(main())
