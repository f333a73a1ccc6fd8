"""Aggregates per call site, and the bounded map that links decisions to their runs.

Every number the report shows is a sum or a count kept here; no record is kept after it has been
counted, except a compact entry per decision id still waiting for its partner (``Linker``).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

#: Call site of records that carry none (version 1 records, fallbacks without a known decision).
UNLINKED = "(unlinked)"
#: Entries the linker keeps for decision ids still waiting for their run (or decision). In a
#: file written as the program runs, a run follows its decision within one map, so the map holds
#: about one entry per map in flight (plus decisions that never ran a map); 65,536 entries of a
#: few hundred bytes each bound it near 20 MB however long the file is. When it is full, the
#: oldest entry is dropped and counted as ``evicted``: its decision and run were counted already,
#: only the comparison of the two (time left on the table, saved, lost) is missing for it.
MAX_PENDING = 65_536
#: Reasons a serial decision gives when a threshold (not a switch) kept the work serial.
MARGIN_REASONS = ("spawn_cost", "no_clear_gain")
SIZE_REASONS = ("below_min_instances", "tiny_workload")


@dataclass
class SiteStats:
    """Everything the report says about one call site (or, merged, about all of them)."""

    decisions: int = 0
    serial_decisions: int = 0
    parallel_decisions: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    cost_sources: Counter[str] = field(default_factory=Counter)
    serial_runs: int = 0
    serial_items: int = 0
    serial_wall_s: float = 0.0
    parallel_runs: int = 0
    parallel_items: int = 0
    parallel_wall_s: float = 0.0
    busy_s: float = 0.0
    capacity_s: float = 0.0
    run_errors: Counter[str] = field(default_factory=Counter)
    run_fallbacks: int = 0
    linked: int = 0
    left_on_table_s: float = 0.0
    left_on_table_runs: int = 0
    left_by_reason: dict[str, float] = field(default_factory=dict)
    estimated_gain_s: float = 0.0
    estimated_gain_decisions: int = 0
    saved_s: float = 0.0
    lost_s: float = 0.0
    lost_runs: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)

    def merge(self, other: SiteStats) -> None:
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if isinstance(mine, Counter):
                mine.update(value)
            elif isinstance(mine, dict):
                for key, seconds in value.items():
                    mine[key] = mine.get(key, 0.0) + seconds
            else:
                setattr(self, name, mine + value)

    @property
    def efficiency_pct(self) -> float | None:
        """Measured parallel efficiency: busy / (workers x wall) over runs with busy time."""
        return None if self.capacity_s <= 0 else round(100.0 * self.busy_s / self.capacity_s, 2)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in vars(self).items():
            if isinstance(value, Counter):
                out[name] = dict(value.most_common())
            elif isinstance(value, float):
                out[name] = round(value, 6)
            else:
                out[name] = value
        out["left_by_reason"] = {
            k: round(v, 6) for k, v in sorted(self.left_by_reason.items(), key=lambda kv: -kv[1])
        }
        out["efficiency_pct"] = self.efficiency_pct
        return out


_INFINITIES = (math.inf, -math.inf)


def _finite(value: Any) -> float | None:
    """A number that can be summed, else None: nan and the infinities (estimates json_safe wrote
    as strings), None, booleans and anything else count as unknown."""
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is int:
        return float(value)
    return None


def _int(value: Any, default: int = 0) -> int:
    return value if type(value) is int else default


def left_on_table(wall_s: float, budget: int, start_cost_s: float) -> float:
    """Seconds a serial run would have saved in parallel: ``wall - (wall / budget + start)``.

    The measured serial wall time split over the decision's CPU budget, plus the pool start-up
    the decision charged; never negative, and 0 with fewer than 2 CPUs.
    """
    if budget < 2:
        return 0.0
    return max(0.0, wall_s - (wall_s / budget + start_cost_s))


@dataclass
class SizeEvidence:
    """Serial decisions of one size-threshold reason, by size: [decisions, gainers, wall, left]."""

    by_size: dict[int, list[float]] = field(default_factory=dict)
    #: distinct sizes kept; sizes are below the threshold that produced them, so few
    max_sizes: int = 10_000
    dropped: int = 0

    def add(self, size: int, wall: float, left: float) -> None:
        self._add(size, 1, left > 0, wall, left)

    def merge(self, other: SizeEvidence) -> None:
        for size, (decisions, gainers, wall, left) in other.by_size.items():
            self._add(size, int(decisions), int(gainers), wall, left)
        self.dropped += other.dropped

    def _add(self, size: int, decisions: int, gainers: int, wall: float, left: float) -> None:
        row = self.by_size.get(size)
        if row is None:
            if len(self.by_size) >= self.max_sizes:
                self.dropped += decisions
                return
            row = self.by_size[size] = [0, 0, 0.0, 0.0]
        row[0] += decisions
        row[1] += gainers
        row[2] += wall
        row[3] += left


@dataclass
class MarginEvidence:
    """Serial decisions the spawn/no-gain margin made, and parallel runs that lost time."""

    serial: int = 0
    gainers: int = 0
    serial_wall_s: float = 0.0
    left_s: float = 0.0
    parallel: int = 0
    losers: int = 0
    lost_s: float = 0.0

    def merge(self, other: MarginEvidence) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


class Aggregator:
    """Counts records as they come; ``sites`` holds one ``SiteStats`` per call site."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.sites: dict[str, SiteStats] = {}
        self.events: Counter[str] = Counter()
        self.fallback_causes: Counter[str] = Counter()
        self.fallback_stages: Counter[str] = Counter()
        self.sizes = {reason: SizeEvidence() for reason in SIZE_REASONS}
        self.margin = MarginEvidence()
        self.unlinked_decisions = 0
        self.unlinked_runs = 0
        self.duplicates = 0
        self.evicted = 0
        self.decisions_without_run = 0
        self.runs_without_decision = 0
        self.first_time: float | None = None
        self.last_time: float | None = None
        self.processes: set[tuple[str, int]] = set()
        self.max_processes = 10_000
        self._last_process: tuple[str, int] | None = None
        self._max_pending = max_pending
        # decision id -> [decision summary | None, run summary | None, fallback causes | None]
        self._pending: OrderedDict[str, list[Any]] = OrderedDict()

    def site(self, name: str) -> SiteStats:
        stats = self.sites.get(name)
        if stats is None:
            stats = self.sites[name] = SiteStats()
        return stats

    @property
    def pending(self) -> int:
        return len(self._pending)

    def merge(self, other: Aggregator) -> None:
        """Add what ``other`` counted, as if its records had followed this one's in one file.

        Both must be unfinished. A link waiting in ``other`` is completed by its partner
        waiting here, or waits on here; nothing is counted twice.
        """
        for name, stats in other.sites.items():
            self.site(name).merge(stats)
        self.events.update(other.events)
        self.fallback_causes.update(other.fallback_causes)
        self.fallback_stages.update(other.fallback_stages)
        for reason, evidence in other.sizes.items():
            self.sizes[reason].merge(evidence)
        self.margin.merge(other.margin)
        self.unlinked_decisions += other.unlinked_decisions
        self.unlinked_runs += other.unlinked_runs
        self.duplicates += other.duplicates
        self.evicted += other.evicted
        for mine, theirs, pick in (
            ("first_time", other.first_time, min),
            ("last_time", other.last_time, max),
        ):
            here = getattr(self, mine)
            if theirs is not None:
                setattr(self, mine, theirs if here is None else pick(here, theirs))
        for process in other.processes:
            if len(self.processes) >= self.max_processes:
                break
            self.processes.add(process)
        for decision_id, (decision, run, causes) in other._pending.items():
            # the causes first: a pair completed below is compared with its fallbacks
            if causes:
                self._add_causes(decision_id, causes)
            for slot, summary in ((0, decision), (1, run)):
                if summary is not None:
                    self._link(decision_id, slot, summary)

    # -- records ----------------------------------------------------------------------------

    def add(self, version: int, record: dict[str, Any]) -> None:
        # the hot path of the report: one call per line, so the helpers are inlined here
        get = record.get
        event = record["event"]
        self.events[event] += 1
        when = get("time")
        # nan compares unequal to itself; the infinities are no time either
        if (type(when) is float or type(when) is int) and when == when and when not in _INFINITIES:
            if self.first_time is None or when < self.first_time:
                self.first_time = when
            if self.last_time is None or when > self.last_time:
                self.last_time = when
        pid = get("pid")
        if type(pid) is int:
            process = (str(get("host")), pid)
            if process != self._last_process and len(self.processes) < self.max_processes:
                self.processes.add(process)
                self._last_process = process
        if event == "decision":
            self._decision(version, record)
        elif event == "run":
            self._run(version, record)
        elif event == "fallback":
            self._fallback(version, record)

    def _decision(self, version: int, record: dict[str, Any]) -> None:
        get = record.get
        said = get("use_parallel")
        # version 1 records of the calibrated-explanations adapter say "sequential" instead
        parallel = get("decision") == "parallel" if said is None else said is True
        decision_id = get("decision_id") if version >= 2 else None
        site_name = get("call_site") if decision_id else UNLINKED
        if type(site_name) is not str:
            site_name = UNLINKED
        stats = self.sites.get(site_name) or self.site(site_name)
        stats.decisions += 1
        if parallel:
            stats.parallel_decisions += 1
        else:
            stats.serial_decisions += 1
        reason = str(get("reason"))
        stats.reasons[reason] += 1
        source = get("cost_source")
        if type(source) is str:
            stats.cost_sources[source] += 1
        if not decision_id:
            self.unlinked_decisions += 1
            return
        start = _finite(get("start_cost_s"))
        summary = (
            site_name,
            parallel,
            reason,
            _int(get("n_instances")),
            _int(get("n_features"), 1),
            _int(get("cpu_budget"), _int(get("workers"), 1)),
            0.0 if start is None else start,
            _finite(get("estimated_serial_s")),
            _finite(get("estimated_parallel_s")),
        )
        self._link(decision_id, 0, summary)

    def _run(self, version: int, record: dict[str, Any]) -> None:
        get = record.get
        decision_id = get("decision_id") if version >= 2 else None
        if version >= 2:
            serial = record["serial"] is True
        else:  # version 1 run records come from pooled maps; a serial strategy names itself
            serial = get("strategy") in ("sequential", "serial")
        site_name = get("call_site") if decision_id else UNLINKED
        if type(site_name) is not str:
            site_name = UNLINKED
        stats = self.sites.get(site_name) or self.site(site_name)
        wall = _finite(get("wall_time_s")) or 0.0
        items = _int(get("items"))
        if serial:
            stats.serial_runs += 1
            stats.serial_items += items
            stats.serial_wall_s += wall
        else:
            stats.parallel_runs += 1
            stats.parallel_items += items
            stats.parallel_wall_s += wall
            busy = _finite(get("busy_time_s"))
            if busy is not None:
                stats.busy_s += busy
                stats.capacity_s += _int(get("workers"), 1) * wall
        error = get("error")
        if type(error) is str:
            stats.run_errors[error] += 1
        fallbacks = get("fallbacks")
        if fallbacks and type(fallbacks) is int:
            stats.run_fallbacks += fallbacks
        if not decision_id:
            self.unlinked_runs += 1
            return
        self._link(decision_id, 1, (site_name, serial, wall, items))

    def _fallback(self, version: int, record: dict[str, Any]) -> None:
        cause = str(record.get("cause"))
        self.fallback_causes[cause] += 1
        self.fallback_stages[str(record.get("stage"))] += 1
        decision_id = record.get("decision_id") if version >= 2 else None
        if not decision_id:
            self.site(UNLINKED).fallbacks[cause] += 1
            return
        self._add_causes(decision_id, [cause])

    # -- linking ----------------------------------------------------------------------------

    def _add_causes(self, decision_id: str, causes: list[str]) -> None:
        entry = self._pending.get(decision_id)
        if entry is None:
            entry = self._new_entry(decision_id)
        if entry[2] is None:
            entry[2] = []
        entry[2].extend(causes)

    def _new_entry(self, decision_id: str) -> list[Any]:
        if len(self._pending) >= self._max_pending:
            _, oldest = self._pending.popitem(last=False)
            self.evicted += 1
            self._settle(oldest, at_end=False)
        entry: list[Any] = [None, None, None]
        self._pending[decision_id] = entry
        return entry

    def _link(self, decision_id: str, slot: int, summary: tuple[Any, ...]) -> None:
        entry = self._pending.get(decision_id)
        if entry is None:
            entry = self._new_entry(decision_id)
        elif entry[slot] is not None:
            # a second decision (or run) with the same id: counted above, not linked again
            self.duplicates += 1
            return
        entry[slot] = summary
        if entry[0] is not None and entry[1] is not None:
            del self._pending[decision_id]
            self._pair(entry[0], entry[1], entry[2])

    def _pair(self, decision: tuple[Any, ...], run: tuple[Any, ...], causes: Any) -> None:
        site_name, parallel, reason, n_instances, n_features, budget, start, est_serial, est_par = (
            decision
        )
        wall = run[2]
        stats = self.site(site_name)
        stats.linked += 1
        if causes:
            stats.fallbacks.update(causes)
        if not parallel:
            left = left_on_table(wall, budget, start)
            if left > 0:
                stats.left_on_table_s += left
                stats.left_on_table_runs += 1
                stats.left_by_reason[reason] = stats.left_by_reason.get(reason, 0.0) + left
            if est_serial is not None and est_par is not None and est_par < est_serial:
                stats.estimated_gain_s += est_serial - est_par
                stats.estimated_gain_decisions += 1
            if reason == "below_min_instances":
                self.sizes[reason].add(n_instances, wall, left)
            elif reason == "tiny_workload":
                self.sizes[reason].add(n_instances * n_features, wall, left)
            elif reason in MARGIN_REASONS:
                self.margin.serial += 1
                self.margin.gainers += left > 0
                self.margin.serial_wall_s += wall
                self.margin.left_s += left
        elif est_serial is not None:
            self.margin.parallel += 1
            if wall > est_serial:
                stats.lost_s += wall - est_serial
                stats.lost_runs += 1
                self.margin.losers += 1
                self.margin.lost_s += wall - est_serial
            else:
                stats.saved_s += est_serial - wall

    def _settle(self, entry: list[Any], *, at_end: bool) -> None:
        """An entry that will not be paired: count it, and file its fallbacks under its site."""
        decision, run, causes = entry
        if at_end:
            if decision is not None and run is None:
                self.decisions_without_run += 1
            elif run is not None and decision is None:
                self.runs_without_decision += 1
        if causes:
            known = decision if decision is not None else run
            self.site(known[0] if known is not None else UNLINKED).fallbacks.update(causes)

    def finish(self) -> None:
        """Count what is still waiting for a partner; call once after the last record."""
        while self._pending:
            _, entry = self._pending.popitem(last=False)
            self._settle(entry, at_end=True)


__all__ = [
    "MARGIN_REASONS",
    "MAX_PENDING",
    "SIZE_REASONS",
    "UNLINKED",
    "Aggregator",
    "MarginEvidence",
    "SiteStats",
    "SizeEvidence",
    "left_on_table",
]
