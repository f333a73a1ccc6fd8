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

# --- the conservative facade (facade.py) ---------------------------------------------------
#: Fewest instances for which the facade goes parallel when the config sets no
#: ``min_instances_for_parallel``: with fewer, two workers get a handful of items each and the
#: dispatch cost is a visible share of the run.
FACADE_MIN_INSTANCES = 8
#: Fewest work items (instances x features) for which the facade goes parallel when the config
#: sets no ``tiny_workload_threshold``.
FACADE_TINY_WORK_ITEMS = 16
#: Seconds one work item (one instance x one feature) is assumed to cost when the caller gives no
#: ``seconds_per_item``: the estimate that the spawn-cost rule weighs against pool start-up.
FACADE_SECONDS_PER_WORK_ITEM = 0.0005
#: Start-up cost charged to a thread pool by the spawn-cost rule, in seconds.
THREAD_POOL_START_S = 0.001
#: Start-up cost charged to a process-based pool (loky, joblib, dask), in seconds; the platform's
#: own spawn cost (``Resources.spawn_cost_s``) is used instead when it is larger.
PROCESS_POOL_START_S = 0.27
#: Largest payload per task, in bytes, that the facade lets a process-based strategy pickle.
PROCESS_MAX_TASK_BYTES = 1024 * 1024
#: The subset strategy the facade runs when ``processes``, ``dask`` or ``auto`` is requested
#: without the full matrix.
FULL_MATRIX_SUBSTITUTE = "joblib"

HEURISTICS: tuple[Heuristic, ...] = (
    Heuristic(
        "CHUNKS_PER_WORKER",
        CHUNKS_PER_WORKER,
        "Default chunk size is ceil(n / (workers x 4)): dispatch overhead stays small for tiny "
        "items and the last chunk leaves a worker idle for at most a quarter of its share.",
        "evaluation/chunking.py (tiny, fine and coarse workloads, chunks per worker 1-16)",
    ),
    Heuristic(
        "FACADE_MIN_INSTANCES",
        FACADE_MIN_INSTANCES,
        "Below 8 instances two workers get at most 4 each, so a pool's dispatch and start-up "
        "costs are a large share of the run; also calibrated-explanations' default "
        "(min_instances_for_parallel=8), which callers migrating to the facade rely on.",
        "ANCHORS.md, tiny workload (10,000 x x*x): every pool adds 0.7-31 us per item and "
        "loses to serial; calibrated-explanations 1.0.2 ExplainConfig default",
    ),
    Heuristic(
        "FACADE_TINY_WORK_ITEMS",
        FACADE_TINY_WORK_ITEMS,
        "Below 16 work items the estimated work (16 x FACADE_SECONDS_PER_WORK_ITEM = 8 ms) is "
        "within a few ms, where any pool loses; matches the cap of calibrated-explanations' "
        "tiny-workload guard (max(2 x min_batch_size, 16)).",
        "ANCHORS.md lesson 'below a few ms of total work, any pool loses' (tiny workload row); "
        "calibrated-explanations 1.0.2 ParallelExecutor._tiny_workload_threshold",
    ),
    Heuristic(
        "FACADE_SECONDS_PER_WORK_ITEM",
        FACADE_SECONDS_PER_WORK_ITEM,
        "The facade does not time the caller's function; it assumes the cost of one "
        "instance x feature unit of a calibration/explanation workload. Callers with other "
        "costs pass seconds_per_item.",
        "ANCHORS.md: calibrated-explanations explain_factual, 200 rows, 1.12 s serial, i.e. "
        "5.6 ms per instance; 0.5 ms per instance x feature assumes about 11 features per "
        "instance (an assumption, not a measurement of the feature count)",
    ),
    Heuristic(
        "THREAD_POOL_START_S",
        THREAD_POOL_START_S,
        "A thread pool starts in about a millisecond, so the spawn-cost rule only keeps "
        "thread work serial when it is tiny.",
        "ANCHORS.md cold start: thread pool 1 ms",
    ),
    Heuristic(
        "PROCESS_POOL_START_S",
        PROCESS_POOL_START_S,
        "Process workers for loky and joblib start like spawned interpreters whatever the "
        "platform's start method; the facade goes parallel only when the estimated time saved "
        "(work x (1 - 1/workers)) exceeds this cold start, charged on every decision so that "
        "a decision never depends on whether an earlier call warmed a pool.",
        "ANCHORS.md cold start: loky 260 ms, joblib 270 ms (fork process pool 20 ms)",
    ),
    Heuristic(
        "PROCESS_MAX_TASK_BYTES",
        PROCESS_MAX_TASK_BYTES,
        "Pickling and copying arguments dominates process pools once tasks carry megabytes; "
        "the limit sits an order of magnitude below the payload measured to lose 20-50x.",
        "ANCHORS.md, large payload (32 x 8 MB arrays): process pool 0.03-0.05x, joblib 0.02x "
        "(0.36x reused), threads 1.2-1.5x",
    ),
    Heuristic(
        "FULL_MATRIX_SUBSTITUTE",
        FULL_MATRIX_SUBSTITUTE,
        "A request for processes, dask or auto without the full matrix most likely means "
        "CPU-bound work; joblib is the subset member that runs it in processes and caps "
        "numeric-library threads in its workers.",
        "ANCHORS.md: pure Python 200 x 5 ms joblib 1.87x vs process pool 1.8-2.0x; "
        "RandomForest perturbation joblib 1.73x vs process pool 1.5-1.75x; threads 0.6-1.07x",
    ),
)


def as_rows() -> list[dict[str, Any]]:
    """The table as plain dicts, for the docs appendix and ``ce-parallel doctor``."""
    return [
        {"name": h.name, "value": h.value, "reason": h.reason, "evidence": h.evidence}
        for h in HEURISTICS
    ]
