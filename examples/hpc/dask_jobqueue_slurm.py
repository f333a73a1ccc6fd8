"""The calibration sweep across several SLURM nodes: dask-jobqueue's SLURMCluster + DaskExecutor.

dask-jobqueue submits one SLURM job per group of dask workers; ``DaskExecutor`` runs the sweep's
items on them exactly as the process strategy does on one node (same results, same order,
fallback to serial work if workers are lost). Run it from a login node or a small job:

    python dask_jobqueue_slurm.py --jobs 4 --cores 16 --memory 32GB --walltime 01:00:00
    python dask_jobqueue_slurm.py --address tcp://SCHEDULER_HOST:8786  # a running scheduler
    python dask_jobqueue_slurm.py --local      # a scheduler and 2 workers here, no SLURM

``--local`` starts the cluster the way a batch job does, with Dask's own command line
(``dask scheduler`` and ``dask worker``, on 127.0.0.1 only), so the workers are not children of
this script: the shape the sweep is deployed in. Needs ``pip install 'ce-parallel[dask]'
dask-jobqueue`` on the cluster (dask-jobqueue is only imported without ``--local`` /
``--address``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import calibration_sweep as sweep

from ce_parallel import DaskExecutor, ParallelConfig

#: Workers of the ``--local`` stand-in cluster.
LOCAL_WORKERS = 2
#: Seconds to wait for the first SLURM worker before giving up (queues can be slow).
WORKER_WAIT_S = 900
#: Seconds the ``--local`` scheduler and workers get to start, and to stop before being killed.
LOCAL_START_S = 60
LOCAL_STOP_S = 20
#: The ``--local`` cluster listens on this machine's loopback only, without a dashboard.
LOOPBACK = ("--host", "127.0.0.1", "--no-dashboard")


def _dask_command() -> str:
    """The ``dask`` command line of this interpreter's environment (else the one on PATH)."""
    found = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
    if found is None:
        raise SystemExit("--local needs the `dask` command line: pip install 'ce-parallel[dask]'")
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(LOCAL_STOP_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)  # the nanny's worker processes too
            process.wait(LOCAL_STOP_S)


@contextlib.contextmanager
def local_cli_cluster(workers: int = LOCAL_WORKERS) -> Iterator[str]:
    """A scheduler and ``workers`` single-threaded workers from the dask command line.

    Listens on 127.0.0.1 only; yields the scheduler address; stops both on exit.
    """
    dask = _dask_command()
    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="ce-dask-") as scratch:
        scheduler_file = Path(scratch) / "scheduler.json"
        files = ["--scheduler-file", str(scheduler_file)]
        worker_args = ["--nworkers", str(workers), "--nthreads", "1"]
        worker_args += ["--death-timeout", str(LOCAL_START_S)]
        with (Path(scratch) / "cluster.log").open("wb") as log:

            def start(command: list[str]) -> subprocess.Popen[bytes]:
                # its own session: stopping it never signals this script
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
                started.append(process)
                return process

            try:
                scheduler = start([dask, "scheduler", *LOOPBACK, "--port", "0", *files])
                deadline = time.monotonic() + LOCAL_START_S
                while not scheduler_file.exists() or not scheduler_file.read_text().strip():
                    if scheduler.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the local dask scheduler did not start")
                    time.sleep(0.1)
                address = json.loads(scheduler_file.read_text())["address"]
                start([dask, "worker", *LOOPBACK, *files, *worker_args])
                yield address
            finally:
                for process in reversed(started):
                    _stop(process)


@contextlib.contextmanager
def start_cluster(args: argparse.Namespace) -> Iterator[tuple[Any, int]]:
    """What to connect the client to, and how many worker threads to wait for."""
    if args.address:
        yield args.address, 1
        return
    if args.local:
        with local_cli_cluster(LOCAL_WORKERS) as address:
            yield address, LOCAL_WORKERS
        return
    from dask_jobqueue import SLURMCluster

    # One SLURM job = `--cores` CPUs split into `--processes` single-threaded worker processes
    # (Python-heavy fits gain nothing from threads); BLAS inside each worker stays at 1 thread.
    cluster = SLURMCluster(
        cores=args.cores,
        processes=args.processes or args.cores,
        memory=args.memory,
        walltime=args.walltime,
        queue=args.partition,
        account=args.account,
        job_script_prologue=args.prologue,
        job_extra_directives=[f"--job-name={args.job_name}"],
    )
    cluster.scale(jobs=args.jobs)
    try:
        yield cluster, 1
    finally:
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--local", action="store_true", help="a scheduler and 2 workers here (dask CLI), no SLURM"
    )
    parser.add_argument("--address", default=None, help="a running scheduler to use, no SLURM")
    sweep.add_output_arguments(parser)
    parser.add_argument("--jobs", type=int, default=2, help="SLURM jobs (nodes) to request")
    parser.add_argument("--cores", type=int, default=16, help="CPUs per SLURM job")
    parser.add_argument("--processes", type=int, default=0, help="workers per job (= cores)")
    parser.add_argument("--memory", default="32GB", help="memory per SLURM job")
    parser.add_argument("--walltime", default="01:00:00", help="walltime per SLURM job")
    parser.add_argument("--partition", default=None, help="SLURM partition (queue)")
    parser.add_argument("--account", default=None, help="SLURM account to charge")
    parser.add_argument("--job-name", default="ce-dask-workers", help="SLURM job name")
    parser.add_argument(
        "--prologue",
        action="append",
        default=[],
        help="shell line run before each worker starts, e.g. 'module load python' (repeatable)",
    )
    args = parser.parse_args(argv)
    scale = sweep.LOCAL if args.local or args.address else sweep.FULL
    out = sweep.output_path(args, "calibration_sweep_dask.csv")

    # Workers on other nodes may not see this directory: send the sweep's functions by value.
    import cloudpickle
    from distributed import Client

    cloudpickle.register_pickle_by_value(sweep)
    with (
        start_cluster(args) as (cluster, wait_for),
        Client(cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(wait_for, timeout=WORKER_WAIT_S)
        # CE_PARALLEL_TELEMETRY and CE_PARALLEL (timeout=, fallback=, ...) still apply
        config = ParallelConfig.from_env(ParallelConfig(enabled=True, strategy="dask"))
        with DaskExecutor(config, client=client) as executor:
            started = time.perf_counter()
            rows = executor.map(sweep.evaluate_setting, sweep.sweep_grid(scale))
            wall = time.perf_counter() - started
            workers = executor.workers
    processes = len({row["pid"] for row in rows})
    sweep.report(
        rows, out, f"{wall:.1f} s on {workers} dask worker thread(s) ({processes} processes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
