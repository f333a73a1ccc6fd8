"""Large telemetry files read in pieces, in parallel, with the answer one pass would give.

A file above ``REPORT_PIECE_BYTES`` is cut at line starts into byte ranges (``plan_pieces``);
each range is read and counted on its own (``read_piece``: an unfinished ``Aggregator``, its
problems numbered from the range's first line, and what its first and last records were), and
the ranges are joined in file order (``join``): line numbers shifted by the lines before them,
a change of version between two ranges noted where it happens, decisions and runs split over
two ranges linked. The ranges are mapped through a ``ParallelFacade`` with a measured cost per
byte, so the report obeys ``CE_PARALLEL`` like any other caller and reads a small file serially.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from .aggregate import MAX_PENDING, Aggregator
from .reader import MAX_LISTED_PROBLEMS, Problem, Problems, RangeState, read_range


@dataclass(frozen=True)
class Piece:
    """Bytes ``start`` to ``end`` (None: the end of the file) of the ``number``-th path given."""

    number: int
    path: str
    start: int
    end: int | None


@dataclass
class PieceCount:
    """What reading one piece counted."""

    agg: Aggregator
    problems: Problems
    versions: Counter[int]
    #: what the last piece read ended with
    state: RangeState = field(default_factory=RangeState)


def plan_pieces(paths: Sequence[str], pieces_per_file: int, min_bytes: int) -> list[Piece]:
    """Each file cut into at most ``pieces_per_file`` ranges of at least ``min_bytes``, at line
    starts; a file smaller than ``2 x min_bytes`` is one piece."""
    pieces: list[Piece] = []
    for number, path in enumerate(paths):
        size = os.path.getsize(path)
        wanted = max(1, min(pieces_per_file, size // max(1, min_bytes)))
        starts = [0]
        if wanted > 1:
            with open(path, "rb") as handle:
                for k in range(1, wanted):
                    handle.seek(size * k // wanted)
                    handle.readline()  # on to the start of the next line
                    at = handle.tell()
                    if starts[-1] < at < size:
                        starts.append(at)
        ends: list[int | None] = [*starts[1:], None]
        pieces.extend(Piece(number, path, a, b) for a, b in zip(starts, ends, strict=True))
    return pieces


def read_piece(
    piece: Piece, max_pending: int = MAX_PENDING, into: PieceCount | None = None
) -> PieceCount:
    """Read and count one piece (in a worker process when the pieces run in parallel), on its
    own or, with ``into``, after the pieces that count has read."""
    count = into or PieceCount(Aggregator(max_pending=max_pending), Problems(), Counter())
    count.state = RangeState()
    add = count.agg.add
    records = read_range(
        piece.path, piece.start, piece.end, count.problems, count.versions, count.state
    )
    for version, record in records:
        add(version, record)
    return count


def join(pieces: Sequence[Piece], counts: Sequence[PieceCount]) -> PieceCount:
    """One count of all the pieces, in order, as if one reader had read them all (unfinished:
    call ``agg.finish()``).

    Two things can differ from one pass, neither in a file telemetry wrote: the eviction of
    waiting links when more than ``max_pending`` wait at once, and a decision id used twice
    whose first use waits for its partner in an earlier piece (a duplicate here; one pass pairs
    it first and lets the second use wait).
    """
    total = counts[0]
    listed = [(pieces[0].number, p.line, p) for p in total.problems.listed]
    lines_before = total.state.lines
    last_version = total.state.last
    for previous, piece, count in zip(pieces, pieces[1:], counts[1:], strict=False):
        if piece.number != previous.number:
            lines_before, last_version = 0, None
        for problem in count.problems.listed:
            problem.line += lines_before
            listed.append((piece.number, problem.line, problem))
        total.problems.counts.update(count.problems.counts)
        first = count.state.first
        if first is not None and last_version is not None and first[0] != last_version:
            line = first[1] + lines_before
            total.problems.counts["mixed_versions"] += 1
            message = f"version {first[0]} records follow version {last_version} ones"
            problem = Problem(piece.path, line, "mixed_versions", message)
            listed.append((piece.number, line, problem))
        if count.state.last is not None:
            last_version = count.state.last
        lines_before += count.state.lines
        total.versions.update(count.versions)
        total.agg.merge(count.agg)
    listed.sort(key=lambda entry: (entry[0], entry[1]))
    total.problems.listed = [problem for _, _, problem in listed[:MAX_LISTED_PROBLEMS]]
    return total


def count_files(
    paths: Sequence[str],
    *,
    max_pending: int = MAX_PENDING,
    pieces_per_file: int | None = None,
    min_bytes: int | None = None,
) -> PieceCount:
    """Read and count every file, in parallel pieces when they are large enough to gain."""
    from ..heuristics import REPORT_PIECE_BYTES, REPORT_SECONDS_PER_BYTE

    if pieces_per_file is None:
        from ..resources import cpu_budget

        pieces_per_file = cpu_budget().count
    smallest = REPORT_PIECE_BYTES if min_bytes is None else min_bytes
    pieces = plan_pieces(paths, pieces_per_file, smallest)
    if len(pieces) == len(paths):
        # one pass over the files, in order, with one count: exactly what a single reader sees
        count = PieceCount(Aggregator(max_pending=max_pending), Problems(), Counter())
        for piece in pieces:
            read_piece(piece, into=count)
        return count
    from ..config import ParallelConfig
    from ..facade import ParallelFacade

    size = sum(os.path.getsize(path) for path in paths)
    per_piece = size / len(pieces) * REPORT_SECONDS_PER_BYTE
    read = functools.partial(read_piece, max_pending=max_pending)
    with ParallelFacade(ParallelConfig(enabled=True, strategy="joblib")) as facade:
        counts = facade.map(read, pieces, seconds_per_item=per_piece)
    return join(pieces, counts)


__all__ = ["Piece", "PieceCount", "count_files", "join", "plan_pieces", "read_piece"]
