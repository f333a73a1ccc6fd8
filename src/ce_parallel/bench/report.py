"""Analysis and reporting of an ablation run: speed-ups, targets, Markdown and a chart."""

from __future__ import annotations

import importlib
import os
import platform
import statistics
from typing import Any

from .measure import MIN_TIMED_S, Cell
from .runners import BASELINES, FIXED_STRATEGIES

#: Schema version of the JSON document; bump when a key changes meaning.
SCHEMA_VERSION = 1
# Targets of the closing report (reported, never asserted).
TARGET_TINY_VS_JOBLIB = 3.0
TARGET_COARSE_PROCESS_SPEEDUP = 1.8
TARGET_FACADE_SERIAL_OVERHEAD = 1.05
TARGET_AUTO_REGRET = 1.15


# --- analysis -------------------------------------------------------------------------------


def _version(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "unknown"))
    except Exception:
        return None


def machine_facts(blas: dict[str, Any]) -> dict[str, Any]:
    """The facts that make a result reproducible: CPU budget, platform, library versions."""
    import multiprocessing

    from ce_parallel.resources import cpu_budget

    budget = cpu_budget()
    return {
        "cpu_budget": budget.count,
        "cpu_budget_source": budget.limited_by,
        "cpu_budget_sources": budget.sources,
        "cpu_count": budget.sources.get("machine"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "start_method": multiprocessing.get_start_method(allow_none=True),
        "blas": blas,
        # other processes on the machine skew timings; the load says how quiet it was
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {
            name: _version(name)
            for name in (
                "ce_parallel",
                "joblib",
                "loky",
                "cloudpickle",
                "numpy",
                "sklearn",
                "dask",
                "distributed",
                "matplotlib",
            )
        },
    }


def _median(cell: dict[str, Any] | None) -> float | None:
    if not cell or not cell.get("correct"):
        return None
    value = cell.get("median_s")
    return float(value) if value else None


def analyse(cells: dict[str, dict[str, Cell]]) -> dict[str, Any]:
    """Per workload: runner statistics, the best baseline, ratios, and auto's regret."""
    results: dict[str, Any] = {}
    for workload, row in cells.items():
        serial_cell = row.get("serial")
        serial = statistics.median(serial_cell.times) if serial_cell and serial_cell.times else None
        runners = {name: cell.as_dict(serial) for name, cell in row.items()}
        baselines = {b: _median(runners.get(b)) for b in BASELINES}
        measured = {b: t for b, t in baselines.items() if t}
        best_baseline = min(measured, key=measured.__getitem__) if measured else None
        for stats in runners.values():
            median = stats["median_s"]
            stats["ratio_vs_best_baseline"] = (
                median / measured[best_baseline] if best_baseline and median else None
            )
        fixed = {s: _median(runners.get(f"ce:{s}")) for s in FIXED_STRATEGIES}
        fixed_ok = {s: t for s, t in fixed.items() if t}
        best_fixed = min(fixed_ok, key=fixed_ok.__getitem__) if fixed_ok else None
        auto = runners.get("ce:auto", {})
        auto_median = _median(auto)
        results[workload] = {
            "serial_median_s": serial,
            "best_baseline": best_baseline,
            "best_baseline_median_s": measured.get(best_baseline) if best_baseline else None,
            "best_fixed_strategy": best_fixed,
            "best_fixed_median_s": fixed_ok.get(best_fixed) if best_fixed else None,
            "auto": {
                "chose": auto.get("choices"),
                "reasons": auto.get("reasons"),
                "median_s": auto_median,
                "regret": auto_median / fixed_ok[best_fixed]
                if auto_median and best_fixed
                else None,
                "error": auto.get("error"),
            },
            "runners": runners,
        }
    return results


def _check(value: float | None, target: float, smaller_is_better: bool) -> dict[str, Any]:
    if value is None:
        return {"value": None, "target": target, "met": None}
    met = value <= target if smaller_is_better else value >= target
    return {"value": round(value, 3), "target": target, "met": met}


def evaluate_targets(results: dict[str, Any]) -> dict[str, Any]:
    """The closing-report targets, computed from the medians (reported, never asserted)."""

    def median(workload: str, runner: str) -> float | None:
        return _median(results.get(workload, {}).get("runners", {}).get(runner))

    targets: dict[str, Any] = {}
    loky_tiny = median("tiny", "loky")
    joblib_tiny = median("tiny", "joblib.Parallel")
    for strategy in ("processes", "joblib"):
        ours = median("tiny", f"ce:{strategy}")
        targets[f"tiny_{strategy}_vs_loky"] = {
            "description": f"tiny: ce:{strategy} time / loky reusable executor time (<= 1)",
            **_check(ours / loky_tiny if ours and loky_tiny else None, 1.0, True),
        }
        targets[f"tiny_{strategy}_vs_joblib_parallel"] = {
            "description": f"tiny: joblib.Parallel time / ce:{strategy} time (>= 3)",
            **_check(
                joblib_tiny / ours if ours and joblib_tiny else None, TARGET_TINY_VS_JOBLIB, False
            ),
        }
    serial_coarse = median("cpu_coarse", "serial")
    process_coarse = median("cpu_coarse", "ce:processes")
    targets["coarse_processes_speedup"] = {
        "description": "cpu_coarse: serial time / ce:processes time (>= 1.8 on 2 cores)",
        **_check(
            serial_coarse / process_coarse if serial_coarse and process_coarse else None,
            TARGET_COARSE_PROCESS_SPEEDUP,
            False,
        ),
    }
    serial_tiny = median("tiny", "serial")
    facade_tiny = median("tiny", "facade:serial")
    targets["facade_serial_overhead_tiny"] = {
        "description": "tiny: facade in serial mode time / plain loop time (<= 1.05)",
        **_check(
            facade_tiny / serial_tiny if facade_tiny and serial_tiny else None,
            TARGET_FACADE_SERIAL_OVERHEAD,
            True,
        ),
    }
    regrets = {w: r["auto"]["regret"] for w, r in results.items() if r["auto"]["regret"]}
    worst = max(regrets, key=regrets.__getitem__) if regrets else None
    targets["auto_regret"] = {
        "description": "every workload: auto time / best fixed strategy time (<= 1.15)",
        "per_workload": {w: round(v, 3) for w, v in regrets.items()},
        "worst_workload": worst,
        **_check(regrets[worst] if worst else None, TARGET_AUTO_REGRET, True),
    }
    return targets


# --- reporting ------------------------------------------------------------------------------


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def _fmt_load(load: list[float] | None) -> str:
    return "unknown" if not load else f"{load[0]:.1f}"


def _fmt_cell(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "-"
    if stats.get("error"):
        return "ERR"
    if stats.get("correct") is False:
        return "WRONG"
    speedup = stats.get("speedup_vs_serial")
    return "-" if speedup is None else f"{speedup:.2f}x"


def markdown_summary(document: dict[str, Any]) -> str:
    """The results as Markdown: speed-ups, cold starts, auto's choices, targets, errors."""
    facts = document["machine"]
    results = document["results"]
    warm = [n for n in document["runners"] if not n.endswith(":cold") and n != "serial"]
    cold = [n for n in document["runners"] if n.endswith(":cold")]
    left_out: dict[str, list[str]] = {}
    for runner, why in document.get("unavailable", {}).items():
        left_out.setdefault(why, []).append(runner)
    lines = [
        f"## ce-parallel ablation: {document['mode']} mode, {document['repeats']} repeats",
        "",
        f"CPU budget {facts['cpu_budget']} (limited by {facts['cpu_budget_source']}), "
        f"Python {facts['python']}, {facts['platform']}, BLAS threads "
        f"{facts['blas']['requested_threads']}, 1-min load average "
        f"{_fmt_load(facts.get('load_average_start'))} at start, "
        f"{_fmt_load(facts.get('load_average_end'))} at end. "
        "Speed-up = serial median / runner median (higher is better); warm pools; a warm "
        f"call under {MIN_TIMED_S * 1000:.0f} ms is timed as the mean of repeated calls; "
        "ERR = raised, WRONG = results differ from serial.",
        "",
        "| workload | size | serial | " + " | ".join(warm) + " | auto chose | auto regret |",
        "|---|---|---:|" + "---:|" * len(warm) + "---|---:|",
    ]
    for workload, facts_w in document["workloads"].items():
        if "skipped" in facts_w:
            lines.append(f"| {workload} | {facts_w['skipped']} |" + " |" * (len(warm) + 3))
            continue
        result = results[workload]
        runners = result["runners"]
        auto = result["auto"]
        regret = auto["regret"]
        lines.append(
            f"| {workload} | {facts_w['size']} | {_fmt_seconds(result['serial_median_s'])} | "
            + " | ".join(_fmt_cell(runners.get(n)) for n in warm)
            + f" | {', '.join(auto['chose'] or []) or '-'} | "
            + (f"{regret:.2f}" if regret else "-")
            + " |"
        )
    if left_out:
        lines.append("")
        lines += [f"Left out: {', '.join(names)} ({why})." for why, names in left_out.items()]
    cold_rows = [
        (w, r["runners"]) for w, r in results.items() if any(n in r["runners"] for n in cold)
    ]
    if cold_rows:
        lines += [
            "",
            "Cold start (create + first map + shutdown), median time:",
            "",
            "| workload | " + " | ".join(cold) + " |",
            "|---|" + "---:|" * len(cold),
        ]
        for workload, runners in cold_rows:
            cells = []
            for name in cold:
                stats = runners.get(name)
                if stats is None:
                    cells.append("-")
                elif stats.get("error"):
                    cells.append("ERR")
                else:
                    wrong = " WRONG" if stats.get("correct") is False else ""
                    cells.append(_fmt_seconds(stats.get("median_s")) + wrong)
            lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    lines += ["", "Targets (reported, not asserted):", ""]
    for target in document["targets"].values():
        met = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        lines.append(f"- {target['description']}: {target['value']} -> {met}")
    errors = sorted(
        {
            (runner, stats["error"])
            for result in results.values()
            for runner, stats in result["runners"].items()
            if stats.get("error")
        }
    )
    if errors:
        lines += ["", "Errors:", ""]
        lines += [f"- {runner}: {error}" for runner, error in errors]
    return "\n".join(lines) + "\n"


#: ce-parallel's strategies in the chart (the facade and the serial strategy are in the table).
CHART_RUNNERS: tuple[str, ...] = ("ce:threads", "ce:processes", "ce:joblib", "ce:dask", "ce:auto")
#: Label of the chart's bar for the fastest of the usual alternatives on each workload.
BEST_PEER = "best peer"


def _chart_speedup(result: dict[str, Any], runner: str | None) -> float | None:
    stats = result["runners"].get(runner) if runner else None
    if not stats or not stats.get("correct"):
        return None
    speedup = stats.get("speedup_vs_serial")
    return float(speedup) if speedup else None


def plot_speedups(document: dict[str, Any], path: str) -> None:
    """The headline chart, as PNG: per workload, ce-parallel's strategies and the best peer.

    Bars are speed-ups over the serial loop (log scale), each labelled with its value; the best
    peer (the fastest of joblib.Parallel, concurrent.futures and loky on that workload) is named
    on its bar. Every other runner is in the Markdown table.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {w: r for w, r in document["results"].items() if r.get("runners")}
    workloads = list(results)
    ran = set(document["runners"])
    series = [r for r in CHART_RUNNERS if r in ran] + [BEST_PEER]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(9.0, 1.5 * len(workloads) + 2.5), 5.5))
    colours = plt.get_cmap("tab10")
    peak = 1.0
    for i, name in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * width
        xs, ys, labels = [], [], []
        for j, workload in enumerate(workloads):
            result = results[workload]
            peer = result.get("best_baseline")
            speedup = _chart_speedup(result, peer if name == BEST_PEER else name)
            if speedup is None:
                continue
            xs.append(j + offset)
            ys.append(speedup)
            labels.append(f"{speedup:.2f}x" + (f"\n{peer}" if name == BEST_PEER else ""))
        if not ys:  # a runner that never produced a correct result gets no legend entry
            continue
        peak = max(peak, *ys)
        style: dict[str, Any] = (
            {"color": "0.55", "hatch": "//", "edgecolor": "0.3"}
            if name == BEST_PEER
            else {"color": colours(i % 10)}
        )
        bars = ax.bar(xs, ys, width=width, label=name, **style)
        ax.bar_label(bars, labels=labels, fontsize=6, padding=1.5, rotation=90)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylim(top=peak * 3.0)  # room for the labels above the tallest bar
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads, rotation=20)
    ax.set_ylabel("speed-up vs serial loop (log; above 1 is faster)")
    facts = document["machine"]
    ax.set_title(
        f"ce-parallel vs the best peer per workload ({document['mode']}, "
        f"{facts['cpu_budget']} CPUs, Python {facts['python']})"
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
