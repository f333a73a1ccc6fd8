"""DaskExecutor on clusters it did not start: Dask's own command line, and an in-process cluster.

A scheduler and two workers are started with ``dask scheduler`` / ``dask worker`` (127.0.0.1
only), as a batch job or dask-jobqueue starts them: the workers are children of a nanny, not of
the caller. Every map must run on those workers (not in the caller, not serially after a
fallback), must not kill or restart any of them, and must give each worker its set-up once,
again after a restart. A cluster whose workers live in the caller's process must leave the
caller alone.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.dask

distributed = pytest.importorskip("distributed", reason="dask extra not installed")

from ce_parallel import ParallelConfig, create_executor  # noqa: E402
from ce_parallel.strategies.dask import PLUGIN_PREFIX, DaskExecutor  # noqa: E402

WORKERS = 2
#: Seconds the scheduler and workers get to start, and to stop before they are killed.
START_S = 45
STOP_S = 15
#: Bound on waiting for a restarted worker to come back and run its set-up.
RESTART_S = 40
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "hpc"
EXAMPLE_TIMEOUT_S = 120
WATCHDOG_THREAD = "ce-parallel-parent-watch"


# -- functions the workers run (importable by reference: the workers get our sys.path) -------


def square_where(x: int) -> tuple[int, int, str]:
    return x * x, os.getpid(), threading.current_thread().name


def busy_square_where(x: int) -> tuple[int, int, str]:
    time.sleep(0.002)  # long enough that both workers take chunks
    return square_where(x)


def record_pid(path: str) -> None:
    """A worker initializer: one line per set-up, naming the process."""
    with open(path, "a") as handle:
        handle.write(f"{os.getpid()}\n")


def record_thread(path: str) -> None:
    with open(path, "a") as handle:
        handle.write(f"{os.getpid()} {threading.current_thread().name}\n")


def thread_names() -> list[str]:
    return [t.name for t in threading.enumerate()]


# -- the command-line cluster ------------------------------------------------------------------


@dataclass
class CliCluster:
    address: str
    client: Any
    log: Path


def _dask_command() -> str:
    found = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
    if found is None:
        pytest.skip("the `dask` command line is not installed")
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_S)
            return
        except subprocess.TimeoutExpired:
            pass
    # its own session: the nanny's worker processes go with it
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(STOP_S)


def _environ() -> dict[str, str]:
    # the workers import exactly what this interpreter imports (ce_parallel, these tests)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CE_PARALLEL", "CEPARALLEL"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliCluster]:
    """``dask scheduler`` + ``dask worker --nworkers 2 --nthreads 1``, on 127.0.0.1 only."""
    dask = _dask_command()
    where = tmp_path_factory.mktemp("dask-cli")
    scheduler_file = where / "scheduler.json"
    log_path = where / "cluster.log"
    loopback = ["--host", "127.0.0.1", "--no-dashboard"]
    started: list[subprocess.Popen[bytes]] = []
    client = None
    with log_path.open("wb") as log:

        def start(command: list[str]) -> subprocess.Popen[bytes]:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_environ(),
                cwd=where,
                start_new_session=True,
            )
            started.append(process)
            return process

        try:
            scheduler = start(
                [
                    dask,
                    "scheduler",
                    *loopback,
                    "--port",
                    "0",
                    "--scheduler-file",
                    str(scheduler_file),
                ]
            )
            deadline = time.monotonic() + START_S
            while not scheduler_file.exists() or not scheduler_file.read_text().strip():
                assert scheduler.poll() is None, log_path.read_text()[-2000:]
                assert time.monotonic() < deadline, "the scheduler did not start"
                time.sleep(0.1)
            address = json.loads(scheduler_file.read_text())["address"]
            assert address.startswith("tcp://127.0.0.1:")
            files = ["--scheduler-file", str(scheduler_file)]
            sizes = ["--nworkers", str(WORKERS), "--nthreads", "1"]
            start([dask, "worker", *loopback, *files, *sizes, "--death-timeout", str(START_S)])
            client = distributed.Client(address, timeout=START_S, set_as_default=False)
            client.wait_for_workers(WORKERS, timeout=START_S)
            yield CliCluster(address, client, log_path)
        finally:
            if client is not None:
                client.close()
            for process in reversed(started):
                _stop(process)


def worker_pids(client: Any, on_error: str = "raise") -> dict[str, int]:
    """Worker address -> pid, as the scheduler knows them now."""
    return dict(client.run(os.getpid, on_error=on_error))


def wait_for_new_workers(client: Any, old: dict[str, int]) -> dict[str, int]:
    """Wait (bounded) until there are WORKERS workers again and one of them is new."""
    deadline = time.monotonic() + RESTART_S
    while True:
        client.wait_for_workers(WORKERS, timeout=RESTART_S)
        # a killed worker may still be listed for a moment: ask only those that answer
        now = {a: p for a, p in worker_pids(client, "return").items() if isinstance(p, int)}
        if len(now) == WORKERS and set(now.values()) != set(old.values()):
            return now
        assert time.monotonic() < deadline, f"no worker came back: {old} -> {now}"
        time.sleep(0.2)


def lines_settle(path: Path, count: int) -> list[str]:
    """The file's lines once it has ``count`` of them (bounded wait: set-up is queued on each
    worker's task thread, ahead of its chunks, and a worker given no chunk runs it meanwhile)."""
    deadline = time.monotonic() + RESTART_S
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def dask_config(**changes: Any) -> ParallelConfig:
    return ParallelConfig(enabled=True, strategy="dask", full_matrix=True, **changes)


def check_healthy(ex: Any, rows: list[tuple[int, int, str]], items: range, pids: set[int]) -> None:
    assert [value for value, _, _ in rows] == [x * x for x in items]
    ran_in = {pid for _, pid, _ in rows}
    assert os.getpid() not in ran_in, "items ran in the caller"
    assert ran_in <= pids, f"items ran outside the cluster's workers: {ran_in} vs {pids}"
    assert ex.metrics.fallbacks == 0


# -- a cluster the executor did not start ----------------------------------------------------


def test_maps_run_on_the_workers_and_restart_none_of_them(cli_cluster: CliCluster) -> None:
    client = cli_cluster.client
    before = worker_pids(client)
    ex = create_executor(dask_config(dask_address=cli_cluster.address))
    assert isinstance(ex, DaskExecutor)
    try:
        used: set[int] = set()
        for round_ in range(5):
            items = range(round_ * 40, round_ * 40 + 40)
            rows = ex.map(busy_square_where, items)
            check_healthy(ex, rows, items, set(before.values()))
            used |= {pid for _, pid, _ in rows}
        assert ex.workers == WORKERS  # chunks planned for the cluster's threads
        # no worker carries the parent watchdog (its parent is the nanny, not us)
        for names in client.run(thread_names).values():
            assert WATCHDOG_THREAD not in names
    finally:
        ex.shutdown()
    # the same workers, the same processes: none was killed and restarted by its nanny
    assert worker_pids(client) == before
    assert b"exited with status" not in cli_cluster.log.read_bytes()
    # the executor's set-up plugin left with it
    for names in client.run(_plugin_names).values():
        assert not [name for name in names if name.startswith(PLUGIN_PREFIX)]


def _plugin_names(dask_worker: Any) -> list[str]:
    return list(dask_worker.plugins)


def test_the_address_from_the_environment(cli_cluster: CliCluster) -> None:
    config = ParallelConfig.from_env(
        environ={
            "CE_PARALLEL": "on,dask",
            "CE_PARALLEL_FULL": "1",
            "CE_PARALLEL_DASK_ADDRESS": cli_cluster.address,
        }
    )
    before = worker_pids(cli_cluster.client)
    with create_executor(config) as ex:
        check_healthy(ex, ex.map(square_where, range(30)), range(30), set(before.values()))
    assert worker_pids(cli_cluster.client) == before


def test_a_client_passed_in(cli_cluster: CliCluster) -> None:
    client = cli_cluster.client
    before = worker_pids(client)
    with DaskExecutor(dask_config(), client=client) as ex:
        for _ in range(3):
            check_healthy(ex, ex.map(square_where, range(25)), range(25), set(before.values()))
    assert client.status == "running"  # never closed by us
    assert worker_pids(client) == before


def test_work_from_a_module_the_workers_cannot_import(
    cli_cluster: CliCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as the HPC example sends its sweep: by value, from a module only the caller has
    import cloudpickle

    (tmp_path / "only_here.py").write_text(
        textwrap.dedent(
            """
            import os
            from dataclasses import dataclass

            @dataclass
            class Point:
                x: int

            def double(point):
                return Point(point.x * 2), os.getpid()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here  # type: ignore[import-not-found]

    cloudpickle.register_pickle_by_value(only_here)
    try:
        pids = set(worker_pids(cli_cluster.client).values())
        with create_executor(dask_config(dask_address=cli_cluster.address)) as ex:
            rows = ex.map(only_here.double, [only_here.Point(i) for i in range(12)])
            assert [point.x for point, _ in rows] == [2 * i for i in range(12)]
            assert {pid for _, pid in rows} <= pids
            assert ex.metrics.fallbacks == 0
    finally:
        cloudpickle.unregister_pickle_by_value(only_here)
        sys.modules.pop("only_here", None)


def test_each_worker_runs_its_setup_once(cli_cluster: CliCluster, tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    pids = worker_pids(cli_cluster.client)
    config = dask_config(
        dask_address=cli_cluster.address,
        worker_initializer=record_pid,
        worker_init_args=(str(log),),
    )
    with create_executor(config) as ex:
        for round_ in range(4):
            items = range(round_, round_ + 30)
            check_healthy(ex, ex.map(square_where, items), items, set(pids.values()))
        # the plugin ran on every worker when the executor connected, and never again
        setups = lines_settle(log, WORKERS)
        assert sorted(int(line) for line in setups) == sorted(pids.values())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["restart_workers", "kill"])
def test_a_restarted_worker_gets_its_setup_again(
    cli_cluster: CliCluster, tmp_path: Path, how: str
) -> None:
    client = cli_cluster.client
    log = tmp_path / "setup.log"
    config = dask_config(
        dask_address=cli_cluster.address,
        worker_initializer=record_pid,
        worker_init_args=(str(log),),
    )

    def setups() -> list[int]:
        return sorted(int(line) for line in log.read_text().split())

    with create_executor(config) as ex:
        before = worker_pids(client)
        check_healthy(ex, ex.map(square_where, range(20)), range(20), set(before.values()))
        lines_settle(log, WORKERS)
        assert setups() == sorted(before.values())
        address, pid = sorted(before.items())[0]
        if how == "restart_workers":
            client.restart_workers([address])
        else:
            os.kill(pid, signal.SIGKILL)  # the nanny starts a new worker process
        after = wait_for_new_workers(client, before)
        (new_pid,) = set(after.values()) - set(before.values())
        deadline = time.monotonic() + RESTART_S
        while new_pid not in setups():
            assert time.monotonic() < deadline, f"the new worker {new_pid} got no set-up"
            time.sleep(0.1)
        # once in the new worker, and the surviving one was not set up again
        assert setups() == sorted([*before.values(), new_pid])
        check_healthy(ex, ex.map(square_where, range(20)), range(20), set(after.values()))
        assert setups() == sorted([*before.values(), new_pid])


# -- the HPC example, in the shape it is deployed in ----------------------------------------


def _example_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in _environ().items() if not k.startswith("SLURM_")}
    env.update(OUT_DIR=str(tmp_path), **extra)
    return env


def _run_example(tmp_path: Path, *args: str) -> tuple[int, list[dict[str, str]], list[Any]]:
    pytest.importorskip("sklearn")
    telemetry = tmp_path / "telemetry.jsonl"
    out = tmp_path / "sweep.csv"
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "dask_jobqueue_slurm.py"), *args, "--out", str(out)],
        env=_example_env(tmp_path, CE_PARALLEL_TELEMETRY=str(telemetry)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        _, stderr = process.communicate(timeout=EXAMPLE_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(STOP_S)
    assert process.returncode == 0, stderr.decode()[-3000:]
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = [json.loads(line) for line in telemetry.read_text().splitlines()]
    return process.pid, rows, records


def _check_example(example_pid: int, rows: list[dict[str, str]], records: list[Any]) -> set[int]:
    assert len(rows) == 8  # 4 models x 2 calibration methods x 1 seed
    (run,) = [r for r in records if r["event"] == "run"]
    assert (run["strategy"], run["items"], run["workers"], run["fallbacks"]) == ("dask", 8, 2, 0)
    assert not [r for r in records if r["event"] == "fallback"]
    pids = {int(row["pid"]) for row in rows}
    assert example_pid not in pids
    return pids


@pytest.mark.timeout(EXAMPLE_TIMEOUT_S + 20)
def test_dask_example_local_mode_runs_on_command_line_workers(tmp_path: Path) -> None:
    pid, rows, records = _run_example(tmp_path, "--local")
    _check_example(pid, rows, records)


@pytest.mark.timeout(EXAMPLE_TIMEOUT_S + 20)
def test_dask_example_on_a_running_scheduler(cli_cluster: CliCluster, tmp_path: Path) -> None:
    before = worker_pids(cli_cluster.client)
    pid, rows, records = _run_example(tmp_path, "--address", cli_cluster.address)
    assert _check_example(pid, rows, records) <= set(before.values())
    assert worker_pids(cli_cluster.client) == before


# -- an in-process cluster: its workers are threads of the caller --------------------------


@pytest.fixture
def in_process_cluster() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=WORKERS,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},
    )
    try:
        assert cluster.scheduler_address.startswith("inproc://")
        yield cluster
    finally:
        cluster.close()


def test_an_in_process_cluster_leaves_the_caller_alone(
    in_process_cluster: Any, tmp_path: Path
) -> None:
    from ce_parallel.worker import in_worker

    log = tmp_path / "setup.log"
    caller = threading.current_thread().name
    config = dask_config(
        dask_address=in_process_cluster.scheduler_address,
        worker_initializer=record_thread,
        worker_init_args=(str(log),),
    )
    with create_executor(config) as ex:
        for _ in range(4):
            rows = ex.map(busy_square_where, range(40))
            assert [value for value, _, _ in rows] == [x * x for x in range(40)]
            assert {pid for _, pid, _ in rows} == {os.getpid()}  # in-process, by design
            assert caller not in {name for _, _, name in rows}  # but on the workers' threads
            assert ex.metrics.fallbacks == 0
    setups = lines_settle(log, WORKERS)
    assert len(setups) == len(set(setups)) == WORKERS  # once per worker thread
    # nothing of a worker's set-up touched the caller: not marked as a worker, not watched
    assert not in_worker()
    assert WATCHDOG_THREAD not in thread_names()
    with create_executor(ParallelConfig(enabled=True, strategy="threads", max_workers=2)) as ex:
        rows = ex.map(square_where, range(20))
        assert caller not in {name for _, _, name in rows}  # the caller still runs pools


_SURVIVOR = """
import os, sys
from distributed import LocalCluster
from ce_parallel import ParallelConfig, create_executor
from ce_parallel.worker import in_worker

def where(x):
    return x * x, os.getpid()

if __name__ == "__main__":
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                           dashboard_address=None, scheduler_kwargs={"dashboard_address": ":0"})
    config = ParallelConfig(enabled=True, strategy="dask", full_matrix=True,
                            dask_address=cluster.scheduler_address)
    with create_executor(config) as ex:
        for _ in range(3):
            rows = ex.map(where, range(30))
            assert [v for v, _ in rows] == [x * x for x in range(30)]
        fallbacks = ex.metrics.fallbacks
    import time
    time.sleep(1.0)  # a parent watchdog would have fired by now (it polls every 0.25 s)
    cluster.close()
    print("alive", fallbacks, in_worker())
"""


def test_the_caller_of_an_in_process_cluster_survives(tmp_path: Path) -> None:
    script = tmp_path / "survivor.py"
    script.write_text(_SURVIVOR)
    done = subprocess.run(
        [sys.executable, str(script)],
        env=_environ(),
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
    )
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.split() == ["alive", "0", "False"]
