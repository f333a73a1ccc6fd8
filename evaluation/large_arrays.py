"""Large NumPy arrays sent to workers: wall time against the plain loop, and peak memory.

Case ``payload``: ``np.sum`` over 32 arrays of 8 MB (float64, 1M elements) on

* ``loop``: ``[np.sum(a) for a in arrays]``;
* ``ce:processes``, ``ce:joblib``, ``ce:threads``: ``create_executor(ParallelConfig(
  enabled=True, strategy=..., max_workers=2))``, one executor per strategy kept warm across the
  repeats (its first, cold map is reported apart);
* ``ce:processes-pickled``: the same executor with arrays pickled into every chunk (the
  shared-memory threshold raised above the arrays' size), i.e. the strategy before sharing;
* ``ce:processes-imap``: the same executor's stream, ``list(ex.imap(np.sum, arrays))``;
* ``cf:threads``, ``cf:processes``: ``concurrent.futures.ThreadPoolExecutor(2)`` /
  ``ProcessPoolExecutor(2)``, each kept warm, ``list(pool.map(np.sum, arrays))``;
* ``joblib.Parallel``: ``Parallel(n_jobs=2)(delayed(np.sum)(a) for a in arrays)``.

Runners are interleaved within each repeat, in an order shuffled (seeded) from one repeat to the
next; the numbers are medians of ``--repeats``, and
ratios are the loop's time over the runner's (above 1 is faster than the loop).

Case ``bound``: one 400 MB array bound into ``functools.partial(part_sum, big)`` over 16 tasks
(each sums a 16th of it) on ``ce:processes`` against the loop; while each runs, a sampler reads
every 20 ms the parent and all its children: the sum of USS, of PSS and of RSS, and the bytes
our shared-memory segments hold in ``/dev/shm`` (which no process's USS counts).

``ce:processes-as_shared`` and ``ce:joblib-as_shared`` map the same values made in shared
memory from the start (``ce_parallel.as_shared``): they travel by the file's name, no copy.
Each has an executor of its own, warmed by one map: an executor plans chunks from what the
last map of the same function cost per item, which the plain arrays would set otherwise.

``facade:processes``, ``facade:joblib``, ``facade:threads``: ``ParallelFacade`` asking for that
strategy (full matrix on), its pool started by a cost hint, its first map of ``np.sum`` a pilot.
Case ``bound_shared``: the bound case with the 400 MB array made by ``ce_parallel.shared_empty``.

Case ``threshold``: ``ce:processes`` shared vs pickled over 32 arrays of several sizes, the
evidence for ``heuristics.SHARED_ARRAY_MIN_BYTES``.

Case ``results``: 32 items that each return a new 8 MB array (``np.full``), the other way
round: ``loop``, ``ce:processes`` and ``ce:joblib`` (large result buffers come back through
``/dev/shm`` files, ``result_segments``), ``ce:processes-pipe`` (the same with the result
threshold raised above the arrays' size in the workers: through loky's result pipe, as before),
``cf:processes`` and ``joblib.Parallel``; interleaved and shuffled as above. Case
``result_threshold``: one result array per item of several sizes (about 64 MB in all), files
against the pipe, the evidence for ``heuristics.RESULT_SEGMENT_MIN_BYTES``.

Usage::

    python evaluation/large_arrays.py [--repeats 5] [--scale 1.0] [--out-dir evaluation/results]

``--scale`` shrinks every array (for a quick check of the script). Writes ``large_arrays.json``,
``large_arrays.md`` and ``large_arrays.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import functools
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil

import ce_parallel
from ce_parallel import ParallelConfig, ParallelFacade, create_executor, heuristics
from ce_parallel.file_arrays import owned_files
from ce_parallel.result_segments import result_files
from ce_parallel.shared_arrays import segment_files

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT_DIR = os.path.join(HERE, "results")
WORKERS = 2
TASKS = 16
SAMPLE_S = 0.02
NEVER = 1 << 62


def part_sum(big: Any, i: int) -> float:
    """The sum of the ``i``-th of ``TASKS`` equal parts of ``big``."""
    n = big.shape[0]
    return float(big[i * n // TASKS : (i + 1) * n // TASKS].sum())


def _ce(strategy: str) -> Any:
    return create_executor(ParallelConfig(enabled=True, strategy=strategy, max_workers=WORKERS))


class Sharing:
    """Sets the shared-memory threshold for the duration of a run (``NEVER``: pickle all)."""

    def __init__(self, min_bytes: int) -> None:
        self.min_bytes = min_bytes

    def __enter__(self) -> None:
        self.saved = heuristics.SHARED_ARRAY_MIN_BYTES
        heuristics.SHARED_ARRAY_MIN_BYTES = self.min_bytes

    def __exit__(self, *exc: Any) -> None:
        heuristics.SHARED_ARRAY_MIN_BYTES = self.saved


def _timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = run()
    return time.perf_counter() - started, out


def payload_runners(pools: dict[str, Any]) -> dict[str, Callable[[list[Any]], list[Any]]]:
    from joblib import Parallel, delayed

    def pickled(arrays: list[Any]) -> list[Any]:
        with Sharing(NEVER):
            return pools["ce:processes"].map(np.sum, arrays)

    return {
        "loop": lambda arrays: [np.sum(a) for a in arrays],
        "ce:processes": lambda arrays: pools["ce:processes"].map(np.sum, arrays),
        "ce:processes-pickled": pickled,
        "ce:processes-imap": lambda arrays: list(pools["ce:processes"].imap(np.sum, arrays)),
        "ce:processes-as_shared": lambda arrays: pools["ce:processes-as_shared"].map(
            np.sum, pools["as_shared"]
        ),
        "ce:joblib": lambda arrays: pools["ce:joblib"].map(np.sum, arrays),
        "ce:joblib-as_shared": lambda arrays: pools["ce:joblib-as_shared"].map(
            np.sum, pools["as_shared"]
        ),
        "ce:threads": lambda arrays: pools["ce:threads"].map(np.sum, arrays),
        "cf:threads": lambda arrays: list(pools["cf:threads"].map(np.sum, arrays)),
        "cf:processes": lambda arrays: list(pools["cf:processes"].map(np.sum, arrays)),
        "joblib.Parallel": lambda arrays: Parallel(n_jobs=WORKERS)(
            delayed(np.sum)(a) for a in arrays
        ),
        "facade:processes": lambda arrays: pools["facade:processes"].map(np.sum, arrays),
        "facade:joblib": lambda arrays: pools["facade:joblib"].map(np.sum, arrays),
        "facade:threads": lambda arrays: pools["facade:threads"].map(np.sum, arrays),
    }


class _Facade:
    """A facade asking for ``strategy`` (the full matrix on), shut down as the pools are."""

    def __init__(self, strategy: str) -> None:
        config = ParallelConfig(
            enabled=True, strategy=strategy, max_workers=WORKERS, full_matrix=True
        )
        self.facade = ParallelFacade(config, environ={})
        self.map = self.facade.map

    def shutdown(self) -> None:
        self.facade.close()


def run_payload(repeats: int, scale: float) -> dict[str, Any]:
    size = max(1, int(1_000_000 * scale))
    arrays = [np.random.default_rng(i).random(size) for i in range(32)]
    expected = [np.sum(a) for a in arrays]
    pools: dict[str, Any] = {}
    cold: dict[str, float] = {}
    for strategy in ("processes", "joblib", "threads"):
        ex = pools[f"ce:{strategy}"] = _ce(strategy)
        cold[f"ce:{strategy}"], got = _timed(functools.partial(ex.map, np.sum, arrays))
        assert got == expected, strategy
    for strategy in ("processes", "joblib", "threads"):
        pools[f"facade:{strategy}"] = _Facade(strategy)
        # its first map pilots the function; its pool is started by a hint, as a library's is
        pools[f"facade:{strategy}"].map(abs, range(64), seconds_per_item=1.0)
        cold[f"facade:{strategy}"], got = _timed(
            functools.partial(pools[f"facade:{strategy}"].map, np.sum, arrays)
        )
        assert got == expected, strategy
    shared = [ce_parallel.as_shared(a) for a in arrays]
    for strategy in ("processes", "joblib"):
        # an executor of their own: what an executor learns of np.sum's chunks (steady or not)
        # is learnt per function, and the arrays sent by name cost another time per item
        ex = pools[f"ce:{strategy}-as_shared"] = _ce(strategy)
        cold[f"ce:{strategy}-as_shared"], got = _timed(functools.partial(ex.map, np.sum, shared))
        assert got == expected, strategy
    pools["cf:threads"] = cf.ThreadPoolExecutor(WORKERS)
    pools["cf:processes"] = cf.ProcessPoolExecutor(WORKERS)
    runners = payload_runners({**pools, "as_shared": shared})
    for name in ("cf:threads", "cf:processes", "joblib.Parallel"):
        cold[name], _ = _timed(lambda: runners[name](arrays))  # noqa: B023 - called at once
    times: dict[str, list[float]] = {name: [] for name in runners}
    try:
        names = list(runners)
        for repeat in range(repeats):
            # the order is shuffled (seeded): a runner that always ran after a process pool's
            # map paid for its clean-up (files unlinked, workers' collections) and the caches
            # it left cold; a rotation keeps the same neighbours in every repeat
            order = names[:]
            random.Random(repeat).shuffle(order)
            for name in order:
                seconds, got = _timed(lambda: runners[name](arrays))  # noqa: B023 - called at once
                assert list(got) == expected, name
                times[name].append(seconds)
        fallbacks = {k: v.metrics.fallbacks for k, v in pools.items() if k.startswith("ce:")}
        # (warm-up and cold maps included: the chunk plan an executor settles on shows)
        chunks_per_map = {
            k: round(v.metrics.chunks / max(1, v.metrics.maps), 2)
            for k, v in pools.items()
            if k.startswith("ce:")
        }
        decisions = {
            k: [v.facade.last_decision.decision, v.facade.last_decision.reason]
            for k, v in pools.items()
            if k.startswith("facade:")
        }
    finally:
        for pool in pools.values():
            pool.shutdown()
    loop = statistics.median(times["loop"])
    return {
        "arrays": 32,
        "array_bytes": int(arrays[0].nbytes),
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "ratio_vs_loop": {k: loop / statistics.median(v) for k, v in times.items()},
        "all_s": times,
        "cold_first_map_s": cold,
        "fallbacks": fallbacks,
        "facade_decisions": decisions,
        "chunks_per_map": chunks_per_map,
    }


class Sampler:
    """Peak sums over this process and its children, sampled every ``SAMPLE_S`` seconds."""

    def __init__(self) -> None:
        self.peak = {"uss": 0, "pss": 0, "rss": 0, "shm": 0, "uss_plus_shm": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self.sample()
        self.idle = dict(self.peak)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        me = psutil.Process()
        now = {"uss": 0, "pss": 0, "rss": 0}
        for proc in [me, *me.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            now["uss"] += info.uss
            now["pss"] += getattr(info, "pss", 0)
            now["rss"] += info.rss
        shm = 0
        mine = os.getpid()
        for path in segment_files(mine) + owned_files(mine) + result_files(mine):
            with contextlib.suppress(OSError):
                shm += os.stat(path).st_blocks * 512
        now["shm"] = shm
        now["uss_plus_shm"] = now["uss"] + shm
        for key, value in now.items():
            self.peak[key] = max(self.peak[key], value)


def run_bound(repeats: int, scale: float) -> dict[str, Any]:
    size = max(TASKS, int(50_000_000 * scale))
    big = np.random.default_rng(0).random(size)
    fn = functools.partial(part_sum, big)
    expected = [fn(i) for i in range(TASKS)]
    ex = _ce("processes")
    cold, got = _timed(lambda: ex.map(fn, range(TASKS)))
    assert got == expected
    runners: dict[str, Callable[[], list[Any]]] = {
        "loop": lambda: [fn(i) for i in range(TASKS)],
        "ce:processes": lambda: ex.map(fn, range(TASKS)),
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    peaks: dict[str, list[dict[str, int]]] = {name: [] for name in runners}
    idle: dict[str, list[int]] = {name: [] for name in runners}
    try:
        for _ in range(repeats):
            for name, run in runners.items():
                time.sleep(1.0)  # workers' janitors unmap the last map's segment meanwhile
                with Sampler() as sampler:
                    seconds, got = _timed(run)
                assert got == expected, name
                times[name].append(seconds)
                peaks[name].append(dict(sampler.peak))
                idle[name].append(sampler.idle["uss"])
        fallbacks = ex.metrics.fallbacks
    finally:
        ex.shutdown()
    loop = statistics.median(times["loop"])
    return {
        "array_bytes": int(big.nbytes),
        "tasks": TASKS,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "ratio_vs_loop": {k: loop / statistics.median(v) for k, v in times.items()},
        "cold_first_map_s": cold,
        "peak_bytes": {
            name: {key: max(p[key] for p in runs) for key in runs[0]}
            for name, runs in peaks.items()
        },
        "idle_uss_bytes": {k: min(v) for k, v in idle.items()},
        "all_s": times,
        "fallbacks": fallbacks,
    }


def run_bound_shared(repeats: int, scale: float) -> dict[str, Any]:
    """The bound case with the array made in shared memory from the start (``as_shared``)."""
    size = max(TASKS, int(50_000_000 * scale))
    big = ce_parallel.shared_empty(size)
    np.random.default_rng(0).random(size, out=big)
    fn = functools.partial(part_sum, big)
    expected = [fn(i) for i in range(TASKS)]
    ex = _ce("processes")
    cold, got = _timed(lambda: ex.map(fn, range(TASKS)))
    assert got == expected
    runners: dict[str, Callable[[], list[Any]]] = {
        "loop": lambda: [fn(i) for i in range(TASKS)],
        "ce:processes": lambda: ex.map(fn, range(TASKS)),
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    peaks: dict[str, list[dict[str, int]]] = {name: [] for name in runners}
    try:
        for _ in range(repeats):
            for name, run in runners.items():
                with Sampler() as sampler:
                    seconds, got = _timed(run)
                assert got == expected, name
                times[name].append(seconds)
                peaks[name].append(dict(sampler.peak))
        fallbacks = ex.metrics.fallbacks
    finally:
        ex.shutdown()
    loop = statistics.median(times["loop"])
    return {
        "array_bytes": int(big.nbytes),
        "tasks": TASKS,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "ratio_vs_loop": {k: loop / statistics.median(v) for k, v in times.items()},
        "cold_first_map_s": cold,
        "peak_bytes": {
            name: {key: max(p[key] for p in runs) for key in runs[0]}
            for name, runs in peaks.items()
        },
        "all_s": times,
        "fallbacks": fallbacks,
    }


def run_threshold(repeats: int, scale: float) -> dict[str, Any]:
    sizes = [int(kib * 1024 * scale) for kib in (64, 256, 1024, 4096)]
    ex = _ce("processes")
    ex.map(np.sum, [np.ones(8)] * 4)  # warm
    out: dict[str, Any] = {}
    try:
        for nbytes in sizes:
            arrays = [np.full(max(1, nbytes // 8), float(i)) for i in range(32)]
            times: dict[str, list[float]] = {"shared": [], "pickled": []}
            for _ in range(repeats):
                for mode, threshold in (("shared", 1), ("pickled", NEVER)):
                    with Sharing(threshold):
                        seconds, _ = _timed(lambda: ex.map(np.sum, arrays))  # noqa: B023
                    times[mode].append(seconds)
            out[str(int(arrays[0].nbytes))] = {k: statistics.median(v) for k, v in times.items()}
    finally:
        ex.shutdown()
    return out


def run_thread_chunks(repeats: int, scale: float) -> dict[str, Any]:
    """Threads on 32 sums, even (7.6 MiB each) and uneven (Pareto sizes, the same total), one
    item per chunk against chunks of 2 and 4, beside ``ThreadPoolExecutor``: the evidence for
    ``heuristics.CHEAP_CHUNKS_PER_WORKER``. 8 repeats per ``--repeats``, interleaved, rotated."""
    rng = np.random.default_rng(0)
    size = max(1, int(1_000_000 * scale))
    uneven = rng.pareto(1.5, 32) + 0.2
    shapes = {
        "even": [size] * 32,
        "uneven": [max(1, int(size * 32 * u / uneven.sum())) for u in uneven],
    }
    ex = _ce("threads")
    pool = cf.ThreadPoolExecutor(WORKERS)
    out: dict[str, Any] = {}
    try:
        for kind, sizes in shapes.items():
            arrays = [np.random.default_rng(i).random(n) for i, n in enumerate(sizes)]
            runners: dict[str, Callable[[], Any]] = {
                "loop": lambda arrays=arrays: [np.sum(a) for a in arrays],
                "cf:threads": lambda arrays=arrays: list(pool.map(np.sum, arrays)),
            }
            for chunk in (1, 2, 4):
                runners[f"ce:threads chunksize={chunk}"] = functools.partial(
                    ex.map, np.sum, arrays, chunksize=chunk
                )
            for run in runners.values():
                run()  # warm
            times: dict[str, list[float]] = {name: [] for name in runners}
            names = list(runners)
            for repeat in range(8 * repeats):
                for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                    seconds, _ = _timed(runners[name])
                    times[name].append(seconds)
            loop = statistics.median(times["loop"])
            out[kind] = {
                "median_s": {k: statistics.median(v) for k, v in times.items()},
                "ratio_vs_loop": {k: loop / statistics.median(v) for k, v in times.items()},
            }
    finally:
        ex.shutdown()
        pool.shutdown()
    return out


def full_of(i: int, size: int) -> Any:
    """A new float64 array of ``size`` elements, all ``i``: a large result."""
    return np.full(size, float(i))


def _result_threshold(min_bytes: int) -> None:
    # a worker initializer: the workers read the threshold, not the caller
    heuristics.RESULT_SEGMENT_MIN_BYTES = min_bytes


def _ce_results(strategy: str, min_bytes: int | None = None) -> Any:
    config = ParallelConfig(enabled=True, strategy=strategy, max_workers=WORKERS)
    if min_bytes is not None:
        config = config.replace(worker_initializer=_result_threshold, worker_init_args=(min_bytes,))
    return create_executor(config)


def run_results(repeats: int, scale: float) -> dict[str, Any]:
    from joblib import Parallel, delayed

    size = max(1, int(1_000_000 * scale))
    make = functools.partial(full_of, size=size)
    items = list(range(32))
    pools = {
        "ce:processes": _ce_results("processes"),
        "ce:processes-pipe": _ce_results("processes", NEVER),
        "ce:joblib": _ce_results("joblib"),
        "cf:processes": cf.ProcessPoolExecutor(WORKERS),
    }
    runners: dict[str, Callable[[], list[Any]]] = {
        "loop": lambda: [make(i) for i in items],
        "ce:processes": lambda: pools["ce:processes"].map(make, items),
        "ce:processes-pipe": lambda: pools["ce:processes-pipe"].map(make, items),
        "ce:joblib": lambda: pools["ce:joblib"].map(make, items),
        "cf:processes": lambda: list(pools["cf:processes"].map(make, items)),
        "joblib.Parallel": lambda: Parallel(n_jobs=WORKERS)(delayed(make)(i) for i in items),
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    try:
        for run in runners.values():
            run()  # warm: workers started, numpy imported
        for repeat in range(repeats):
            order = list(runners)
            random.Random(repeat).shuffle(order)
            for name in order:
                seconds, got = _timed(runners[name])
                assert [float(a[0]) for a in got] == [float(i) for i in items], name
                del got
                times[name].append(seconds)
        fallbacks = {k: v.metrics.fallbacks for k, v in pools.items() if k.startswith("ce:")}
    finally:
        for pool in pools.values():
            pool.shutdown()
    loop = statistics.median(times["loop"])
    return {
        "items": len(items),
        "array_bytes": size * 8,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "ratio_vs_loop": {k: loop / statistics.median(v) for k, v in times.items()},
        "all_s": times,
        "fallbacks": fallbacks,
    }


def run_result_threshold(repeats: int, scale: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kib in (64, 256, 1024, 4096):
        nbytes = max(8, int(kib * 1024 * scale))
        items = [nbytes // 8] * max(16, int(64 * 1024 * 1024 * scale) // nbytes)
        row: dict[str, Any] = {"items": len(items)}
        for mode, threshold in (("files", 1), ("pipe", NEVER)):
            ex = _ce_results("processes", threshold)
            try:
                ex.map(np.ones, items)  # warm
                times = []
                for _ in range(repeats):
                    seconds, _ = _timed(lambda: ex.map(np.ones, items))  # noqa: B023
                    times.append(seconds)
            finally:
                ex.shutdown()
            row[mode] = statistics.median(times)
        out[str(nbytes)] = row
    return out


def write_md(results: dict[str, Any], path: str) -> None:
    p, b, t = results["payload"], results["bound"], results["threshold"]
    bs = results["bound_shared"]
    mb = 1024 * 1024
    loop_p = p["median_s"]["loop"]
    lines = [
        "# Large arrays: shared memory for the processes strategy",
        "",
        "Produced by `python evaluation/large_arrays.py` "
        f"(repeats {results['repeats']}, scale {results['scale']}).",
        "",
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}; load average "
        f"before {results['loadavg_before']}, after {results['loadavg_after']}.",
        "",
        f"## 32 arrays of {p['array_bytes'] / mb:.1f} MiB, `np.sum` per item",
        "",
        "Medians of the interleaved repeats; `x loop` is the loop's time over the runner's "
        "(above 1: faster than the loop). `cold` is each runner's first map, pool start "
        "included.",
        "",
        "| runner | median ms | x loop | cold first map ms |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in p["median_s"].items():
        cold = p["cold_first_map_s"].get(name)
        lines.append(
            f"| {name} | {seconds * 1e3:.1f} | {loop_p / seconds:.2f} | "
            f"{'' if cold is None else f'{cold * 1e3:.0f}'} |"
        )
    lines += [
        "",
        f"Fallbacks on the ce executors: {p['fallbacks']}. Chunks per map, over every map "
        f"of each executor: {p.get('chunks_per_map', {})}.",
        "",
        "The `facade:` runners are `ParallelFacade(ParallelConfig(enabled=True, strategy=..., "
        "full_matrix=True))`, the front door a library calls, kept across the repeats (its "
        "pool started by a cost hint, its first map of `np.sum` a pilot): what each decided "
        f"last (decision, reason): {p.get('facade_decisions', {})}.",
        "",
        f"## One {b['array_bytes'] / mb:.0f} MiB array bound into a partial, {b['tasks']} tasks",
        "",
        "| runner | median ms | x loop | idle USS MiB | peak USS MiB | peak PSS MiB "
        "| peak RSS MiB | peak /dev/shm MiB | peak USS + shm MiB | (USS + shm) / array |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, seconds in b["median_s"].items():
        peak = b["peak_bytes"][name]
        lines.append(
            f"| {name} | {seconds * 1e3:.0f} | {b['ratio_vs_loop'][name]:.2f} | "
            f"{b['idle_uss_bytes'][name] / mb:.0f} | {peak['uss'] / mb:.0f} | "
            f"{peak['pss'] / mb:.0f} | {peak['rss'] / mb:.0f} | "
            f"{peak['shm'] / mb:.0f} | {peak['uss_plus_shm'] / mb:.0f} | "
            f"{peak['uss_plus_shm'] / b['array_bytes']:.2f} |"
        )
    lines += [
        "",
        f"Cold first map of ce:processes: {b['cold_first_map_s'] * 1e3:.0f} ms; fallbacks: "
        f"{b['fallbacks']}. Peaks are sums over the parent and all its children (workers, "
        "resource tracker), the largest over the repeats; `idle` is the same sum just before "
        "a run, the array already allocated in the parent. USS leaves out pages mapped by more "
        "than one process and the segment's pages in /dev/shm that no process maps, so "
        "`USS + shm` is the footprint to compare with the array.",
        "",
        f"## The same array made in shared memory (`ce_parallel.shared_empty`), {b['tasks']} tasks",
        "",
        "The array is a file under /dev/shm mapped by the parent and, once sent, by the "
        "workers: USS counts its pages in a process that alone maps them and the shm column "
        "counts them again, so here PSS (each shared page split between the processes that map "
        "it) is the footprint.",
        "",
        "| runner | median ms | x loop | peak PSS MiB | peak RSS MiB | peak /dev/shm MiB "
        "| PSS / array |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {name} | {seconds * 1e3:.0f} | {bs['ratio_vs_loop'][name]:.2f} | "
            f"{bs['peak_bytes'][name]['pss'] / mb:.0f} | {bs['peak_bytes'][name]['rss'] / mb:.0f}"
            f" | {bs['peak_bytes'][name]['shm'] / mb:.0f} | "
            f"{bs['peak_bytes'][name]['pss'] / bs['array_bytes']:.2f} |"
            for name, seconds in bs["median_s"].items()
        ],
        "",
        f"Cold first map of ce:processes: {bs['cold_first_map_s'] * 1e3:.0f} ms; fallbacks: "
        f"{bs['fallbacks']}.",
        "",
        "## The issue's targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *_targets(p, b, bs),
        "",
        "## Threshold: ce:processes, 32 arrays, shared vs pickled (median ms)",
        "",
        "| array bytes | shared | pickled |",
        "|---:|---:|---:|",
    ]
    for nbytes, row in t.items():
        shared, pickled = row["shared"] * 1e3, row["pickled"] * 1e3
        lines.append(f"| {int(nbytes):,} | {shared:.1f} | {pickled:.1f} |")
    r, rt = results["results"], results["result_threshold"]
    loop_r = r["median_s"]["loop"]
    lines += [
        "",
        f"## Results: 32 items that each return a new {r['array_bytes'] / mb:.1f} MiB array",
        "",
        "`ce:processes-pipe` is `ce:processes` with the result threshold raised above the "
        "arrays' size in its workers: the results come back through loky's pipe.",
        "",
        "| runner | median ms | x loop |",
        "|---|---:|---:|",
    ]
    for name, seconds in r["median_s"].items():
        lines.append(f"| {name} | {seconds * 1e3:.1f} | {loop_r / seconds:.2f} |")
    lines += [
        "",
        f"Fallbacks on the ce executors: {r['fallbacks']}.",
        "",
        "## Thread chunks: 32 sums on 2 threads by chunk size (median ms, x loop)",
        "",
        "Even: 32 arrays of the payload case's size; uneven: Pareto sizes of the same total. "
        "Interleaved, 8 x repeats each (`heuristics.CHEAP_CHUNKS_PER_WORKER`: 16 chunks of 2).",
        "",
        "| runner | even ms | even x loop | uneven ms | uneven x loop |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {name} | {results['thread_chunks']['even']['median_s'][name] * 1e3:.2f} | "
            f"{results['thread_chunks']['even']['ratio_vs_loop'][name]:.2f} | "
            f"{results['thread_chunks']['uneven']['median_s'][name] * 1e3:.2f} | "
            f"{results['thread_chunks']['uneven']['ratio_vs_loop'][name]:.2f} |"
            for name in results["thread_chunks"]["even"]["median_s"]
        ],
        "",
        "## Result threshold: ce:processes, one result array per item, files vs pipe (median ms)",
        "",
        "| array bytes | items | files | pipe | pipe / files |",
        "|---:|---:|---:|---:|---:|",
    ]
    for nbytes, row in rt.items():
        files, pipe = row["files"] * 1e3, row["pipe"] * 1e3
        lines.append(
            f"| {int(nbytes):,} | {row['items']} | {files:.1f} | {pipe:.1f} | {pipe / files:.2f} |"
        )
    lines.append("")
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def _targets(p: dict[str, Any], b: dict[str, Any], bs: dict[str, Any]) -> list[str]:
    ratio = p["ratio_vs_loop"]
    rows = [
        (f"{name} >= 0.9x the loop", f"{ratio[name]:.2f}x", ratio[name] >= 0.9)
        for name in ("ce:processes", "ce:joblib", "ce:processes-as_shared", "ce:joblib-as_shared")
    ]
    rows += [
        (f"{name} >= 0.9x the loop", f"{ratio[name]:.2f}x", ratio[name] >= 0.9)
        for name in ("facade:processes", "facade:joblib")
    ]
    rows.append(
        (
            "ce:threads >= cf:threads",
            f"{ratio['ce:threads']:.2f}x vs {ratio['cf:threads']:.2f}x",
            ratio["ce:threads"] >= ratio["cf:threads"],
        )
    )
    peak = b["peak_bytes"]["ce:processes"]
    for kind in ("uss", "pss", "uss_plus_shm", "rss"):
        share = peak[kind] / b["array_bytes"]
        rows.append((f"peak {kind} < 1.5x the array (bound case)", f"{share:.2f}x", share < 1.5))
    shared = bs["peak_bytes"]["ce:processes"]["pss"] / bs["array_bytes"]
    rows.append(
        ("peak pss < 1.5x the array (bound case, shared_empty)", f"{shared:.2f}x", shared < 1.5)
    )
    extra = (peak["uss_plus_shm"] - b["idle_uss_bytes"]["ce:processes"]) / b["array_bytes"]
    lines = [f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in rows]
    lines.append(
        f"| (for reference) peak USS + shm - idle USS: what the map adds | {extra:.2f}x | |"
    )
    return lines


def write_png(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, back) = plt.subplots(1, 3, figsize=(18, 4.5))
    ratios = results["payload"]["ratio_vs_loop"]
    names = list(ratios)
    left.barh(names, [ratios[n] for n in names], color="tab:blue")
    left.axvline(1.0, color="black", lw=0.8)
    left.axvline(0.9, color="tab:red", lw=0.8, ls="--", label="target 0.9x")
    left.set_xscale("log")
    left.set_xlabel("speed vs the plain loop (log; above 1 is faster)")
    left.set_title("32 x 8 MB arrays, np.sum per item")
    left.legend(loc="lower right")
    bound = results["bound"]
    mb = 1024 * 1024
    kinds = ["uss", "pss", "rss", "uss_plus_shm"]
    width = 0.35
    for k, name in enumerate(bound["peak_bytes"]):
        values = [bound["peak_bytes"][name][kind] / mb for kind in kinds]
        right.bar([i + k * width for i in range(len(kinds))], values, width, label=name)
    right.axhline(1.5 * bound["array_bytes"] / mb, color="tab:red", ls="--", label="1.5x array")
    right.set_xticks([i + width / 2 for i in range(len(kinds))], kinds)
    right.set_ylabel("peak MiB, parent + children")
    right.set_title(f"{bound['array_bytes'] / mb:.0f} MB array bound into a partial")
    right.legend()
    returned = results["results"]["ratio_vs_loop"]
    names = list(returned)
    back.barh(names, [returned[n] for n in names], color="tab:green")
    back.axvline(1.0, color="black", lw=0.8)
    back.set_xscale("log")
    back.set_xlabel("speed vs the plain loop (log; above 1 is faster)")
    back.set_title("32 results of a new 8 MB array each")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--out-dir", default=DEFAULT_OUT_DIR)
    parser.add_argument(
        "--cheap-chunks-per-worker",
        type=int,
        help="chunks per worker of a threads map of at most CHEAP_CHUNKS_MAX_ITEMS items "
        "(heuristics.CHEAP_CHUNKS_PER_WORKER; 64: one item per chunk)",
    )
    args = parser.parse_args(argv)
    if args.cheap_chunks_per_worker is not None:
        heuristics.CHEAP_CHUNKS_PER_WORKER = args.cheap_chunks_per_worker
    results: dict[str, Any] = {
        "repeats": args.repeats,
        "scale": args.scale,
        "cheap_chunks_per_worker": heuristics.CHEAP_CHUNKS_PER_WORKER,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    # the bound case first: no other pool's idle workers are then counted in its memory
    results["bound"] = run_bound(args.repeats, args.scale)
    results["bound_shared"] = run_bound_shared(args.repeats, args.scale)
    results["payload"] = run_payload(args.repeats, args.scale)
    results["threshold"] = run_threshold(args.repeats, args.scale)
    results["thread_chunks"] = run_thread_chunks(args.repeats, args.scale)
    results["results"] = run_results(args.repeats, args.scale)
    results["result_threshold"] = run_result_threshold(args.repeats, args.scale)
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "large_arrays.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    write_md(results, os.path.join(args.out_dir, "large_arrays.md"))
    write_png(results, os.path.join(args.out_dir, "large_arrays.png"))
    with open(os.path.join(args.out_dir, "large_arrays.md")) as fh:
        print(fh.read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
