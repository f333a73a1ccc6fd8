"""Every threshold and default that steers a decision, in one table.

Each entry names the constant, its value, why it is what it is, and the measurement behind it
(a workload of ``evaluation/parallel_ablation.py`` or another script under ``evaluation/``).
Modules import the constants from here; the docs appendix is generated from ``HEURISTICS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Heuristic:
    """One named constant with the reason for its value and the evidence behind it."""

    name: str
    value: Any
    reason: str
    evidence: str


# --- chunking (executor.py) ---------------------------------------------------------------
#: Chunks per worker when the caller gives no chunk size: few enough that dispatch costs stay
#: negligible on tiny items, enough that one slow chunk does not leave the other workers idle.
CHUNKS_PER_WORKER = 4

HEURISTICS: tuple[Heuristic, ...] = (
    Heuristic(
        "CHUNKS_PER_WORKER",
        CHUNKS_PER_WORKER,
        "Default chunk size is ceil(n / (workers x 4)): dispatch overhead stays small for tiny "
        "items and the last chunk leaves a worker idle for at most a quarter of its share.",
        "evaluation/chunking.py (tiny, fine and coarse workloads, chunks per worker 1-16)",
    ),
)


def as_rows() -> list[dict[str, Any]]:
    """The table as plain dicts, for the docs appendix and ``ce-parallel doctor``."""
    return [
        {"name": h.name, "value": h.value, "reason": h.reason, "evidence": h.evidence}
        for h in HEURISTICS
    ]
