"""What moving data to and from process workers costs: the evidence behind two thresholds.

1. ``SMALL_ARRAY_PICKLE_BYTES``: pickling arrays of each size with protocol 5's own reduction
   and with ``ndarray.__reduce__`` (``ce_parallel.array_reduce``), dump and load per array;
   then a calibrated-explanations result (100 explanations, about 150 small arrays each) both
   ways, when calibrated-explanations and scikit-learn are installed.
2. ``SHARED_OBJECT_MIN_BYTES``: a ``processes`` map of 16 one-item chunks whose items all hold
   one object of each size, with the object shared once per worker (``shared_objects``) and
   pickled into every chunk (sharing switched off), pool warm, medians of the repeats.

    python evaluation/data_movement.py --out evaluation/results/data_movement.md
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import pickle
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ce_parallel import ParallelConfig, create_executor, heuristics
from ce_parallel.array_reduce import use_fast_arrays


def _dumps(value: Any, fast: bool) -> bytes:
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    if fast:
        use_fast_arrays(pickler)
    pickler.dump(value)
    return buffer.getvalue()


def _best(call: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.disable()
        try:
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        finally:
            gc.enable()
    return min(times)


def array_sizes(repeats: int) -> list[str]:
    lines = [
        "| array bytes | arrays | protocol 5 dump / load us per array | __reduce__ dump / load |",
        "|---:|---:|---:|---:|",
    ]
    for nbytes in (64, 1024, 16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024):
        count = max(8, min(20000, (64 * 1024 * 1024) // nbytes // 4))
        arrays = [np.random.default_rng(i).random(nbytes // 8) for i in range(count)]
        cells = []
        for fast in (False, True):
            blob = _dumps(arrays, fast)
            dump = _best(lambda f=fast, a=arrays: _dumps(a, f), repeats) / count * 1e6
            load = _best(lambda b=blob: pickle.loads(b), repeats) / count * 1e6
            cells.append(f"{dump:.2f} / {load:.2f}")
        lines.append(f"| {nbytes} | {count} | {cells[0]} | {cells[1]} |")
    return lines


def ce_result(repeats: int) -> list[str]:
    try:
        from calibrated_explanations import CalibratedExplainer
        from sklearn.datasets import make_classification
        from sklearn.ensemble import RandomForestClassifier
    except ImportError:
        return ["(calibrated-explanations or scikit-learn not installed: skipped)"]
    x, y = make_classification(3000, 20, random_state=0)
    model = RandomForestClassifier(n_estimators=50, random_state=0).fit(x[:1000], y[:1000])
    explainer = CalibratedExplainer(model, x[1000:2000], y[1000:2000], mode="classification")
    result = explainer.explain_factual(x[2000:2100])
    lines = ["| pickling | bytes | dump ms | load ms |", "|---|---:|---:|---:|"]
    for fast, label in ((False, "protocol 5"), (True, "array_reduce")):
        blob = _dumps(result, fast)
        dump = _best(lambda f=fast: _dumps(result, f), repeats) * 1e3
        load = _best(lambda b=blob: pickle.loads(b), repeats) * 1e3
        lines.append(f"| {label} | {len(blob)} | {dump:.1f} | {load:.1f} |")
    return lines


class Payload:
    """An object of a given pickled size that every item of a map holds."""

    def __init__(self, nbytes: int) -> None:
        self.blob = os.urandom(nbytes)


def _size_of(item: tuple[int, Payload]) -> int:
    return len(item[1].blob)


def shared_objects(repeats: int) -> list[str]:
    lines = [
        "| object bytes | shared ms | pickled per chunk ms | pickled / shared |",
        "|---:|---:|---:|---:|",
    ]
    executor = create_executor(ParallelConfig(enabled=True, strategy="processes", max_workers=2))
    saved = heuristics.SHARED_OBJECT_MIN_BYTES
    try:
        for nbytes in (4 * 1024, 16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024):
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(repeats):
                for share in (True, False):
                    # a new object each map: its file is written once, as for a changed model
                    items = [(i, payload) for payload in [Payload(nbytes)] for i in range(16)]
                    heuristics.SHARED_OBJECT_MIN_BYTES = 0 if share else 1 << 62
                    started = time.perf_counter()
                    executor.map(_size_of, items, chunksize=1)
                    times[share].append(time.perf_counter() - started)
            shared = statistics.median(times[True]) * 1e3
            pickled = statistics.median(times[False]) * 1e3
            lines.append(f"| {nbytes} | {shared:.1f} | {pickled:.1f} | {pickled / shared:.2f} |")
    finally:
        heuristics.SHARED_OBJECT_MIN_BYTES = saved
        executor.shutdown()
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", help="write the tables here (markdown)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    load_before = os.getloadavg()[0]
    sections = [
        "## Arrays, per array (best of the repeats)",
        *array_sizes(args.repeats),
        "",
        "## A calibrated-explanations result of 100 rows (best of the repeats)",
        *ce_result(args.repeats),
        "",
        "## An object in every item of 16 one-item chunks, processes, 2 workers (medians)",
        *shared_objects(args.repeats),
    ]
    load_after = os.getloadavg()[0]
    text = "\n".join(
        [
            "# Moving data to and from process workers",
            "",
            f"`python evaluation/data_movement.py --repeats {args.repeats}`; "
            f"{os.cpu_count()} CPUs, load average {load_before:.1f} before, "
            f"{load_after:.1f} after.",
            "",
            *sections,
            "",
        ]
    )
    print(text)
    if args.out:
        with open(args.out, "w") as out:
            out.write(text)


if __name__ == "__main__":
    main()
