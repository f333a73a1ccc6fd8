"""The ablation: every canonical workload under every strategy and the baselines users pick.

Runners are interleaved across repeats (A B C A B C ...) so that machine drift hits all alike.
Warm runners start their pool before timing (and run one untimed warm-up map) and shut it down
after the whole run; cold runners time creation + first map + shutdown. Every timed result is
compared with the serial loop's, so a fast wrong answer is reported as ``correct: false``.

A runner that needs a package this install lacks (the dask strategy without dask) is left
out, with the reason in ``unavailable``; one that fails otherwise is recorded with its error.
Either way the run continues.

Entry points: ``main(argv)`` (``ce-parallel bench``, ``python evaluation/parallel_ablation.py``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .measure import blas_cap, measure, progress
from .report import (
    SCHEMA_VERSION,
    analyse,
    evaluate_targets,
    machine_facts,
    markdown_summary,
    plot_speedups,
)
from .runners import BASELINE_CHUNKS_PER_WORKER, BASELINES, RUNNER_NAMES, build_runners
from .workloads import WORKLOAD_NAMES, WORKLOADS

#: Repeats per runner x workload in each mode.
REPEATS: dict[str, int] = {"tiny": 2, "quick": 3, "full": 5}
#: Workloads on which cold-start runners are measured (``None``: all). A cold start is dominated
#: by pool creation, which the tiny workload isolates; the full run adds a coarse CPU workload
#: (does the start amortise?) and a scikit-learn one (fresh workers pay its imports). Every
#: workload would add ~5 s per repeat for the dask cluster alone.
COLD_WORKLOADS: dict[str, tuple[str, ...] | None] = {
    "tiny": ("tiny",),
    "quick": ("tiny",),
    "full": ("tiny", "cpu_coarse", "perturbation"),
}


def _parse_list(raw: str | None, accepted: Sequence[str], what: str) -> list[str] | None:
    if raw is None:
        return None
    names = [p.strip() for p in raw.split(",") if p.strip()]
    unknown = [n for n in names if n not in accepted]
    if unknown:
        raise SystemExit(
            f"--{what} {','.join(unknown)} is not accepted; expected a comma list of "
            + ", ".join(accepted)
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``ce-parallel bench``."""
    parser = argparse.ArgumentParser(
        prog="ce-parallel bench",
        description="Measure every ce-parallel strategy and the usual alternatives on the "
        "canonical workloads; print a Markdown summary.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, 3 repeats (~1 min)")
    size.add_argument(
        "--tiny", action="store_true", help="seconds-long smoke run; timings mean nothing"
    )
    parser.add_argument("--out", help="write the JSON results here (its folder is created)")
    chart = parser.add_mutually_exclusive_group()
    chart.add_argument(
        "--plot", help="write the PNG bar chart here (default: next to --out, as .png)"
    )
    chart.add_argument("--no-plot", action="store_true", help="write no chart")
    parser.add_argument("--markdown", help="also write the Markdown summary here")
    parser.add_argument("--repeats", type=int, help="repeats per runner x workload")
    parser.add_argument("--workloads", help="comma list: " + ",".join(WORKLOAD_NAMES))
    parser.add_argument(
        "--runners", help="comma list (the serial loop always runs): " + ",".join(RUNNER_NAMES)
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="cap BLAS/OpenMP threads (default 1; 0 keeps the library defaults)",
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the ablation described by parsed arguments and return the JSON document."""
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    repeats = args.repeats if args.repeats is not None else REPEATS[mode]
    if repeats < 1:
        raise SystemExit(f"--repeats {repeats} is not accepted; expected an integer >= 1")
    names = _parse_list(args.workloads, WORKLOAD_NAMES, "workloads")
    workloads = [w for w in WORKLOADS if names is None or w.name in names]
    from ce_parallel.resources import cpu_budget

    workers = cpu_budget().count
    runner_names = _parse_list(args.runners, RUNNER_NAMES, "runners")
    runners = [
        r
        for r in build_runners(workers)
        if runner_names is None or r.name == "serial" or r.name in runner_names
    ]
    started = time.perf_counter()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    progress(
        f"ce-parallel ablation: {mode} mode, {repeats} repeats, {len(workloads)} workloads, "
        f"{len(runners)} runners, {workers} workers"
    )
    with blas_cap(args.blas_threads) as blas:
        cells, workload_facts, unavailable = measure(
            workloads, runners, mode=mode, repeats=repeats, cold_workloads=COLD_WORKLOADS[mode]
        )
        machine = machine_facts(blas)
    machine["load_average_start"] = load_start
    results = analyse(cells)
    document = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["ce-parallel bench", *sys.argv[1:]]),
        "mode": mode,
        "repeats": repeats,
        "workers": workers,
        "baseline_chunks_per_worker": BASELINE_CHUNKS_PER_WORKER,
        "machine": machine,
        "runners": [r.name for r in runners if r.name not in unavailable],
        "unavailable": unavailable,
        "baselines": [b for b in BASELINES if any(r.name == b for r in runners)],
        "workloads": workload_facts,
        "results": results,
    }
    document["targets"] = evaluate_targets(results)
    document["elapsed_s"] = round(time.perf_counter() - started, 2)
    return document


def chart_path(args: argparse.Namespace) -> str | None:
    """Where the chart goes: ``--plot``, else next to ``--out`` as ``.png``; None for no chart."""
    if args.no_plot:
        return None
    if args.plot:
        return str(args.plot)
    return str(Path(args.out).with_suffix(".png")) if args.out else None


def prepare_outputs(paths: Sequence[str | None]) -> None:
    """Create the folders of the output files, so a bad path fails before the run, not after.

    Raises ``SystemExit`` naming the path when its folder cannot be created or written.
    """
    for path in paths:
        if not path:
            continue
        folder = Path(path).resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemExit(
                f"cannot write {path}: its folder {folder} cannot be created ({exc})"
            ) from exc
        if not os.access(folder, os.W_OK):
            raise SystemExit(f"cannot write {path}: its folder {folder} is not writable")


def main(argv: list[str] | None = None) -> int:
    """Run the ablation; write JSON/PNG/Markdown as asked; print the summary. Returns 0."""
    from ce_parallel.telemetry import json_safe

    args = build_parser().parse_args(argv)
    plot = chart_path(args)
    prepare_outputs([args.out, args.markdown, plot])
    document = run(args)
    summary = markdown_summary(document)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(json_safe(document), handle, indent=2, sort_keys=False)
            handle.write("\n")
        progress(f"wrote {args.out}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(summary)
        progress(f"wrote {args.markdown}")
    if plot:
        try:
            plot_speedups(document, plot)
            progress(f"wrote {plot}")
        except ImportError:
            progress("matplotlib is not installed: no chart (pip install ce-parallel[bench])")
    progress(f"done in {document['elapsed_s']:.1f} s")
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
