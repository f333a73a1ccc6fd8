"""The ``ce-parallel`` command: ``doctor`` (what ce-parallel sees here) and ``bench``.

``ce-parallel doctor`` reads the same sources the library reads (the CPU budget, the platform, CI
variables, the ``CE_PARALLEL*`` settings, the numeric libraries loaded) and shows what the facade
would decide for a few sample workloads. It exits with status 2 when the environment's
configuration is invalid, so scripts can check a job's settings before starting it.

``ce-parallel bench`` runs the ablation harness (``ce_parallel.bench.ablation``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from . import __version__
from .config import ENV_DASK_ADDRESS, ENV_FULL, ENV_MAIN, ENV_TELEMETRY, ParallelConfig
from .errors import ConfigurationError
from .worker import IN_WORKER_ENV

#: Exit status when a ``CE_PARALLEL*`` variable is invalid (argparse uses 2 for usage errors too).
EXIT_BAD_CONFIG = 2
EXIT_OK = 0

#: The variables doctor reports; ``IN_WORKER_ENV`` is set by ce-parallel in its workers.
REPORTED_VARIABLES: tuple[str, ...] = (
    ENV_MAIN,
    ENV_FULL,
    ENV_TELEMETRY,
    ENV_DASK_ADDRESS,
    IN_WORKER_ENV,
)

#: Distributions doctor reports: (distribution, import name, what ce-parallel uses it for).
BACKENDS: tuple[tuple[str, str, str], ...] = (
    ("joblib", "joblib", "joblib strategy"),
    ("loky", "loky", "processes strategy"),
    ("cloudpickle", "cloudpickle", "pickling lambdas and closures for process workers"),
    ("psutil", "psutil", "physical core count"),
    ("threadpoolctl", "threadpoolctl", "capping BLAS threads in process workers"),
    ("distributed", "distributed", "dask strategy"),
    ("dask", "dask", "dask strategy"),
    ("numpy", "numpy", "map(seed=...) and numeric workloads"),
    ("tqdm", "tqdm", "map(progress=True) bars"),
    ("calibrated-explanations", "calibrated_explanations", "compat adapter"),
)


@dataclass(frozen=True)
class SampleWorkload:
    """A workload shape that doctor asks the facade about."""

    label: str
    n_instances: int
    n_features: int = 1
    bytes_hint: int | None = None
    seconds_per_item: float | None = None


#: Shapes that exercise the facade's rules: tiny work, the default cost estimate, a
#: calibration/explanation-sized job, a large payload and coarse CPU-bound items.
SAMPLE_WORKLOADS: tuple[SampleWorkload, ...] = (
    SampleWorkload("4 instances x 1 feature", 4),
    SampleWorkload("100 instances x 1 feature", 100),
    SampleWorkload("200 instances x 10 features", 200, 10),
    SampleWorkload("64 instances, 8 MB per task", 64, 10, bytes_hint=8 * 1024 * 1024),
    SampleWorkload("16 items x 100 ms", 16, seconds_per_item=0.1),
)
#: Strategies whose decisions doctor also shows when the configuration asks for serial work.
WHAT_IF_STRATEGIES: tuple[str, ...] = ("threads", "joblib")


# --- gathering the facts -------------------------------------------------------------------


def _backend_facts() -> list[dict[str, Any]]:
    """Installed version of each backend, found without importing it."""
    rows = []
    for dist, module, purpose in BACKENDS:
        try:
            version: str | None = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = None
        try:
            importable = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            importable = False
        rows.append(
            {"name": dist, "version": version, "importable": importable, "used_for": purpose}
        )
    return rows


def _strategy_facts() -> dict[str, bool]:
    """Whether each registered strategy can run in this install (its modules are found)."""
    from .registry import strategy_records

    present = {}
    for name, record in strategy_records().items():
        target = record.executor
        modules = record.requires
        if isinstance(target, str):
            modules = (target.partition(":")[0], *modules)
        try:
            present[name] = all(importlib.util.find_spec(m) is not None for m in modules)
        except (ImportError, ValueError):
            present[name] = False
    return present


def _config_facts(environ: Mapping[str, str]) -> tuple[ParallelConfig | None, dict[str, Any]]:
    """The configuration ``ParallelConfig.from_env`` builds here, or the error it raises."""
    from .telemetry import json_safe

    try:
        config = ParallelConfig.from_env(environ=environ)
    except ConfigurationError as exc:
        return None, {"valid": False, "error": str(exc), "settings": None}
    settings = {f.name: json_safe(getattr(config, f.name)) for f in fields(config)}
    return config, {"valid": True, "error": None, "settings": settings}


def _blas_facts(workers: int, budget: int) -> dict[str, Any]:
    """Numeric libraries loaded after importing numpy, and the cap process workers get."""
    from .resources import threads_per_worker

    loaded_numpy = False
    if importlib.util.find_spec("numpy") is not None:
        # threadpoolctl only sees libraries that are loaded; numpy is what loads BLAS for most
        # users, so it is imported here (and only here) to make the report meaningful
        try:
            import numpy  # noqa: F401

            loaded_numpy = True
        except Exception:
            loaded_numpy = False
    try:
        from threadpoolctl import threadpool_info

        libraries = [
            {
                "user_api": info.get("user_api"),
                "internal_api": info.get("internal_api"),
                "version": info.get("version"),
                "num_threads": info.get("num_threads"),
                "filepath": info.get("filepath"),
            }
            for info in threadpool_info()
        ]
        error = None
    except Exception as exc:  # threadpoolctl can fail on unusual builds; report, don't crash
        libraries, error = [], f"{type(exc).__name__}: {exc}"
    return {
        "numpy_imported": loaded_numpy,
        "libraries": libraries,
        "error": error,
        "process_worker_threads": threads_per_worker(budget, workers),
    }


def _decision_facts(
    config: ParallelConfig, environ: Mapping[str, str], resources: Any
) -> dict[str, Any]:
    """What the facade decides for each sample workload, as configured and, when the
    configuration asks for serial work, with each of ``WHAT_IF_STRATEGIES`` added to
    ``CE_PARALLEL``. Decisions are not written to the telemetry file.
    """
    from .facade import ParallelFacade

    quiet = {k: v for k, v in environ.items() if k != ENV_TELEMETRY}
    scenarios: list[tuple[str, dict[str, str]]] = [("as configured", quiet)]
    if not config.enabled or config.strategy == "sequential":
        current = environ.get(ENV_MAIN, "").strip()
        for strategy in WHAT_IF_STRATEGIES:
            # the strategy is added to the operator's tokens (workers=, off, ...), not swapped in
            value = f"{current},{strategy}" if current else strategy
            scenarios.append((f"if {ENV_MAIN}={value}", {**quiet, ENV_MAIN: value}))
    out: list[dict[str, Any]] = []
    notes: list[str] = []
    for label, env in scenarios:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            facade = ParallelFacade(environ=env, resources=resources)
            rows = []
            for sample in SAMPLE_WORKLOADS:
                decision = facade.decide_use_parallel(
                    sample.n_instances,
                    sample.n_features,
                    bytes_hint=sample.bytes_hint,
                    seconds_per_item=sample.seconds_per_item,
                )
                rows.append({"workload": sample.label, **decision.as_dict()})
            facade.close()
        for warning in caught:
            text = f"{label}: {warning.message}"
            if text not in notes:
                notes.append(text)
        out.append({"scenario": label, "decisions": rows})
    return {"scenarios": out, "warnings": notes, "error": None}


def gather(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything doctor reports, as JSON-safe data; ``status`` is the exit status."""
    from .resources import detect_resources
    from .telemetry import json_safe

    env = os.environ if environ is None else environ
    config, config_facts = _config_facts(env)
    max_workers = config.max_workers if config is not None else None
    resources = detect_resources(env, max_workers=max_workers)
    budget = resources.budget
    workers = budget.count
    report: dict[str, Any] = {
        "ce_parallel": __version__,
        "python": platform.python_version(),
        "cpu_budget": {
            "count": budget.count,
            "limited_by": budget.limited_by,
            "summary": budget.describe(),
            "sources": budget.sources,
            "details": budget.details,
        },
        "platform": {
            "os": resources.platform,
            "machine": platform.machine(),
            "start_method": resources.start_method,
            "spawn_cost_s": resources.spawn_cost_s,
            "process_pool_start_s": resources.process_start_s,
            "physical_cores": resources.physical_cores,
        },
        "ci": {"detected": resources.ci, "provider": resources.ci_provider},
        "backends": _backend_facts(),
        "strategies": _strategy_facts(),
        "environment": {name: env.get(name) for name in REPORTED_VARIABLES},
        "configuration": config_facts,
        "blas": _blas_facts(workers, budget.count),
    }
    if config is None:
        report["facade"] = {
            "scenarios": [],
            "warnings": [],
            "error": "not evaluated: the configuration is invalid",
        }
    else:
        try:
            report["facade"] = _decision_facts(config, env, resources)
        except ImportError as exc:
            report["facade"] = {"scenarios": [], "warnings": [], "error": str(exc)}
    report["status"] = EXIT_OK if config is not None else EXIT_BAD_CONFIG
    return json_safe(report)


# --- rendering -----------------------------------------------------------------------------


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> str:
    """A plain-text table with aligned columns; the last column is never padded."""
    cells = [[str(h) for h in headers]] + [[_show(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        lines.append(indent + "  ".join(padded).rstrip())
        if n == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(report: Mapping[str, Any]) -> str:
    """The human-readable doctor report."""
    out: list[str] = [
        f"ce-parallel {report['ce_parallel']} doctor (Python {report['python']})",
        "",
    ]

    def section(title: str, body: str) -> None:
        out.extend([title, body, ""])

    budget = report["cpu_budget"]
    section(
        f"CPU budget: {budget['summary']}",
        render_table(
            ["source", "value", "", "read from"],
            [
                (
                    name,
                    "no limit" if value is None else value,
                    "<- winner" if name == budget["limited_by"] else "",
                    budget["details"].get(name, ""),
                )
                for name, value in budget["sources"].items()
            ],
        ),
    )
    plat, ci = report["platform"], report["ci"]
    section(
        "Platform",
        render_table(
            ["fact", "value"],
            [
                ("os / machine", f"{plat['os']} / {plat['machine']}"),
                ("default start method", plat["start_method"]),
                (f"{plat['start_method']} pool start (s)", plat["spawn_cost_s"]),
                ("loky/joblib pool start (s)", plat["process_pool_start_s"]),
                ("physical cores", plat["physical_cores"]),
                ("CI", f"yes ({ci['provider']})" if ci["detected"] else "no"),
            ],
        ),
    )
    section(
        "Backends",
        render_table(
            ["package", "version", "importable", "used for"],
            [
                (b["name"], b["version"] or "not installed", b["importable"], b["used_for"])
                for b in report["backends"]
            ],
        ),
    )
    section(
        "Strategies in this install",
        render_table(
            ["strategy", "available"],
            [(name, present) for name, present in report["strategies"].items()],
        ),
    )
    section(
        "Environment",
        render_table(
            ["variable", "value"],
            [
                (name, value if value is not None else "(unset)")
                for name, value in report["environment"].items()
            ],
        ),
    )
    conf = report["configuration"]
    if conf["valid"]:
        section(
            "Configuration (ParallelConfig.from_env)",
            render_table(["field", "value"], list(conf["settings"].items())),
        )
    else:
        section("Configuration (ParallelConfig.from_env): INVALID", "  " + conf["error"])
    blas = report["blas"]
    blas_rows = [
        (lib["user_api"], lib["internal_api"], lib["version"], lib["num_threads"], lib["filepath"])
        for lib in blas["libraries"]
    ]
    blas_body = (
        render_table(["api", "library", "version", "threads", "file"], blas_rows)
        if blas_rows
        else "  no BLAS/OpenMP library is loaded"
        + ("" if blas["numpy_imported"] else " (numpy is not installed)")
    )
    if blas["error"]:
        blas_body += f"\n  threadpoolctl failed: {blas['error']}"
    blas_body += (
        f"\n  process workers cap these libraries at {blas['process_worker_threads']} "
        "thread(s) each (CPU budget // workers)"
    )
    section("BLAS / OpenMP thread pools (threadpoolctl, after importing numpy)", blas_body)
    facade = report["facade"]
    if facade["error"]:
        section("Facade decisions", "  " + facade["error"])
    else:
        for scenario in facade["scenarios"]:
            section(
                f"Facade decisions, {scenario['scenario']}",
                render_table(
                    ["workload", "decision", "strategy", "workers", "reason", "why"],
                    [
                        (
                            d["workload"],
                            d["decision"],
                            d["strategy"],
                            d["workers"],
                            d["reason"],
                            d["detail"],
                        )
                        for d in scenario["decisions"]
                    ],
                ),
            )
        for note in facade["warnings"]:
            out.append(f"warning: {note}")
    if report["status"] == EXIT_BAD_CONFIG:
        out.append(f"status: configuration invalid (exit {EXIT_BAD_CONFIG})")
    else:
        out.append("status: ok")
    return "\n".join(out).rstrip() + "\n"


# --- the command line ----------------------------------------------------------------------


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
