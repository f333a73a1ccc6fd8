"""The report: built from files (``build_report``), as text (``render``), as a figure (``plot``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .advice import margin_advice, size_advice
from .aggregate import MAX_PENDING, SIZE_REASONS, SiteStats
from .pieces import count_files
from .reader import MAX_LISTED_PROBLEMS, SCHEMA_VERSION

#: Problem kinds that are noted but do not skip the line.
NOTED_KINDS = ("mixed_versions",)


def build_report(
    paths: Sequence[str], *, max_pending: int = MAX_PENDING, pieces_per_file: int | None = None
) -> dict[str, Any]:
    """Read every file in ``paths`` once, streaming, and return the report as JSON data.

    A large file is read in up to ``pieces_per_file`` pieces (default: the CPU budget) in
    parallel, with the same report (``pieces``); ``pieces_per_file=1`` reads it in one pass.
    """
    counted = count_files(paths, max_pending=max_pending, pieces_per_file=pieces_per_file)
    agg, problems, versions = counted.agg, counted.problems, counted.versions
    agg.finish()

    overall = SiteStats()
    for stats in agg.sites.values():
        overall.merge(stats)
    sites = sorted(
        agg.sites.items(),
        key=lambda kv: (-(kv[1].serial_wall_s + kv[1].parallel_wall_s), kv[0]),
    )
    advice = [size_advice(reason, agg.sizes[reason]) for reason in SIZE_REASONS]
    advice.append(margin_advice(agg.margin))
    skipped = sum(n for kind, n in problems.counts.items() if kind not in NOTED_KINDS)
    return {
        "schema_version": SCHEMA_VERSION,
        "files": list(paths),
        "lines": {
            "records": sum(versions.values()),
            "by_version": {str(v): n for v, n in sorted(versions.items())},
            "mixed_versions": len(versions) > 1,
            "events": dict(agg.events.most_common()),
            "skipped": skipped,
            "problems": dict(problems.counts.most_common()),
            "listed": [vars(p) for p in problems.listed],
            "listed_limit": MAX_LISTED_PROBLEMS,
        },
        "linking": {
            "linked": overall.linked,
            "unlinked_decisions": agg.unlinked_decisions,
            "unlinked_runs": agg.unlinked_runs,
            "decisions_without_run": agg.decisions_without_run,
            "runs_without_decision": agg.runs_without_decision,
            "duplicate_ids": agg.duplicates,
            "evicted": agg.evicted,
            "max_pending": max_pending,
        },
        "span": {
            "first_time": agg.first_time,
            "last_time": agg.last_time,
            "processes": len(agg.processes),
            "hosts": len({host for host, _ in agg.processes}),
        },
        "overall": overall.as_dict(),
        "call_sites": {name: stats.as_dict() for name, stats in sites},
        "fallbacks": {
            "by_cause": dict(agg.fallback_causes.most_common()),
            "by_stage": dict(agg.fallback_stages.most_common()),
        },
        "recommendations": advice,
    }


# --- text ----------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp)) + " UTC"


def _summary(s: dict[str, Any]) -> list[str]:
    eff = s["efficiency_pct"]
    return [
        f"  decisions: {s['decisions']} (serial {s['serial_decisions']}, "
        f"parallel {s['parallel_decisions']}); reasons: {_counts(s['reasons'])}",
        f"  cost sources: {_counts(s['cost_sources'])}",
        f"  measured: serial {s['serial_wall_s']:.3f} s in {s['serial_runs']} runs "
        f"({s['serial_items']} items); parallel {s['parallel_wall_s']:.3f} s in "
        f"{s['parallel_runs']} runs ({s['parallel_items']} items); parallel efficiency "
        + ("-" if eff is None else f"{eff:.1f}%"),
        f"  left on the table by serial decisions: {s['left_on_table_s']:.3f} s in "
        f"{s['left_on_table_runs']} runs (by reason: {_counts(s['left_by_reason'])}); "
        f"the decisions' own estimates: {s['estimated_gain_s']:.3f} s in "
        f"{s['estimated_gain_decisions']}",
        f"  parallel runs against their estimated serial time: saved {s['saved_s']:.3f} s, "
        f"lost {s['lost_s']:.3f} s in {s['lost_runs']} runs",
        f"  fallbacks: {_counts(s['fallbacks'])}; run errors: {_counts(s['run_errors'])}",
    ]


def render(report: dict[str, Any]) -> str:
    """The human-readable report."""
    lines_ = report["lines"]
    span = report["span"]
    versions = ", ".join(f"version {v}: {n}" for v, n in lines_["by_version"].items())
    out = [
        f"ce-parallel report: {len(report['files'])} file(s), {lines_['records']} records "
        f"({versions or 'none'}); {span['processes']} process(es) on {span['hosts']} host(s); "
        f"{_when(span['first_time'])} to {_when(span['last_time'])}",
        f"events: {_counts(lines_['events'])}",
    ]
    if lines_["problems"]:
        out.append(f"skipped {lines_['skipped']} line(s); problems: {_counts(lines_['problems'])}")
        out.extend(
            f"  {p['file']}:{p['line']}: {p['kind']}: {p['message']}" for p in lines_["listed"]
        )
        total = sum(lines_["problems"].values())
        if total > len(lines_["listed"]):
            out.append(f"  ... and {total - len(lines_['listed'])} more")
    link = report["linking"]
    out.append(
        f"linked decision/run pairs: {link['linked']}; unlinked (no decision id, version 1): "
        f"{link['unlinked_decisions']} decisions, {link['unlinked_runs']} runs; "
        f"decisions without a run: {link['decisions_without_run']}; runs without a decision: "
        f"{link['runs_without_decision']}; evicted unmatched: {link['evicted']} "
        f"(at most {link['max_pending']} kept waiting); duplicate ids: {link['duplicate_ids']}"
    )
    out += ["", "Overall", *_summary(report["overall"])]
    fb = report["fallbacks"]
    out.append(
        f"  fallbacks by cause: {_counts(fb['by_cause'])}; by stage: {_counts(fb['by_stage'])}"
    )
    rows = [
        (
            name,
            s["decisions"],
            s["serial_decisions"],
            s["parallel_decisions"],
            f"{s['serial_wall_s']:.3f}",
            f"{s['parallel_wall_s']:.3f}",
            None if s["efficiency_pct"] is None else f"{s['efficiency_pct']:.1f}%",
            f"{s['left_on_table_s']:.3f}",
            f"{s['saved_s']:.3f}",
            f"{s['lost_s']:.3f}",
            sum(s["fallbacks"].values()),
        )
        for name, s in report["call_sites"].items()
    ]
    out += ["", "Per call site (seconds)"]
    out += _table(
        [
            "call site",
            "decisions",
            "serial",
            "parallel",
            "serial s",
            "parallel s",
            "efficiency",
            "left",
            "saved",
            "lost",
            "fallbacks",
        ],
        rows,
    )
    for name, s in report["call_sites"].items():
        out.append(f"  {name}: reasons {_counts(s['reasons'])}")
    out += ["", "Recommendations"]
    out += [f"  - {a['text']}" for a in report["recommendations"]]
    return "\n".join(out) + "\n"


# --- figure --------------------------------------------------------------------------------


class PlotUnavailable(RuntimeError):
    """``--plot`` was asked for and matplotlib is not installed."""


def plot(report: dict[str, Any], path: str) -> None:
    """One figure: per call site, seconds saved, lost and left on the table, values labelled."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(
            "ce-parallel report --plot needs matplotlib: pip install matplotlib "
            "(or the bench extra, pip install 'ce-parallel[bench]')"
        ) from exc
    names = list(report["call_sites"]) or ["(no call site)"]
    series = (
        ("saved by parallel runs", "saved_s", "#2a9d8f"),
        ("lost by parallel runs", "lost_s", "#e76f51"),
        ("left on the table by serial decisions", "left_on_table_s", "#e9c46a"),
    )
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(10, 1.8 + 0.9 * len(names)))
    for n, (label, key, colour) in enumerate(series):
        values = [report["call_sites"].get(name, {}).get(key, 0.0) for name in names]
        ys = [i + (n - 1) * height for i in range(len(names))]
        bars = ax.barh(ys, values, height=height, label=label, color=colour)
        ax.bar_label(bars, labels=[f"{v:.3g} s" for v in values], padding=3, fontsize=8)
    ax.set_yticks(range(len(names)), labels=names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (measured run time against the decision's estimates)")
    ax.set_title("ce-parallel field evidence: time saved and lost per call site")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(series), fontsize=8)
    ax.margins(x=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


__all__ = ["NOTED_KINDS", "PlotUnavailable", "build_report", "plot", "render"]
