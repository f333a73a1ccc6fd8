"""The ``ce-parallel`` command: ``doctor`` (what ce-parallel sees here) and ``bench``.

``ce-parallel doctor`` reads the same sources the library reads (the CPU budget, the platform, CI
variables, the ``CE_PARALLEL*`` settings, the numeric libraries loaded) and shows what the facade
would decide for a few sample workloads. It exits with status 2 when the environment's
configuration is invalid, so scripts can check a job's settings before starting it.

``ce-parallel bench`` runs the ablation harness (``ce_parallel.bench.ablation``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__
from .doctor import EXIT_BAD_CONFIG, EXIT_OK, SAMPLE_WORKLOADS, gather, render, render_table


def build_parser() -> argparse.ArgumentParser:
    """The ``ce-parallel`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="ce-parallel",
        description="Ask ce-parallel what it sees on this machine, or run its benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"ce-parallel {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = commands.add_parser(
        "doctor",
        help="show the CPU budget, platform, backends, settings and sample decisions",
        description="Show the CPU budget and where it comes from, the platform, CI detection, "
        "backends, the CE_PARALLEL* settings, BLAS thread pools and what the facade would "
        f"decide for sample workloads. Exit status {EXIT_BAD_CONFIG} when a setting is invalid.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    commands.add_parser(
        "bench",
        help="run the ablation benchmark (ce-parallel bench --help for its options)",
        add_help=False,
    )
    report = commands.add_parser("report", help="read telemetry files: what decisions cost")
    report.add_argument("files", nargs="+", metavar="FILE.jsonl", help="telemetry files")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--plot", metavar="OUT.png", help="draw time saved/lost per call site")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ce-parallel`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:
        # every argument after "bench" belongs to the harness's own parser
        from .bench.ablation import main as bench_main

        return bench_main(args[1:])
    parsed = build_parser().parse_args(args)
    if parsed.command == "report":
        from .fieldreport import main as report_main

        return report_main(parsed.files, as_json=parsed.json, plot_path=parsed.plot)
    if parsed.command != "doctor":
        build_parser().print_help()
        return EXIT_OK
    report = gather()
    if parsed.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report), end="")
    return int(report["status"])


__all__ = ["SAMPLE_WORKLOADS", "gather", "main", "render", "render_table"]
