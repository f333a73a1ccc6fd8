"""ce-parallel's dask strategy on a cluster started by Dask's own command line.

A scheduler and 2 single-threaded workers are started with ``dask scheduler`` / ``dask worker``
on 127.0.0.1 (the shape of a batch job or dask-jobqueue: the workers are not children of this
script). Runners are interleaved round by round, so that a busy machine slows them alike, and
every figure is the median of the rounds, measured on warm pools:

- 200 items of 5 ms of pure-Python work: ce dask vs the serial loop (target >= 1.6x), and the
  worker restarts seen meanwhile (target 0: worker pids unchanged, no nanny restart logged);
- 10,000 trivial items: overhead per item over the serial loop, for dask next to the local
  strategies (sequential, threads, processes);
- 50 items of 200 us: per-map latency of ce dask vs raw ``client.map`` + ``gather``
  (target <= 1.3x).

Writes ``evaluation/results/dask_cluster.json`` and ``dask_cluster.md``.

    python evaluation/dask_cluster.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
WORKERS = 2
START_S = 60
STOP_S = 20
TARGET_SPEEDUP = 1.6
TARGET_LATENCY_RATIO = 1.3


# -- workloads (defined in __main__: they travel to the workers by value) ------------------


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def work_5ms(i: int) -> int:
    spin(0.005)
    return i


def work_200us(i: int) -> int:
    spin(0.0002)
    return i


def trivial(i: int) -> int:
    return i + 1


# -- the cluster ---------------------------------------------------------------------------


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_S)
            return
        except subprocess.TimeoutExpired:
            pass
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(STOP_S)


@contextmanager
def cli_cluster(log_path: Path) -> Iterator[str]:
    """``dask scheduler`` + ``dask worker --nworkers 2 --nthreads 1`` on 127.0.0.1."""
    dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
    if dask is None:
        raise SystemExit("needs the `dask` command line: pip install 'ce-parallel[dask]'")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    loopback = ["--host", "127.0.0.1", "--no-dashboard"]
    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="ce-dask-eval-") as scratch, log_path.open("wb") as log:
        scheduler_file = Path(scratch) / "scheduler.json"
        files = ["--scheduler-file", str(scheduler_file)]

        def start(command: list[str]) -> subprocess.Popen[bytes]:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            started.append(process)
            return process

        try:
            scheduler = start([dask, "scheduler", *loopback, "--port", "0", *files])
            deadline = time.monotonic() + START_S
            while not scheduler_file.exists() or not scheduler_file.read_text().strip():
                if scheduler.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the scheduler did not start; see {log_path}")
                time.sleep(0.1)
            address = json.loads(scheduler_file.read_text())["address"]
            sizes = ["--nworkers", str(WORKERS), "--nthreads", "1"]
            start([dask, "worker", *loopback, *files, *sizes, "--death-timeout", str(START_S)])
            yield address
        finally:
            for process in reversed(started):
                _stop(process)


# -- measuring -----------------------------------------------------------------------------


def timed(run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def interleaved(runners: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Each round runs every runner once (warm-up round first, not kept)."""
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            times[name].append(timed(run))
    return times


def summary(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "rounds_s": times}


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "dask_cluster"), help="path without suffix")
    args = parser.parse_args(argv)

    from distributed import Client

    import ce_parallel
    from ce_parallel import ParallelConfig, create_executor

    load_before = loadavg()
    log_path = Path(tempfile.gettempdir()) / f"ce-dask-eval-{os.getpid()}.log"
    results: dict[str, Any] = {}
    with cli_cluster(log_path) as address:
        client = Client(address, timeout=START_S, set_as_default=False)
        client.wait_for_workers(WORKERS, timeout=START_S)
        pids_before = dict(client.run(os.getpid))
        config = ParallelConfig(
            enabled=True, strategy="dask", full_matrix=True, dask_address=address
        )
        dask_ex = create_executor(config)
        local = {
            name: create_executor(
                ParallelConfig(enabled=True, strategy=name, full_matrix=True, max_workers=WORKERS)
            )
            for name in ("sequential", "threads", "processes")
        }
        try:
            # 1. 200 x 5 ms pure Python: ce dask vs the serial loop
            items = range(200)
            times = interleaved(
                {
                    "serial loop": lambda: [work_5ms(i) for i in items],
                    "ce dask": lambda: dask_ex.map(work_5ms, items),
                },
                args.rounds,
            )
            speedup = statistics.median(times["serial loop"]) / statistics.median(times["ce dask"])
            results["cpu_200x5ms"] = {
                "runners": {name: summary(t) for name, t in times.items()},
                "speedup": speedup,
                "target_speedup": TARGET_SPEEDUP,
            }

            # 2. 10,000 trivial items: overhead per item over the serial loop
            many = range(10_000)
            runners: dict[str, Callable[[], Any]] = {
                "serial loop": lambda: [trivial(i) for i in many]
            }
            for name, ex in local.items():
                runners[f"ce {name}"] = lambda ex=ex: ex.map(trivial, many)
            runners["ce dask"] = lambda: dask_ex.map(trivial, many)
            times = interleaved(runners, args.rounds)
            serial = statistics.median(times["serial loop"])
            results["overhead_10000_trivial"] = {
                name: {
                    **summary(t),
                    "overhead_per_item_us": (statistics.median(t) - serial) / len(many) * 1e6,
                }
                for name, t in times.items()
            }

            # 3. per-map latency, 50 x 200 us: ce dask vs raw client.map + gather
            few = range(50)
            times = interleaved(
                {
                    "raw client.map+gather": lambda: client.gather(
                        client.map(work_200us, few, pure=False)
                    ),
                    "ce dask": lambda: dask_ex.map(work_200us, few),
                },
                args.rounds,
            )
            ratio = statistics.median(times["ce dask"]) / statistics.median(
                times["raw client.map+gather"]
            )
            results["latency_50x200us"] = {
                "runners": {name: summary(t) for name, t in times.items()},
                "ratio": ratio,
                "target_ratio": TARGET_LATENCY_RATIO,
            }
            fallbacks = dask_ex.metrics.fallbacks
        finally:
            dask_ex.shutdown()
            for ex in local.values():
                ex.shutdown()
        pids_after = dict(client.run(os.getpid))
        client.close()
    log = log_path.read_text(errors="replace")
    log_path.unlink(missing_ok=True)
    changed = set(pids_before.values()) ^ set(pids_after.values())
    results["worker_restarts"] = {
        "pids_before": sorted(pids_before.values()),
        "pids_after": sorted(pids_after.values()),
        "restarts": len(changed) // 2 + log.count("Restarting worker"),
        "nanny_exit_lines": log.count("exited with status"),
    }
    results["ce_dask_fallbacks"] = fallbacks
    import dask
    import distributed

    report = {
        "script": "evaluation/dask_cluster.py",
        "rounds": args.rounds,
        "cluster": f"dask CLI: 1 scheduler + {WORKERS} workers x 1 thread on 127.0.0.1",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "ce_parallel": ce_parallel.__version__,
            "dask": dask.__version__,
            "distributed": distributed.__version__,
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
        },
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict[str, Any]) -> str:
    r = report["results"]
    m = report["machine"]
    ms = 1e3
    cpu = r["cpu_200x5ms"]
    lat = r["latency_50x200us"]
    restarts = r["worker_restarts"]["restarts"]
    lines = [
        "# dask on a command-line cluster",
        "",
        f"{report['cluster']}; medians of {report['rounds']} interleaved rounds on warm pools "
        f"(`python {report['script']}`). dask {m['distributed']}, Python {m['python']}, "
        f"{m['cpus']} CPUs.",
        "",
        f"**Measured under load:** the machine is shared; load average (1, 5, 15 min) was "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_before'])} before and "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_after'])} after the run, on "
        f"{m['cpus']} CPUs. Absolute times and the speed-up are lower than on an idle machine.",
        "",
        "| workload | runner | median | result | target |",
        "|---|---|---:|---|---|",
    ]
    runners = cpu["runners"]
    lines.append(
        f"| 200 x 5 ms pure Python | serial loop | {runners['serial loop']['median_s'] * ms:.0f} ms"
        " | | |"
    )
    lines.append(
        f"| | ce dask | {runners['ce dask']['median_s'] * ms:.0f} ms | "
        f"{cpu['speedup']:.2f}x the serial loop; {restarts} worker restarts | "
        f">= {cpu['target_speedup']}x; 0 restarts |"
    )
    for name, row in r["overhead_10000_trivial"].items():
        extra = "" if name == "serial loop" else f"{row['overhead_per_item_us']:.1f} us/item"
        first = "10,000 trivial items" if name == "serial loop" else ""
        lines.append(f"| {first} | {name} | {row['median_s'] * ms:.1f} ms | {extra} | reported |")
    runners = lat["runners"]
    lines.append(
        f"| 50 x 200 us, per map | raw client.map+gather | "
        f"{runners['raw client.map+gather']['median_s'] * ms:.1f} ms | | |"
    )
    lines.append(
        f"| | ce dask | {runners['ce dask']['median_s'] * ms:.1f} ms | "
        f"{lat['ratio']:.2f}x raw | <= {lat['target_ratio']}x |"
    )
    lines += [
        "",
        f"ce dask fallbacks during the run: {r['ce_dask_fallbacks']}. Worker pids before "
        f"{r['worker_restarts']['pids_before']}, after {r['worker_restarts']['pids_after']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
