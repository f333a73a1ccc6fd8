"""The calibration sweep across several SLURM nodes: dask-jobqueue's SLURMCluster + DaskExecutor.

dask-jobqueue submits one SLURM job per group of dask workers; ``DaskExecutor`` runs the sweep's
items on them exactly as the process strategy does on one node (same results, same order,
fallback to serial work if workers are lost). Run it from a login node or a small job:

    python dask_jobqueue_slurm.py --jobs 4 --cores 16 --memory 32GB --walltime 01:00:00
    python dask_jobqueue_slurm.py --local      # a LocalCluster here instead of SLURM jobs

Needs ``pip install 'ce-parallel[dask]' dask-jobqueue`` on the cluster (dask-jobqueue is only
imported without ``--local``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import calibration_sweep as sweep

from ce_parallel import DaskExecutor, ParallelConfig

#: Workers of the ``--local`` stand-in cluster.
LOCAL_WORKERS = 2
#: Seconds to wait for the first SLURM worker before giving up (queues can be slow).
WORKER_WAIT_S = 900


def start_cluster(args: argparse.Namespace) -> tuple[Any, int]:
    """The cluster and how many worker threads to wait for."""
    if args.local:
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=LOCAL_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
        )
        return cluster, LOCAL_WORKERS
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
    return cluster, 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true", help="a LocalCluster, no SLURM")
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
    scale = sweep.LOCAL if args.local else sweep.FULL
    out = sweep.output_path(args, "calibration_sweep_dask.csv")

    # Workers on other nodes may not see this directory: send the sweep's functions by value.
    import cloudpickle
    from distributed import Client

    cloudpickle.register_pickle_by_value(sweep)
    cluster, wait_for = start_cluster(args)
    try:
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(wait_for, timeout=WORKER_WAIT_S)
            # CE_PARALLEL_TELEMETRY and CE_PARALLEL (timeout=, fallback=, ...) still apply
            config = ParallelConfig.from_env(ParallelConfig(enabled=True, strategy="dask"))
            with DaskExecutor(config, client=client) as executor:
                started = time.perf_counter()
                rows = executor.map(sweep.evaluate_setting, sweep.sweep_grid(scale))
                wall = time.perf_counter() - started
                workers = executor.workers
    finally:
        cluster.close()
    processes = len({row["pid"] for row in rows})
    sweep.report(
        rows, out, f"{wall:.1f} s on {workers} dask worker thread(s) ({processes} processes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
