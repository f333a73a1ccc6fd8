"""Field evidence: read telemetry files and say what the facade's decisions cost and saved.

``ce-parallel report FILE.jsonl [FILE ...] [--json] [--plot OUT.png]`` (``main``) reads one or
many JSON-lines files written with ``CE_PARALLEL_TELEMETRY`` (by several processes, on several
machines), streaming, and reports per call site and overall: decisions each way and why, the
measured time spent serial and parallel, the parallel efficiency, the time serial decisions left
on the table and parallel ones saved or lost, fallbacks by cause, and one recommendation per
threshold. ``build_report(paths)`` returns the same as JSON data. A large file is read in
parallel pieces by worker processes and joined into the answer one pass gives (``pieces``).

Record schema (version 2)
-------------------------
One JSON object per line. Every line has ``event`` (str) and ``time`` (unix seconds); version 2
lines also ``version`` (2), ``pid`` (int) and ``host`` (str). A line without ``version`` is
version 1 (records written before decision ids existed): it is counted, under the call site
``(unlinked)``, and never paired.

``decision``
    Every ``ParallelDecision`` field (``use_parallel``, ``decision`` "serial"|"parallel",
    ``strategy``, ``workers``, ``reason``, ``detail``, ``n_instances``, ``n_features``,
    ``bytes_hint``, ``seconds_per_item``, ``estimated_work_s``, ``requested_strategy``,
    ``full_matrix``, ``executor_type``, ``platform``, ``ci``, ``cpu_budget``,
    ``cpu_limited_by``) plus ``decision_id`` (str, unique), ``call_site``
    ("package.module:function" of the facade's caller), ``cost_source``
    ("hint"|"remembered"|"pilot"|"assumed"), ``per_item_s`` (float|None), ``start_cost_s``
    (float: the pool start-up charged), ``estimated_serial_s`` and ``estimated_parallel_s``
    (float|None).
``run``
    ``strategy``, ``items``, ``chunks`` (int|None), ``workers``, ``wall_time_s``,
    ``busy_time_s`` (float|None), ``utilisation_pct``, ``fallbacks`` (int), ``error`` (an
    exception class name|None) plus ``decision_id``, ``call_site`` and ``serial`` (bool: the
    map ran serially). Every facade map writes exactly one, serial or parallel.
``fallback``
    ``strategy``, ``stage`` ("start"|"run"), ``cause`` (``WorkerCrashedError``, ...),
    ``detail``, ``action``, ``items``, ``chunks``, and ``decision_id`` when known.
``nested``, ``fork_hooks``
    Counted, otherwise ignored.

Version 2 ``decision``, ``run`` and ``fallback`` lines must carry the fields the report uses with
their types (``reader.check_record``); a number that may be None may also be one of the strings
``"nan"``, ``"inf"``, ``"-inf"`` that ``telemetry.json_safe`` writes, and counts as unknown. A
line that is not JSON, is cut short at the end of a file, has an unknown version or breaks the
schema is reported with its file and line number and skipped; a file whose version changes is
noted at the line where it changes.

Linking
-------
A decision and its run share ``decision_id``; either may come first (merged files). Counts and
measured times are added as each line is read; only the comparison of a decision with its run
waits for both, in a map bounded by ``aggregate.MAX_PENDING`` entries (oldest dropped first and
counted as evicted). Fallback records join their decision's call site when the decision or run
is still waiting (as it is in files written as the program runs), else ``(unlinked)``.

Formulas
--------
* parallel efficiency = sum(busy_time_s) / sum(workers x wall_time_s) over parallel runs that
  report busy time.
* left on the table, per serial decision paired with its run, with ``B`` its ``cpu_budget`` and
  ``S`` its ``start_cost_s``: ``max(0, wall - (wall / B + S))`` (0 when B < 2): the measured
  serial time split over the CPUs the process had, plus the start-up the decision charged. The
  report also sums, as "the decisions' own estimates", ``estimated_serial_s -
  estimated_parallel_s`` over serial decisions that estimated parallel faster.
* saved / lost, per parallel decision paired with its run and with an ``estimated_serial_s``:
  ``estimated_serial_s - wall`` when positive (saved), ``wall - estimated_serial_s`` otherwise
  (lost).
* recommendations: for ``below_min_instances`` (size: ``n_instances``) and ``tiny_workload``
  (size: ``n_instances x n_features``), the smallest size N such that every serial decision of
  that reason with size >= N had time left on the table: "could drop to N"; for
  ``spawn_cost``/``no_clear_gain`` serial decisions and parallel runs together, "lower" when
  some serial decisions would have gained and no parallel run lost, "raise" for the opposite.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from .aggregate import MAX_PENDING, UNLINKED, Aggregator, SiteStats, left_on_table
from .reader import KNOWN_VERSIONS, SCHEMA_VERSION, Problems, read_records, unreadable_paths
from .report import PlotUnavailable, build_report, plot, render

#: Exit statuses of ``ce-parallel report``.
EXIT_OK = 0
EXIT_NO_PLOT = 1
EXIT_UNREADABLE = 2


def main(paths: Sequence[str], *, as_json: bool = False, plot_path: str | None = None) -> int:
    """Print the report for ``paths``; return the exit status.

    0 on success; 2 when a path cannot be read (nothing else is printed); 1 when ``plot_path``
    is given and matplotlib is not installed or the figure cannot be written (the report is
    printed first).
    """
    bad = unreadable_paths(paths)
    if bad:
        for path, why in bad:
            print(f"ce-parallel report: cannot read {path}: {why}", file=sys.stderr)
        return EXIT_UNREADABLE
    report = build_report(paths)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report), end="")
    if plot_path:
        try:
            plot(report, plot_path)
        except PlotUnavailable as exc:
            print(f"ce-parallel report: {exc}", file=sys.stderr)
            return EXIT_NO_PLOT
        except OSError as exc:
            print(f"ce-parallel report: cannot write {plot_path}: {exc}", file=sys.stderr)
            return EXIT_NO_PLOT
    return EXIT_OK


__all__ = [
    "EXIT_NO_PLOT",
    "EXIT_OK",
    "EXIT_UNREADABLE",
    "KNOWN_VERSIONS",
    "MAX_PENDING",
    "SCHEMA_VERSION",
    "UNLINKED",
    "Aggregator",
    "PlotUnavailable",
    "Problems",
    "SiteStats",
    "build_report",
    "left_on_table",
    "main",
    "plot",
    "read_records",
    "render",
]
