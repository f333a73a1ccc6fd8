"""One short recommendation per threshold, from the evidence the aggregator kept."""

from __future__ import annotations

from typing import Any

from .aggregate import MarginEvidence, SizeEvidence

#: reason -> (the setting it comes from, what its size counts)
SIZE_SETTINGS = {
    "below_min_instances": ("min_instances_for_parallel", "instances"),
    "tiny_workload": ("tiny_workload_threshold", "work items (instances x features)"),
}


def lowest_safe_size(by_size: dict[int, list[float]]) -> int | None:
    """The smallest size N such that every serial decision of size >= N would have gained.

    None when the largest size seen already has a decision that would not have gained.
    """
    safe: int | None = None
    for size in sorted(by_size, reverse=True):
        decisions, gainers = by_size[size][0], by_size[size][1]
        if gainers < decisions:
            break
        safe = size
    return safe


def size_advice(reason: str, evidence: SizeEvidence) -> dict[str, Any]:
    """What the serial decisions a size threshold made say about that threshold."""
    setting, unit = SIZE_SETTINGS[reason]
    rows = evidence.by_size
    decisions = int(sum(r[0] for r in rows.values()))
    gainers = int(sum(r[1] for r in rows.values()))
    wall = sum(r[2] for r in rows.values())
    left = sum(r[3] for r in rows.values())
    out: dict[str, Any] = {
        "threshold": setting,
        "reason": reason,
        "decisions": decisions,
        "would_gain": gainers,
        "measured_s": round(wall, 6),
        "left_on_table_s": round(left, 6),
        "could_drop_to": None,
    }
    if decisions == 0:
        out["verdict"] = "no evidence"
        out["text"] = f"{setting}: no linked serial decision gave {reason}; no evidence either way"
        return out
    safe = lowest_safe_size(rows)
    if gainers == 0:
        out["verdict"] = "keep"
        out["text"] = (
            f"keep {setting}: its {decisions} serial decisions measured {wall:.3f} s in total; "
            "none ran long enough to repay a pool start on its CPU budget"
        )
    elif safe is None:
        out["verdict"] = "keep"
        out["text"] = (
            f"keep {setting}: {gainers} of its {decisions} serial decisions would have saved "
            f"{left:.3f} s in parallel, but the largest ones would not have; mixed evidence"
        )
    else:
        above = [r for size, r in rows.items() if size >= safe]
        k = int(sum(r[0] for r in above))
        out["verdict"] = "lower"
        out["could_drop_to"] = safe
        out["text"] = (
            f"{setting} could drop to {safe} {unit}: these {k} serial decisions (>= {safe}) "
            f"measured {sum(r[2] for r in above):.3f} s serially and would have saved about "
            f"{sum(r[3] for r in above):.3f} s in parallel, start-up included"
        )
    return out


def margin_advice(evidence: MarginEvidence) -> dict[str, Any]:
    """What spawn_cost/no_clear_gain serial decisions and parallel runs say about the margin."""
    m = evidence
    out: dict[str, Any] = {
        "threshold": "spawn/no-gain margin",
        "serial_decisions": m.serial,
        "would_gain": m.gainers,
        "left_on_table_s": round(m.left_s, 6),
        "parallel_runs": m.parallel,
        "slower_than_serial_estimate": m.losers,
        "lost_s": round(m.lost_s, 6),
    }
    if m.serial == 0 and m.parallel == 0:
        out["verdict"] = "no evidence"
        out["text"] = "spawn/no-gain margin: no linked decision weighed it; no evidence either way"
    elif m.gainers and not m.losers:
        out["verdict"] = "lower"
        out["text"] = (
            f"the spawn/no-gain margin could be lowered: {m.gainers} of {m.serial} serial "
            f"spawn-cost decisions measured enough work to repay the start-up ({m.left_s:.3f} s "
            "left on the table), and no parallel run was slower than its serial estimate"
        )
    elif m.losers and not m.gainers:
        out["verdict"] = "raise"
        out["text"] = (
            f"the spawn/no-gain margin could be raised: {m.losers} of {m.parallel} parallel runs "
            f"took longer than their estimated serial time ({m.lost_s:.3f} s lost)"
        )
    elif m.losers:
        out["verdict"] = "keep"
        out["text"] = (
            f"keep the spawn/no-gain margin: {m.gainers} serial decisions would have gained "
            f"{m.left_s:.3f} s while {m.losers} parallel runs lost {m.lost_s:.3f} s; mixed evidence"
        )
    else:
        out["verdict"] = "keep"
        out["text"] = (
            f"keep the spawn/no-gain margin: none of its {m.serial} serial decisions would have "
            f"repaid the start-up, and none of {m.parallel} parallel runs was slower than its "
            "serial estimate"
        )
    return out


__all__ = ["SIZE_SETTINGS", "lowest_safe_size", "margin_advice", "size_advice"]
