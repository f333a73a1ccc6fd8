"""Does the pilot tell GIL-bound work from GIL-releasing work on this machine? Measured.

The unit tests check the verdict from given measurements (``selection.gil_verdict``); this script
times real work with the real pilot: pure-Python loops (hold the GIL), zlib compression and
sleeps (release it), several probes each, and prints how often each verdict was right. Run it
on a quiet machine and on a busy one; a wrong majority is worth an issue.

Usage::

    python evaluation/pilot_gil.py [--probes 5] [--items 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from collections.abc import Callable

from ce_parallel.selection import pilot


def spin(x: int) -> int:
    total = 0
    for i in range(20_000):
        total += i ^ x
    return total


def compress(x: int) -> int:
    # zlib releases the GIL while it compresses
    return len(zlib.compress(bytes(range(256)) * 4096 + bytes([x % 256]), 6))


def nap(x: int) -> int:
    time.sleep(0.005)
    return x


#: name -> (function, whether its items hold the GIL)
CASES: dict[str, tuple[Callable[[int], int], bool]] = {
    "pure-python": (spin, True),
    "zlib": (compress, False),
    "sleep": (nap, False),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=5, help="pilots per kind of work")
    parser.add_argument("--items", type=int, default=200, help="items per pilot")
    args = parser.parse_args(argv)
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "unknown"
    print(f"1-min load average {load}; {args.probes} pilots of {args.items} items on 2 threads")
    wrong_majorities = 0
    for name, (fn, holds) in CASES.items():
        verdicts = [
            pilot(fn, list(range(args.items)), threads=2).holds_gil for _ in range(args.probes)
        ]
        right = sum(v is holds for v in verdicts)
        majority = right * 2 > len(verdicts)
        wrong_majorities += not majority
        print(
            f"{name:12s} holds the GIL: {holds!s:5s} verdicts {verdicts}: "
            f"{right}/{len(verdicts)} right"
        )
    return 1 if wrong_majorities else 0


if __name__ == "__main__":
    sys.exit(main())
