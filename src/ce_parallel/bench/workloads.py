"""The canonical workloads of the benchmark.

Every workload is a module-level function (so process pools can pickle it by reference) applied
to deterministic items: the same items and the same results on every run and in every process.
Domain workloads bind their fitted model or data with ``functools.partial``, which is exactly
how a user hands shared state to a pool, so its pickling cost is part of what is measured.

Sizes come in three modes:

- ``full``: the reference sizes, each ~0.5-1.6 s serial;
- ``quick``: fewer items, and smaller models for the domain workloads (~0.1-0.2 s serial each;
  the coarse workload keeps its 100 ms items, ~0.45 s), so the whole ablation runs in about a
  minute on 2 quiet cores;
- ``tiny``: a few items each, for the smoke test; its timings mean nothing.

Per-item costs are stated for the reference machine (2 cores, Python 3.11, OpenBLAS capped to one
thread); they scale with the CPU but their ratios do not.

NumPy, scikit-learn: imported inside the functions that need them, never at module import.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

MODES: tuple[str, ...] = ("tiny", "quick", "full")

#: Iterations of the pure-Python loop in ``spin`` that take ~5 ms on the reference machine
#: (measured: ~190 ns per iteration on CPython 3.11).
SPIN_ITERATIONS_5MS = 26_000
#: Items are 8 MB: 1,000,000 float64 values.
PAYLOAD_FLOATS = 1_000_000
#: Side of the square matrices of the NumPy workload (one 256x256 matmul ~1.5 ms, 1 thread).
MATRIX_SIDE = 256
#: Features of the synthetic classification data of the domain workloads.
DOMAIN_FEATURES = 20


@dataclass(frozen=True)
class Case:
    """One built workload: the function, the items, and what a serial loop over them costs."""

    fn: Callable[[Any], Any]
    items: list[Any]
    size: str


@dataclass(frozen=True)
class Workload:
    """A named workload, the packages it needs, and its size in each mode.

    ``build(**sizes[mode])`` returns a ``Case``; its items and results are deterministic.
    """

    name: str
    description: str
    build: Callable[..., Case]
    sizes: dict[str, dict[str, int]]
    requires: tuple[str, ...] = field(default=())

    def missing(self) -> list[str]:
        """The required packages that cannot be imported here (empty when it can run)."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    def case(self, mode: str) -> Case:
        """Build the workload at the size of ``mode`` (one of ``MODES``)."""
        if mode not in self.sizes:
            raise ValueError(f"mode={mode!r} is not accepted; expected one of {', '.join(MODES)}")
        return self.build(**self.sizes[mode])


# --- the functions the pools run ------------------------------------------------------------


def square(x: int) -> int:
    """Tiny dispatch: a trivial item costing ~0.1 us, so any per-item overhead dominates."""
    return x * x


def spin(seed: int, iterations: int = SPIN_ITERATIONS_5MS) -> int:
    """Pure-Python CPU work holding the GIL: a linear congruential loop of ``iterations`` steps."""
    acc = seed
    for i in range(iterations):
        acc = (acc * 1103515245 + 12345 + i) & 0xFFFFFFFF
    return acc


def matmul_chain(seed: int, side: int = MATRIX_SIDE, steps: int = 8) -> float:
    """NumPy work that releases the GIL: ``steps`` matrix products of a seeded ``side`` matrix."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((side, side)) / math.sqrt(side)
    b = a
    for _ in range(steps):
        b = a @ b
    return float(np.trace(b))


def payload_checksum(array: Any) -> float:
    """Large payload: one pass over an 8 MB array (~1 ms), so moving the array dominates."""
    return float(array.sum())


def sleep_io(seconds_ms: int) -> int:
    """I/O-bound: sleep (releases the GIL like a socket or disk wait) and return the input."""
    time.sleep(seconds_ms / 1000.0)
    return seconds_ms


def perturb_feature(model: Any, x: Any, values: Sequence[float], feature: int) -> float:
    """Explanation: mean absolute change of ``predict_proba`` when one feature is perturbed.

    This is the inner loop of a perturbation explainer: one item per feature, each calling the
    model once per perturbation value.
    """
    import numpy as np

    base = model.predict_proba(x)[:, 1]
    total = 0.0
    for value in values:
        perturbed = x.copy()
        perturbed[:, feature] = value
        total += float(np.abs(model.predict_proba(perturbed)[:, 1] - base).mean())
    return total / len(values)


def bootstrap_calibrator(scores: Any, labels: Any, grid: Any, seed: int) -> Any:
    """Calibration uncertainty: fit an isotonic calibrator on one bootstrap resample.

    Returns the calibrated probabilities on ``grid`` (one row of a bootstrap band).
    """
    import numpy as np
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(scores), size=len(scores))
    calibrator = IsotonicRegression(out_of_bounds="clip").fit(scores[idx], labels[idx])
    return calibrator.predict(grid)


def cv_fold(x: Any, y: Any, folds: int, trees: int, fold: int) -> float:
    """Cross-validation: fit a random forest on all folds but ``fold`` and score on ``fold``."""
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

    test = np.arange(len(y)) % folds == fold
    model = RandomForestClassifier(n_estimators=trees, max_depth=8, random_state=fold, n_jobs=1)
    model.fit(x[~test], y[~test])
    return float(model.score(x[test], y[test]))


# --- builders -------------------------------------------------------------------------------


def _tiny(n: int) -> Case:
    return Case(square, list(range(n)), f"{n:,} x x*x (~0.1 us)")


def _cpu(n: int, ms: int) -> Case:
    iterations = SPIN_ITERATIONS_5MS * ms // 5
    fn = functools.partial(spin, iterations=iterations)
    return Case(fn, list(range(n)), f"{n} x ~{ms} ms pure Python")


def _numpy(n: int, steps: int) -> Case:
    fn = functools.partial(matmul_chain, side=MATRIX_SIDE, steps=steps)
    return Case(fn, list(range(n)), f"{n} x {steps} matmuls {MATRIX_SIDE}x{MATRIX_SIDE}")


def _payload(n: int, floats: int) -> Case:
    import numpy as np

    items = [np.random.default_rng(i).random(floats) for i in range(n)]
    mb = floats * 8 / 1e6
    return Case(payload_checksum, items, f"{n} x {mb:g} MB float64 arrays")


def _sleep(n: int, ms: int) -> Case:
    return Case(sleep_io, [ms] * n, f"{n} x sleep {ms} ms")


def _classification(rows: int) -> tuple[Any, Any]:
    from sklearn.datasets import make_classification

    return make_classification(
        n_samples=rows, n_features=DOMAIN_FEATURES, n_informative=8, random_state=0
    )


def _perturbation(rows: int, trees: int, values: int) -> Case:
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier

    x, y = _classification(1000 + rows)
    model = RandomForestClassifier(n_estimators=trees, max_depth=8, random_state=0, n_jobs=1)
    model.fit(x[:1000], y[:1000])
    grid = [float(v) for v in np.linspace(-2.0, 2.0, values)]
    fn = functools.partial(perturb_feature, model, x[1000:], grid)
    size = f"{DOMAIN_FEATURES} features x {values} values, RF({trees}) on {rows} rows"
    return Case(fn, list(range(DOMAIN_FEATURES)), size)


def _bootstrap(n: int, points: int) -> Case:
    import numpy as np

    rng = np.random.default_rng(0)
    scores = rng.random(points)
    labels = (rng.random(points) < scores).astype(float)
    grid = np.linspace(0.0, 1.0, 101)
    fn = functools.partial(bootstrap_calibrator, scores, labels, grid)
    return Case(fn, list(range(n)), f"{n} resamples x isotonic on {points:,} points")


def _cv(folds: int, rows: int, trees: int) -> Case:
    x, y = _classification(rows)
    fn = functools.partial(cv_fold, x, y, folds, trees)
    return Case(fn, list(range(folds)), f"{folds} folds, RF({trees}) on {rows:,} rows")


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "tiny",
        "Dispatch overhead: 10,000 trivial items; any pool loses to the loop.",
        _tiny,
        {"tiny": {"n": 2_000}, "quick": {"n": 10_000}, "full": {"n": 10_000}},
    ),
    Workload(
        "cpu_fine",
        "Pure-Python CPU-bound, fine-grained: ~5 ms items holding the GIL.",
        _cpu,
        {
            "tiny": {"n": 8, "ms": 1},
            "quick": {"n": 40, "ms": 5},
            "full": {"n": 200, "ms": 5},
        },
    ),
    Workload(
        "cpu_coarse",
        "Pure-Python CPU-bound, coarse: ~100 ms items holding the GIL.",
        _cpu,
        {
            "tiny": {"n": 4, "ms": 5},
            "quick": {"n": 4, "ms": 100},
            "full": {"n": 16, "ms": 100},
        },
    ),
    Workload(
        "numpy",
        "NumPy matmuls that release the GIL, BLAS capped to 1 thread per worker. With default "
        "BLAS threads (2 here) the serial loop is ~2x faster and process pools oversubscribe "
        "(2 workers x 2 BLAS threads ran ~4x slower than serial); run with --blas-threads 0 "
        "to measure that.",
        _numpy,
        {
            "tiny": {"n": 4, "steps": 1},
            "quick": {"n": 12, "steps": 8},
            "full": {"n": 48, "steps": 8},
        },
        ("numpy",),
    ),
    Workload(
        "payload",
        "Large payloads: 8 MB arrays per item, trivial work; moving the data is the cost.",
        _payload,
        {
            "tiny": {"n": 4, "floats": PAYLOAD_FLOATS // 8},
            "quick": {"n": 8, "floats": PAYLOAD_FLOATS},
            "full": {"n": 32, "floats": PAYLOAD_FLOATS},
        },
        ("numpy",),
    ),
    Workload(
        "sleep",
        "I/O-bound: 10 ms sleeps that release the GIL.",
        _sleep,
        {
            "tiny": {"n": 8, "ms": 2},
            "quick": {"n": 16, "ms": 10},
            "full": {"n": 64, "ms": 10},
        },
    ),
    Workload(
        "perturbation",
        "Explanation: per-feature perturbation of a random forest's predict_proba.",
        _perturbation,
        {
            "tiny": {"rows": 50, "trees": 5, "values": 1},
            "quick": {"rows": 300, "trees": 50, "values": 1},
            "full": {"rows": 500, "trees": 50, "values": 8},
        },
        ("numpy", "sklearn"),
    ),
    Workload(
        "bootstrap",
        "Calibration: isotonic calibrator refit on bootstrap resamples.",
        _bootstrap,
        {
            "tiny": {"n": 8, "points": 500},
            "quick": {"n": 40, "points": 5_000},
            "full": {"n": 300, "points": 5_000},
        },
        ("numpy", "sklearn"),
    ),
    Workload(
        "cv",
        "Model selection: cross-validation folds, one random forest fit per fold.",
        _cv,
        {
            "tiny": {"folds": 2, "rows": 200, "trees": 5},
            "quick": {"folds": 4, "rows": 1_000, "trees": 10},
            "full": {"folds": 8, "rows": 1_500, "trees": 40},
        },
        ("numpy", "sklearn"),
    ),
)

WORKLOAD_NAMES: tuple[str, ...] = tuple(w.name for w in WORKLOADS)


def get_workload(name: str) -> Workload:
    """The workload called ``name``; a ``ValueError`` lists the accepted names otherwise."""
    for workload in WORKLOADS:
        if workload.name == name:
            return workload
    raise ValueError(f"workload {name!r} is unknown; expected one of {', '.join(WORKLOAD_NAMES)}")


__all__ = ["MODES", "WORKLOADS", "WORKLOAD_NAMES", "Case", "Workload", "get_workload"]
