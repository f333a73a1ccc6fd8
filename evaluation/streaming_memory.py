"""Does memory stay flat when a stream of 10^6 items is consumed? Parent peak RSS, measured.

Each runner consumes a generator of ``n`` small items (``fn(x) = x * x + 1`` on ints), summing
the results without keeping them, in a fresh interpreter of its own, which reports its peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the parent process only)
and its wall time. Runners:

* ``baseline``: the imports only, no work (what the interpreter costs before any item);
* ``plain-loop``: ``for x in items: total += fn(x)``;
* ``ce-imap-processes`` / ``ce-imap-threads``: ``executor.imap(fn, items)``;
* ``ce-map-processes``: ``executor.map(fn, items)``, which returns a list (for contrast);
* ``joblib-generator``: ``joblib.Parallel(n_jobs=2, return_as="generator")``;
* ``mpire-imap``: ``mpire.WorkerPool(2).imap(fn, items, chunk_size=2048)`` (skipped when mpire
  is not installed; its default chunk size for an input of unknown length is 1 item).

Usage::

    python evaluation/streaming_memory.py [--sizes 100000 1000000] [--out-dir evaluation/results]

writes ``streaming_memory.json``, ``streaming_memory.md`` (with the machine's load average)
and ``streaming_memory.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT_DIR = os.path.join(HERE, "results")
RUNNERS = (
    "baseline",
    "plain-loop",
    "ce-imap-processes",
    "ce-imap-threads",
    "ce-map-processes",
    "joblib-generator",
    "mpire-imap",
)
WORKERS = 2


def fn(x: int) -> int:
    return x * x + 1


def items(n: int) -> Iterator[int]:
    return (i for i in range(n))


def _ce(strategy: str) -> Any:
    from ce_parallel import ParallelConfig, create_executor

    return create_executor(
        ParallelConfig(enabled=True, strategy=strategy, full_matrix=True, max_workers=WORKERS)
    )


def _run(name: str, n: int) -> int:
    """Consume the stream of ``n`` items with runner ``name``; return the sum of results."""
    if name == "baseline":
        import ce_parallel  # noqa: F401 - the imports every ce runner pays

        return 0
    if name == "plain-loop":
        total = 0
        for x in items(n):
            total += fn(x)
        return total
    if name in ("ce-imap-processes", "ce-imap-threads"):
        with _ce(name.rsplit("-", 1)[1]) as ex:
            return sum(ex.imap(fn, items(n)))
    if name == "ce-map-processes":
        with _ce("processes") as ex:
            return sum(ex.map(fn, items(n)))
    if name == "joblib-generator":
        import joblib

        parallel = joblib.Parallel(n_jobs=WORKERS, return_as="generator")
        return sum(parallel(joblib.delayed(fn)(x) for x in items(n)))
    if name == "mpire-imap":
        from mpire import WorkerPool

        with WorkerPool(n_jobs=WORKERS) as pool:
            return sum(pool.imap(fn, items(n), chunk_size=2048))
    raise SystemExit(f"unknown runner {name!r}")


def _child(name: str, n: int) -> None:
    started = time.perf_counter()
    total = _run(name, n)
    wall = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"total": total, "wall_s": wall, "peak_rss_mib": peak_kib / 1024}))


def _available(name: str) -> str | None:
    """Why ``name`` cannot run here, or None."""
    needs: dict[str, str] = {"joblib-generator": "joblib", "mpire-imap": "mpire"}
    module = needs.get(name)
    if module and importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    return None


def measure(name: str, n: int, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Run one runner in a fresh interpreter and return what it reported."""
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(HERE), "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", name, str(n)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
        check=False,
    )
    if out.returncode != 0:
        return {"runner": name, "n": n, "error": out.stderr.strip().splitlines()[-1:]}
    report = json.loads(out.stdout.strip().splitlines()[-1])
    expected = 0 if name == "baseline" else sum(fn(x) for x in range(n))
    return {
        "runner": name,
        "n": n,
        "peak_rss_mib": round(report["peak_rss_mib"], 1),
        "wall_s": round(report["wall_s"], 2),
        "correct": report["total"] == expected,
    }


def _load() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def _markdown(result: dict[str, Any]) -> str:
    sizes = result["sizes"]
    rows = result["rows"]
    lines = [
        "# Streaming memory: parent peak RSS consuming a generator of small items",
        "",
        "Each runner consumes a generator of `n` ints with `fn(x) = x * x + 1`, summing the",
        "results without keeping them, in a fresh interpreter; the number is that parent",
        "process's peak RSS (`ru_maxrss`), workers not included. Produced by",
        "`evaluation/streaming_memory.py`.",
        "",
        f"Machine: {result['machine']['cpus']} CPUs, Python {result['machine']['python']}; "
        f"load average before {result['load_before']}, after {result['load_after']} "
        "(a shared, busy machine: wall times are indicative only).",
        "",
        "| runner | "
        + " | ".join(f"peak RSS MiB, n={n:,}" for n in sizes)
        + " | growth MiB | "
        + " | ".join(f"wall s, n={n:,}" for n in sizes)
        + " |",
        "|---|" + "---:|" * (2 * len(sizes) + 1),
    ]
    for name in RUNNERS:
        mine = {r["n"]: r for r in rows if r["runner"] == name}
        if not mine:
            continue
        if all("skipped" in r for r in mine.values()):
            reason = next(iter(mine.values()))["skipped"]
            lines.append(f"| {name} | skipped: {reason} |" + " |" * (2 * len(sizes)))
            continue
        rss = [str(mine[n].get("peak_rss_mib", mine[n].get("error", "-"))) for n in sizes]
        wall = [str(mine[n].get("wall_s", "-")) for n in sizes]
        ends = [mine[n].get("peak_rss_mib") for n in (sizes[0], sizes[-1])]
        growth = [f"{ends[1] - ends[0]:+.1f}" if None not in ends else "-"]
        lines.append(f"| {name} | " + " | ".join(rss + growth + wall) + " |")
    lines += [
        "",
        "`growth` is the peak at the largest size minus the peak at the smallest: what holding",
        "the stream costs. The level itself includes each library's imports (joblib and mpire",
        "import more than ce-parallel; `baseline` is ce-parallel's imports alone). Two workers",
        "for every parallel runner; mpire runs with `chunk_size=2048` (its default for an input",
        "of unknown length is one item per task), joblib with its automatic batching.",
    ]
    wrong = [f"{r['runner']} n={r['n']}" for r in rows if r.get("correct") is False]
    lines += [
        "",
        "Every runner's sum was checked against the plain loop's"
        + (f"; WRONG: {', '.join(wrong)}." if wrong else ": all correct."),
    ]
    return "\n".join(lines) + "\n"


def _figure(result: dict[str, Any], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = result["sizes"]
    names = [
        r for r in RUNNERS if any(x["runner"] == r and "peak_rss_mib" in x for x in result["rows"])
    ]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(sizes)
    for k, n in enumerate(sizes):
        values = []
        for name in names:
            row = next((r for r in result["rows"] if r["runner"] == name and r["n"] == n), {})
            values.append(row.get("peak_rss_mib", 0.0))
        xs = [i + (k - (len(sizes) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, values, width, label=f"n = {n:,}")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("parent peak RSS (MiB)")
    ax.set_title(f"Consuming a generator of small items (load {result['load_before'][0]})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--runners", nargs="+", default=list(RUNNERS))
    parser.add_argument("--out-dir", default=DEFAULT_OUT_DIR)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the .md and .png from the .json"
    )
    parser.add_argument("--child", nargs=2, metavar=("RUNNER", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return 0
    base = os.path.join(args.out_dir, "streaming_memory")
    if args.report_only:
        with open(base + ".json") as f:
            saved = json.load(f)
        _write_reports(saved, base)
        return 0
    load_before = _load()
    rows: list[dict[str, Any]] = []
    for n in args.sizes:
        for name in args.runners:
            why = _available(name)
            row = {"runner": name, "n": n, "skipped": why} if why else measure(name, n)
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {
        "sizes": args.sizes,
        "rows": rows,
        "load_before": load_before,
        "load_after": _load(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "workers": WORKERS,
    }
    os.makedirs(args.out_dir, exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=2)
    _write_reports(result, base)
    return 0


def _write_reports(result: dict[str, Any], base: str) -> None:
    with open(base + ".md", "w") as f:
        f.write(_markdown(result))
    _figure(result, base + ".png")


if __name__ == "__main__":
    sys.exit(main())
