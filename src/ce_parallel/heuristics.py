"""Every threshold and default that steers a decision, in one table.

Each entry names the constant, its value, why it is what it is, and the measurement behind it
(a workload of ``evaluation/parallel_ablation.py`` or another script under ``evaluation/``).
Modules import the constants from here; the docs appendix is generated from ``HEURISTICS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .resources import POOL_START_SECONDS


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
#: Least measured work, in seconds, a chunk of a pool that pickles its work carries when an
#: earlier map of the same function ran steadily: a chunk's dispatch (about
#: ``PROCESS_CHUNK_OVERHEAD_S``) then stays near 5% of it, and a short map is cut into fewer,
#: equal chunks instead of ``CHUNKS_PER_WORKER`` per worker.
CHUNK_MIN_WORK_S = 0.005
#: Largest spread of the seconds per item between an earlier map's chunks, relative to the
#: typical chunk, for which that map counts as steady (see ``CHUNK_MIN_WORK_S`` and
#: ``chunks.steady_cost``).
CHUNK_STEADY_SPREAD = 0.25

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
#: Largest payload per task, in bytes, that the facade lets a process-based strategy pickle.
PROCESS_MAX_TASK_BYTES = 1024 * 1024
#: The subset strategy the facade runs when ``processes``, ``dask`` or ``auto`` is requested
#: without the full matrix.
FULL_MATRIX_SUBSTITUTE = "joblib"

# --- the one gate (gate.py) and automatic selection (selection.py, strategies/auto.py) -----
#: Parallel work is chosen (by the facade's gate and by auto) only when its estimated time is at
#: least this many times shorter than the serial loop's.
MIN_PARALLEL_GAIN = 1.2
#: The facade pilots the first items of a map with no cost hint only when the map has at least
#: this many items: with fewer, the one piloted item is already a large share of the work, and
#: the count rules and the assumed cost decide.
FACADE_PILOT_MIN_ITEMS = 8
#: A run whose time is more than this many times off its prediction replaces the remembered
#: measurement (the pilot misjudged the function, or the machine changed).
RECHECK_FACTOR = 2.0
#: A parallel run of ``auto`` that takes this many times the estimate of the best pool it did
#: not choose counts as far off its prediction (see ``RECHECK_FACTOR``): two such runs in a row
#: and what it measured is remembered, so the next choice weighs it against that pool.
RUNNER_UP_MARGIN = 1.2
#: ... unless both the run and its prediction are shorter than this (seconds): too short to
#: measure, and too short for any pool to pay.
RECHECK_MIN_S = 0.002
#: A function kept off a pool by what that pool measured (``Measurement.observed``) has those
#: measurements forgotten after this many maps run elsewhere (serially, or on another pool),
#: so the model is weighed (and the pool tried, and checked by two runs) again: at most 2 of
#: every this many maps run on a pool that may lose, while two slow runs in a noisy spell no
#: longer keep a function off a pool for good.
OBSERVED_RETRY_MAPS = 16
#: A cold pool is charged 1/this of its start cost: pools are reused across maps.
AUTO_EXPECTED_MAPS_PER_POOL = 4
#: The serial pilot runs the first items until this many seconds have passed ...
PILOT_TARGET_S = 0.005
#: ... or until this share of the items has run (at least one item).
PILOT_MAX_FRACTION = 0.05
#: ... but while it has taken less than this (seconds) it goes on past that share.
PILOT_FREE_S = 0.001
#: The thread probe runs enough items for this many seconds per thread ...
PROBE_TARGET_S = 0.02
#: ... and at least this many items per thread, whatever the share cap below says ...
PROBE_MIN_ITEMS_PER_THREAD = 2
#: Below this CPU share in the serial pilot items mostly wait (sleep, I/O): their threads'
#: wall-clock speed-up, not their CPU use, says whether they hold the GIL.
PILOT_MIN_CPU_RATIO = 0.5
#: ... but at most this share of the items (at least one per thread).
PROBE_MAX_FRACTION = 0.1
#: Probe threads note their clocks about this often (seconds), to read the probe over the time
#: every thread was running.
PROBE_SAMPLE_S = 0.0005
#: Work releases the GIL when n probe threads keep 1 + this x (n - 1) times as many CPUs busy
#: as the serial pilot did (or, for items that mostly wait, run that much faster).
GIL_RELEASE_MIN_SCALING = 0.5
#: Below this much estimated serial work (seconds) auto stays serial without probing threads.
AUTO_MIN_PARALLEL_WORK_S = 0.01
#: A facade asking for threads probes a remembered function whose GIL use is unknown (its pilot
#: left too little to probe) on a later map with at least this much work (seconds): the probe
#: runs that map's items, on threads, at no less than the serial rate.
THREAD_PROBE_MIN_WORK_S = 0.002
#: Dispatch cost of one chunk on a warm thread pool, in seconds.
THREAD_CHUNK_OVERHEAD_S = 15e-6
#: Dispatch cost of one chunk on a warm loky process pool, in seconds.
PROCESS_CHUNK_OVERHEAD_S = 250e-6
#: Bytes per second a loky worker receives pickled arguments at.
PROCESS_BYTES_PER_S = 400e6
#: Smallest NumPy array, in bytes, that the process strategy sends through shared memory
#: (``shared_arrays``) instead of pickling it into every chunk that holds it.
SHARED_ARRAY_MIN_BYTES = 256 * 1024
#: Smallest buffer, in bytes, that a process worker sends back in a result through a file
#: under ``/dev/shm`` (``result_segments``) instead of through the pool's result pipe.
RESULT_SEGMENT_MIN_BYTES = 256 * 1024
#: Arrays below this many bytes are pickled to and from process workers with
#: ``ndarray.__reduce__`` (rebuilt in C) rather than protocol 5's per-array Python call.
SMALL_ARRAY_PICKLE_BYTES = 64 * 1024
#: Smallest pickled object, in bytes, that the process strategy sends once per worker
#: (``shared_objects``) instead of pickling it into every chunk that holds it.
SHARED_OBJECT_MIN_BYTES = 64 * 1024
#: CPUs of the budget that a pool's warm-up tasks leave to the caller, which runs the map's
#: first items meanwhile (``warmup``).
WARMUP_CALLER_CPUS = 1
#: A map of at most this many items on a pool that pickles nothing (threads) is cut finer than
#: ``CHUNKS_PER_WORKER``: ``CHEAP_CHUNKS_PER_WORKER`` chunks per worker.
CHEAP_CHUNKS_MAX_ITEMS = 64
#: Chunks per worker for such a map: a chunk costs a future and a claim there (no pickling, no
#: queue hand-off), and a last chunk of many items keeps the other workers waiting.
CHEAP_CHUNKS_PER_WORKER = 8
#: Fixed cost of one joblib.Parallel call, even with warm workers, in seconds.
JOBLIB_CALL_OVERHEAD_S = 0.0005
#: Whether process workers are sized by physical cores instead of logical CPUs.
PHYSICAL_CORES_FOR_PROCESSES = False

# --- the calibrated-explanations adapter (compat/calibrated_explanations.py) ------------------
#: Rows per instance task when the caller sets no ``instance_chunk_size``: each task pays a fixed
#: set-up (explanation container, explainer snapshot, pickling the explainer to a worker), so a
#: task must hold enough rows to make that a small share of its time.
CE_INSTANCE_CHUNK_ROWS = 100

# --- the field report (fieldreport/pieces.py) ------------------------------------------------
#: A telemetry file is cut into pieces read in parallel only when each piece gets at least this
#: many bytes: below it a pool's start-up is a large share of the reading.
REPORT_PIECE_BYTES = 64 * 1024 * 1024
#: Seconds the report spends per byte of telemetry, the cost hint its pieces are mapped with.
REPORT_SECONDS_PER_BYTE = 1.2e-8

HEURISTICS: tuple[Heuristic, ...] = (
    Heuristic(
        "CHUNKS_PER_WORKER",
        CHUNKS_PER_WORKER,
        "Default chunk size is ceil(n / (workers x 4)): dispatch overhead stays small for tiny "
        "items and the last chunk leaves a worker idle for at most a quarter of its share.",
        "evaluation/chunking.py, evaluation/results/chunking.json (quiet machine, 2 workers): "
        "4 chunks per worker is best on tiny for processes (4.2 ms; 1: 4.9, 16: 13.8, "
        "chunksize=1: 19,876 ms) and threads, best on 16 x 100 ms with processes, and within "
        "13% of the best on 200 x 5 ms",
    ),
    Heuristic(
        "CHUNK_MIN_WORK_S",
        CHUNK_MIN_WORK_S,
        "A chunk on a pool that pickles its work costs about PROCESS_CHUNK_OVERHEAD_S (250 us) "
        "to dispatch; at 5 ms of work that is 5%. Only maps of steady items (an earlier map's "
        "chunks agreed within CHUNK_STEADY_SPREAD) are cut coarser, so balance is not lost on "
        "items of uneven cost; maps of more than CHUNKS_PER_WORKER x workers x 5 ms keep the "
        "usual chunks.",
        "python evaluation/map_latency.py --maps 500 --blocks 5 "
        "(evaluation/results/map_latency.json), 50 x 200 us on 2 warm workers: ce:processes "
        "6.01 ms a map with its 2 planned chunks, 6.66 ms with chunksize=13 (4 chunks); "
        "cf.ProcessPoolExecutor 8.85 ms (chunksize=1), 6.59 ms (chunksize=13); loky 6.35 ms "
        "(chunksize=13)",
    ),
    Heuristic(
        "CHUNK_STEADY_SPREAD",
        CHUNK_STEADY_SPREAD,
        "Chunks whose seconds per item differ by more than a quarter of the typical chunk are "
        "taken for items of uneven cost, where fewer chunks would leave a worker idle; such a "
        "map gets the usual chunks again. From four chunks on, the spread is the middle half's "
        "and the typical chunk the median: on two CPUs the caller's pickling slows one or two "
        "chunks of every map, a different one each time, which says nothing of the items.",
        "a judgement, not a measurement: it is the share of one worker's time that a last "
        "chunk may leave another idle under CHUNKS_PER_WORKER = 4. The middle half: 32 sums "
        "of 7.6 MiB arrays in shared memory (as_shared) on 2 process workers had 1-2 of 8 "
        "chunks at 2-3x the others' seconds per item in every map, so never went to 2 chunks "
        "(python evaluation/large_arrays.py, evaluation/results/large_arrays.md: "
        "ce:processes-as_shared, 32 sums of arrays in shared memory, ran 8 chunks a map "
        "before and 3.4 a map on average since, 0.66x the loop)",
    ),
    Heuristic(
        "RESULT_SEGMENT_MIN_BYTES",
        RESULT_SEGMENT_MIN_BYTES,
        "A result buffer written to a /dev/shm file by the worker and mapped copy-on-write by "
        "the caller costs one copy and a file's creation; through loky's result pipe it is "
        "copied about five times. The files win from 64 KiB on; 256 KiB keeps the count of "
        "files (and resource-tracker messages) per result low.",
        "python evaluation/large_arrays.py --repeats 9 (evaluation/results/large_arrays.md, "
        "'Result threshold' table), one result array per item on 2 process workers, files "
        "against the pipe: 64 KiB x 1024 items 45.9 against 159.4 ms, 256 KiB x 256 41.0 "
        "against 112.5 ms, 1 MiB x 64 32.2 against 94.4 ms, 4 MiB x 16 24.2 against 112.5 ms",
    ),
    Heuristic(
        "CHEAP_CHUNKS_MAX_ITEMS",
        CHEAP_CHUNKS_MAX_ITEMS,
        "Up to 64 items, the usual 4 chunks per worker are chunks of up to 8 items on threads, "
        "where the last of them can keep the other worker idle for most of its time; past 64 "
        "the usual chunks are small against the map.",
        "a judgement: the size of map below which the finer cut of CHEAP_CHUNKS_PER_WORKER "
        "is measured (evaluation/results/large_arrays.md)",
    ),
    Heuristic(
        "CHEAP_CHUNKS_PER_WORKER",
        CHEAP_CHUNKS_PER_WORKER,
        "On threads each worker claims the next chunk when it is free, so balance needs no "
        "single-item chunks, and each chunk still costs its future, a claim and the collecting "
        "thread's bookkeeping (a few microseconds, during which the workers wait for the GIL "
        "between items that release it).",
        "python evaluation/large_arrays.py --repeats 9 (evaluation/results/large_arrays.md, "
        "'Thread chunks'), 72 interleaved runs, 32 np.sum on 2 threads, medians: even arrays "
        "in chunks of 1, 2, 4: 6.23, 5.82, 5.70 ms, ThreadPoolExecutor 6.13 ms; uneven "
        "(Pareto sizes) 6.17, 6.21, 6.89 ms, ThreadPoolExecutor 6.75 ms. Chunks of 2 (8 per "
        "worker) are within 1% of the best on both; chunks of 4 lose 12% on uneven arrays",
    ),
    Heuristic(
        "FACADE_MIN_INSTANCES",
        FACADE_MIN_INSTANCES,
        "Below 8 instances two workers get at most 4 each, so a pool's dispatch and start-up "
        "costs are a large share of the run; also calibrated-explanations' default "
        "(min_instances_for_parallel=8), which callers migrating to the facade rely on.",
        "evaluation/results/full.md, tiny (10,000 x x*x, 0.83 ms serial): every pool loses to "
        "serial (0.00-0.46x), adding 0.1-36 us per item (full.json medians); "
        "calibrated-explanations 1.0.2 ExplainConfig default",
    ),
    Heuristic(
        "FACADE_TINY_WORK_ITEMS",
        FACADE_TINY_WORK_ITEMS,
        "Below 16 work items the estimated work (16 x FACADE_SECONDS_PER_WORK_ITEM = 8 ms) is "
        "within a few ms, where any pool loses; matches the cap of calibrated-explanations' "
        "tiny-workload guard (max(2 x min_batch_size, 16)).",
        "evaluation/results/full.md, tiny row (0.83 ms of work): every pool loses to serial; "
        "calibrated-explanations 1.0.2 ParallelExecutor._tiny_workload_threshold",
    ),
    Heuristic(
        "FACADE_SECONDS_PER_WORK_ITEM",
        FACADE_SECONDS_PER_WORK_ITEM,
        "The facade does not time the caller's function; it assumes the cost of one "
        "instance x feature unit of a calibration/explanation workload. Callers with other "
        "costs pass seconds_per_item.",
        "evaluation/results/ce_compat.md (python evaluation/ce_compat_bench.py --rounds 7): "
        "explain_factual on 200 rows of the 30-feature breast-cancer data, 2.09 s serial "
        "median, i.e. 10 ms per instance or 0.35 ms per instance x feature",
    ),
    Heuristic(
        "PROCESS_MAX_TASK_BYTES",
        PROCESS_MAX_TASK_BYTES,
        "Pickling and copying arguments dominates process pools once tasks carry megabytes; "
        "the limit sits an order of magnitude below the payload measured to lose 20-50x.",
        "evaluation/results/full.md, payload (32 x 8 MB arrays): cf:processes, loky, "
        "joblib.Parallel and ce:processes 0.01x, ce:joblib 0.21x, threads 1.15-1.20x",
    ),
    Heuristic(
        "FULL_MATRIX_SUBSTITUTE",
        FULL_MATRIX_SUBSTITUTE,
        "A request for processes, dask or auto without the full matrix most likely means "
        "CPU-bound work; joblib is the subset member that runs it in processes and caps "
        "numeric-library threads in its workers.",
        "evaluation/results/full.md: cpu_fine (200 x 5 ms pure Python) ce:joblib 2.19x vs "
        "ce:processes 1.89x; perturbation (RandomForest) ce:joblib 1.64x vs ce:processes "
        "1.83x; ce:threads 0.72-1.07x on both kinds",
    ),
    # automatic selection and resources
    Heuristic(
        "MIN_PARALLEL_GAIN",
        MIN_PARALLEL_GAIN,
        "Estimates from a few pilot items are off by 10-20% on a noisy machine; demanding 1.2x "
        "keeps the facade and auto within 5% of serial when an estimate is that optimistic.",
        "evaluation/results/README.md: differences under ~10% are ties on this machine; "
        "evaluation/parallel_ablation.py, auto vs sequential on every workload; "
        "evaluation/results/facade_grid.json, the facade on a cost x count grid",
    ),
    Heuristic(
        "FACADE_PILOT_MIN_ITEMS",
        FACADE_PILOT_MIN_ITEMS,
        "A pilot keeps its results, but runs serially: one item of a map of n costs up to 1/n of "
        "the work without parallelism. From 8 items on 2 workers that share is at most 1/8, and "
        "the measured cost decides the rest.",
        "evaluation/facade_grid.py (cost x count grid, evaluation/results/facade_grid.json): "
        "30 ms x 10 items is the smallest cell that pilots",
    ),
    Heuristic(
        "RECHECK_FACTOR",
        RECHECK_FACTOR,
        "A run within 2x of its prediction confirms the measurement (machine noise and cold "
        "first items stay well inside it); a run further off means the pilot misjudged the work "
        "(for example its GIL use), and what the run measured replaces what was remembered.",
        "tests/unit/test_gate.py (injected runs); auto once chose threads for GIL-bound work "
        "after a misjudged probe and kept it (1.99x slower for every later call)",
    ),
    Heuristic(
        "RUNNER_UP_MARGIN",
        RUNNER_UP_MARGIN,
        "When threads and a pool that pickles are estimated close, a run of the chosen one well "
        "inside RECHECK_FACTOR of its own estimate can still be slower than the other would "
        "have been. The margin is MIN_PARALLEL_GAIN's: a pool is chosen over the loop when "
        "estimated 1.2x faster, and threads are left for a pool that pickles when that pool "
        "is estimated 1.2x faster than they ran (two runs in a row), or kept on GIL-free items "
        "unless it is estimated 1.2x faster than them. At 1.1 a noisy spell moved NumPy "
        "matmuls, fastest on threads, to processes and joblib in turn (regret 1.17 in one run "
        "of python evaluation/parallel_ablation.py --workloads numpy,perturbation,bootstrap,cv).",
        "python evaluation/parallel_ablation.py (evaluation/results/full.md), cv: 8 folds "
        "whose forest fits release the GIL in part. Before, auto chose threads, estimated at "
        "463 ms (1.95x on 2 workers), and kept them at 590-690 ms a map where processes and "
        "joblib took about 490 ms (regret 1.30). Now its first two maps run threads (0.64, "
        "0.70 s) and the rest processes (0.51-0.54 s): regret 1.08 over 5 repeats",
    ),
    Heuristic(
        "RECHECK_MIN_S",
        RECHECK_MIN_S,
        "A map of 10 items of 1 us is timed anywhere from 0.2 to 14 us per item from one call to "
        "the next (the clock, the cache, a thread switch): rechecking such runs replaced the "
        "measurement on most calls, so the facade asked again every time. Below 2 ms no pool "
        "pays (a warm thread pool's dispatch and join alone take ~0.3 ms here), so what such a "
        "run measures cannot change a decision.",
        "python evaluation/facade_grid.py --quick (the 1 us and 30 us rows)",
    ),
    Heuristic(
        "AUTO_EXPECTED_MAPS_PER_POOL",
        AUTO_EXPECTED_MAPS_PER_POOL,
        "An auto executor keeps its pools for later maps, so one map pays a share of a cold "
        "start; while a process pool starts, auto runs items in the caller, so the first map "
        "loses at most the start-up contention.",
        "cpu_fine quick (40 x 5 ms): serial 0.2 s, warm processes ~0.1 s, loky start 0.2 s: "
        "charging the full start keeps auto serial on every repeat (2x the best)",
    ),
    Heuristic(
        "PILOT_TARGET_S",
        PILOT_TARGET_S,
        "5 ms of serial items gives a per-item time well above timer noise; its results are "
        "kept, so the pilot costs at most 5 ms x (1 - 1/workers) of lost parallelism.",
        "tiny (10,000 x x*x): the pilot stops at 5% of the items and the rest run as the plain "
        "loop; cpu_coarse (100 ms items): the pilot is one item",
    ),
    Heuristic(
        "PILOT_MAX_FRACTION",
        PILOT_MAX_FRACTION,
        "The pilot runs serially; capping it at 5% of the items bounds that serial share.",
        "cpu_fine full (200 x 5 ms): the pilot runs 1-2 items, 1% of the work",
    ),
    Heuristic(
        "PILOT_FREE_S",
        PILOT_FREE_S,
        "A pilot capped at 5% of a 10-item map times one item; one sample of a 1 us item read "
        "1 ms once (a cold first call), and the facade then chose joblib for a map it ran 747x "
        "slower than the loop. Items run in the pilot cost what the loop costs, and 1 ms is less "
        "than a warm pool's dispatch and join (~0.3 ms for threads, more for processes) could "
        "save, so the pilot goes on past the share until 1 ms has passed.",
        "python evaluation/facade_grid.py --quick (the 1 us x 10 cell for joblib)",
    ),
    Heuristic(
        "PROBE_TARGET_S",
        PROBE_TARGET_S,
        "Probe results are kept, so a longer probe costs almost nothing, while a probe of one "
        "few-ms item per thread misjudged GIL use a third of the time (one thread finishing "
        "early, cold first items); 20 ms per thread made it reliable.",
        "python evaluation/pilot_gil.py --probes 10 (then a timed unit test), on a quiet "
        "machine: pure Python 10/10 hold, zlib 0/10, sleep 0/10 (with 4 ms and one item per "
        "thread: zlib judged holding 2 of 3)",
    ),
    Heuristic(
        "PROBE_MIN_ITEMS_PER_THREAD",
        PROBE_MIN_ITEMS_PER_THREAD,
        "With one item per thread the threads' start skew is a large share of the probe.",
        "same measurement as PROBE_TARGET_S",
    ),
    Heuristic(
        "OBSERVED_RETRY_MAPS",
        OBSERVED_RETRY_MAPS,
        "The serial and pooled times of one grid cell vary by 1.3x from one run of the grid to "
        "the next on this machine, and two slow runs in a row turned a cell serial for the rest "
        "of the process (joblib 3 ms x 10: parallel at 0.94-0.96 regret in two runs, serial at "
        "1.33 in the third). Retrying after 16 serial maps costs at most 2/16 of the maps a "
        "pool's loss (a 1.37x loss: under 5% on average).",
        "python evaluation/facade_grid.py --quick --repeats 5, run several times in a row (the "
        "committed facade_grid.json is the last run; the earlier runs are not kept)",
    ),
    Heuristic(
        "THREAD_PROBE_MIN_WORK_S",
        THREAD_PROBE_MIN_WORK_S,
        "A 10-item map of 300 us SHA-256 items (3 ms) was piloted almost whole on its first "
        "call, so no thread probe ran; unprobed items are assumed to hold the GIL, and the "
        "facade stayed serial on every later call while threads ran the map 1.5x faster. Below "
        "about 1 ms of work threads lose whatever the GIL does (30 us x 10: 0.36x the loop, "
        "1 us x 1,000: 0.73x); from 3 ms GIL-free items win 1.2-1.9x.",
        "python evaluation/facade_grid.py --quick (threads, the 300 us x 10 and 30 us x 100 cells)",
    ),
    Heuristic(
        "PILOT_MIN_CPU_RATIO",
        PILOT_MIN_CPU_RATIO,
        "GIL use is judged from how many CPUs the probe threads kept busy relative to the serial "
        "pilot (load on the machine cancels out of that ratio); items that keep less than half "
        "a CPU busy mostly wait, and their threads' wall-clock speed-up decides instead.",
        "sleep workload: pilot CPU share ~0.01; pure-Python and zlib workloads: ~1.0",
    ),
    Heuristic(
        "PROBE_MAX_FRACTION",
        PROBE_MAX_FRACTION,
        "Probe items of GIL-bound work run no faster than serial; the cap bounds that loss.",
        "cpu_coarse quick (4 x 100 ms): the probe runs one item per thread",
    ),
    Heuristic(
        "GIL_RELEASE_MIN_SCALING",
        GIL_RELEASE_MIN_SCALING,
        "Two threads of GIL-bound Python keep ~1.0 CPU busy (and run ~1.0x faster than one), "
        "GIL-free NumPy, zlib or sleeps ~1.8-2.0; the midpoint (1.5 on two threads) separates "
        "them with margin.",
        "evaluation/results/full.md: ce:threads 1.04-1.07x on pure Python (cpu_fine, "
        "cpu_coarse), 1.68x on NumPy with 1 BLAS thread; RandomForest perturbation (threads "
        "0.72x) counts as GIL-bound",
    ),
    Heuristic(
        "AUTO_MIN_PARALLEL_WORK_S",
        AUTO_MIN_PARALLEL_WORK_S,
        "Starting probe threads and a pool costs ~0.2-1 ms on a busy machine; below 10 ms of "
        "work that is more than the 5% auto may lose to serial, and the gain is a few ms.",
        "evaluation/results/full.md, tiny (10,000 x x*x, 0.83 ms serial): every pool loses to "
        "serial (0.00-0.46x)",
    ),
    Heuristic(
        "THREAD_CHUNK_OVERHEAD_S",
        THREAD_CHUNK_OVERHEAD_S,
        "Submitting and collecting one chunk on a warm ThreadPoolExecutor.",
        "measured: 8-64 no-op chunks on 2 threads, 12-15 us per chunk (2-core machine)",
    ),
    Heuristic(
        "PROCESS_CHUNK_OVERHEAD_S",
        PROCESS_CHUNK_OVERHEAD_S,
        "Submitting, pickling and collecting one chunk on a warm loky pool.",
        "measured: 8-64 no-op chunks on 2 loky workers, 200-260 us per chunk",
    ),
    Heuristic(
        "PROCESS_BYTES_PER_S",
        PROCESS_BYTES_PER_S,
        "Arguments reach process workers by pickle through a pipe; the cost grows with bytes.",
        "measured: 16 x 8 MB arrays to 2 loky workers, 413 MB/s one way, 697 MB/s there and "
        "back; evaluation/results/full.md payload (32 x 8 MB): ce:processes 0.01x",
    ),
    Heuristic(
        "SHARED_ARRAY_MIN_BYTES",
        SHARED_ARRAY_MIN_BYTES,
        "A shared segment costs a file, a tracker message and a mapping in each worker plus one "
        "copy into /dev/shm; a pickled array is copied through the pipe for every chunk that "
        "holds it. Sharing already ties at 64 KiB and wins clearly from 256 KiB, by more for "
        "an array bound into fn (sent with every chunk).",
        "python evaluation/large_arrays.py (evaluation/results/large_arrays.md, threshold "
        "table, quiet machine, 32 arrays, median ms shared vs pickled): 64 KiB 7.8 vs 9.4, "
        "256 KiB 12.6 vs 23.9, 1 MiB 27.2 vs 92.1, 4 MiB 73.5 vs 282.7; on the loaded machine "
        "52 KB tied and 13 KB lost (13.8 vs 8.2)",
    ),
    Heuristic(
        "SMALL_ARRAY_PICKLE_BYTES",
        SMALL_ARRAY_PICKLE_BYTES,
        "Protocol 5 rebuilds every array through a Python-level call; ndarray.__reduce__ "
        "rebuilds it in C but copies its buffer once more. Small arrays load faster the old "
        "way; from 256 KiB protocol 5 loads faster, and at 1 MiB it dumps 7x faster.",
        "python evaluation/data_movement.py (evaluation/results/data_movement.md), load us per "
        "array protocol 5 vs __reduce__: 64 B 1.59 vs 0.78, 16 KiB 4.71 vs 2.40, 64 KiB 6.35 vs "
        "5.78, 256 KiB 23.0 vs 25.3; a calibrated-explanations result of 100 rows loads in "
        "17.0 ms instead of 26.0",
    ),
    Heuristic(
        "SHARED_OBJECT_MIN_BYTES",
        SHARED_OBJECT_MIN_BYTES,
        "An object shared once per worker costs a file and a digest of its pickle per map; "
        "pickled into every chunk it is copied through the pipe and unpickled once a chunk. "
        "Sharing loses at 4 KiB, wins a little at 16 KiB and clearly from 64 KiB.",
        "python evaluation/data_movement.py (evaluation/results/data_movement.md), 16 one-item "
        "chunks on 2 workers, pickled per chunk / shared: 4 KiB 0.85, 16 KiB 1.18, 64 KiB 1.51, "
        "256 KiB 2.34, 1 MiB 3.40, 4 MiB 10.22",
    ),
    Heuristic(
        "WARMUP_CALLER_CPUS",
        WARMUP_CALLER_CPUS,
        "While a pool's workers load a map's shared objects (imports included), the caller runs "
        "the map's items. Warm-ups on every CPU compete with the caller's items; leaving it one "
        "CPU keeps a user's first calls near the serial loop's time, and the chained warm-ups "
        "still reach every worker.",
        "python evaluation/ce_compat_bench.py --data synthetic --rows 200 1000 --methods "
        "explain_factual explore_alternatives --rounds 1 --runners ours:processes ours:joblib "
        "--warmup-caller-cpus 0 and 1 (evaluation/results/ce_cold_k0.json, ce_cold_k1.json): "
        "the worst of a user's first three calls over the serial median, in the 8 cells, is "
        "0.80-1.31 leaving one CPU and 0.90-2.38 leaving none",
    ),
    Heuristic(
        "JOBLIB_CALL_OVERHEAD_S",
        JOBLIB_CALL_OVERHEAD_S,
        "The joblib strategy submits chunks to joblib's backend directly (no joblib.Parallel "
        "dispatch per map, which costs ~10 ms), and gives each map a memory-map folder: a warm "
        "map costs about what the process strategy's does, plus that folder's upkeep. The "
        "small extra keeps ties going to the process executor when both are allowed.",
        "evaluation/results/quick.json and full.json, tiny (10,000 x x*x) on warm pools: "
        "ce:joblib within a few tenths of a ms of ce:processes per map; joblib.Parallel "
        "339 ms vs 327-331 ms for ce:threads/processes/joblib on sleep (64 x 10 ms), full.json",
    ),
    Heuristic(
        "POOL_START_SECONDS",
        dict(POOL_START_SECONDS),
        "Cold start of a 2-worker pool plus a first tiny map, by start method; the snapshot's "
        "spawn_cost_s and process_start_s come from this table (resources.POOL_START_SECONDS).",
        "resources.measure_pool_start, median of 7 fresh interpreters: threads 1.2 ms, fork "
        "9.9 ms, forkserver 91 ms, spawn 92 ms, loky 194 ms; evaluation/results/full.md cold "
        "start (create + map + shutdown): ce:processes 227 ms",
    ),
    Heuristic(
        "PHYSICAL_CORES_FOR_PROCESSES",
        PHYSICAL_CORES_FOR_PROCESSES,
        "Workers are sized by logical CPUs, as loky and joblib do; fewer workers on SMT "
        "machines is not adopted without a measurement showing it helps.",
        "not measurable on the reference machine (2 cores, 1 thread per core: logical = "
        "physical = 2); Resources.physical_cores reports the count",
    ),
    Heuristic(
        "CE_INSTANCE_CHUNK_ROWS",
        CE_INSTANCE_CHUNK_ROWS,
        "A calibrated-explanations instance task costs ~60 ms of fixed set-up in the caller's "
        "process (more with pickling to a worker) against ~9 ms per row: 100 rows keep the fixed "
        "share near 6-10%; its own default (min_batch_size, 8 rows) spends ~40% on set-up. "
        "calibrated-explanations cuts the rows before the executor sees their count, so the size "
        "cannot follow the row count.",
        "explain_factual, breast cancer, random forest of 100 trees, 200 rows, one process: "
        "CPU 3.35 s with 8-row tasks, 2.32 s with 25, 2.05 s with 50, 1.81-1.86 s with 100-200; "
        "evaluation/ce_compat_bench.py for the parallel runs",
    ),
    Heuristic(
        "REPORT_PIECE_BYTES",
        REPORT_PIECE_BYTES,
        "ce-parallel report reads a file in parallel pieces only when each piece gets 64 MB "
        "(about 0.8 s of reading): a joblib pool's cold start (0.4-0.5 s here) is then well "
        "below the half of the reading a second worker takes over.",
        "python evaluation/fieldreport_scale.py (evaluation/results/fieldreport_scale.md): a "
        "55 MB file took 0.81 s in one pass and 0.95 s in two pieces with 16 MB pieces allowed",
    ),
    Heuristic(
        "REPORT_SECONDS_PER_BYTE",
        REPORT_SECONDS_PER_BYTE,
        "The cost hint the report's pieces are mapped with through the facade: the reading "
        "speed with orjson, the faster of the two decoders, so the facade is never told the "
        "pieces are costlier than they are.",
        "python evaluation/fieldreport_scale.py (evaluation/results/fieldreport_scale.md): "
        "546 MB in one pass, 6.5 s with orjson (1.19e-8 s/byte), 10.2 s with the standard "
        "library's decoder (1.87e-8 s/byte)",
    ),
)


def as_rows() -> list[dict[str, Any]]:
    """The table as plain dicts, for the docs appendix and ``ce-parallel doctor``."""
    return [
        {"name": h.name, "value": h.value, "reason": h.reason, "evidence": h.evidence}
        for h in HEURISTICS
    ]
