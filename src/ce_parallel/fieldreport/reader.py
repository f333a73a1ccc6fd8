"""Reading telemetry files line by line: parse, check against the schema, report problems.

Nothing here keeps a record after handing it on: ``read_records`` is a generator, and the only
state it holds is a bounded list of problems (``Problems``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: The version this reader was written for; lines without ``version`` are version 1.
SCHEMA_VERSION = 2
#: Versions this reader understands; a line of any other version is reported and skipped.
KNOWN_VERSIONS = (1, 2)
#: Problems listed with their file and line; beyond this only their count by kind is kept.
MAX_LISTED_PROBLEMS = 50

# field -> allowed kinds, for version 2 records. "num" is int or float (or the strings
# json_safe writes for nan and the infinities), "num?" also None; "str?" and "int?" likewise.
_V2_FIELDS: dict[str, dict[str, str]] = {
    "decision": {
        "decision_id": "str",
        "call_site": "str",
        "reason": "str",
        "use_parallel": "bool",
        "workers": "int?",
        "n_instances": "int?",
        "n_features": "int?",
        "cpu_budget": "int?",
        "per_item_s": "num?",
        "start_cost_s": "num?",
        "estimated_serial_s": "num?",
        "estimated_parallel_s": "num?",
        "cost_source": "str?",
    },
    "run": {
        "decision_id": "str",
        "call_site": "str",
        "serial": "bool",
        "items": "int",
        "workers": "int?",
        "wall_time_s": "num",
        "busy_time_s": "num?",
        "fallbacks": "int?",
        "error": "str?",
    },
    "fallback": {
        "cause": "str",
        "stage": "str?",
        "decision_id": "str?",
        "items": "int?",
    },
}
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


@dataclass
class Problem:
    """One line that was skipped (or, for ``mixed_versions``, noted)."""

    file: str
    line: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"


@dataclass
class Problems:
    """Counts of problems by kind, and the first ``MAX_LISTED_PROBLEMS`` with their place."""

    counts: Counter[str] = field(default_factory=Counter)
    listed: list[Problem] = field(default_factory=list)

    def add(self, file: str, line: int, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if len(self.listed) < MAX_LISTED_PROBLEMS:
            self.listed.append(Problem(file, line, kind, message))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def number(value: Any) -> float | None:
    """A JSON number as float; the strings ``nan``/``inf``/``-inf`` too; None for anything else."""
    kind = type(value)
    if kind is float:
        return float(value)
    if kind is int:
        return float(value)
    if kind is str:
        return _NON_FINITE.get(value)
    return None  # None, booleans, containers


_TYPES: dict[str, frozenset[type]] = {
    "str": frozenset({str}),
    "bool": frozenset({bool}),
    "int": frozenset({int}),
    "num": frozenset({int, float}),
}
_NONE = frozenset({type(None)})
# event -> ((field, types a valid value may have: None's type too where optional), ...). A value
# of another type is then looked at once more (``_why_not``): json_safe's number strings pass.
_CHECKS: dict[str, tuple[tuple[str, frozenset[type]], ...]] = {
    event: tuple(
        (name, _TYPES[kind.rstrip("?")] | (_NONE if kind.endswith("?") else frozenset()))
        for name, kind in kinds.items()
    )
    for event, kinds in _V2_FIELDS.items()
}


def check_record(record: dict[str, Any], version: int) -> str | None:
    """Why ``record`` does not follow the schema of ``version``, or None when it does.

    Version 1 records (today's, without ids) are only required to have a string ``event``;
    version 2 ``decision``, ``run`` and ``fallback`` records must carry the fields the report
    uses with the right types (a missing optional field counts as None).
    """
    if version < 2:
        return None
    checks = _CHECKS.get(record["event"])
    if checks is None:
        return None
    get = record.get
    for name, types in checks:
        if type(get(name)) not in types:
            why = _why_not(record, name)
            if why is not None:
                return why
    return None


def _why_not(record: dict[str, Any], name: str) -> str | None:
    """Why field ``name`` of ``record`` breaks the schema, or None when it is a number string
    json_safe writes (nan and the infinities) where an estimate may be None."""
    event = record["event"]
    kind = _V2_FIELDS[event][name]
    value = record.get(name)
    numeric, optional = kind.startswith("num"), kind.endswith("?")
    if value is None:
        return f"{event} record without {name!r}"
    if numeric and optional and type(value) is str and value in _NON_FINITE:
        return None
    shown = "number" if numeric else kind.rstrip("?")
    return f"{event} record: {name}={value!r} is not {shown}"


def _decoder() -> tuple[Callable[[str], Any], bool]:
    """The JSON decoder for one line, and whether it is orjson: orjson when it is installed
    (about three times faster; it also rejects ``NaN`` tokens, which ce-parallel never writes),
    else the standard library's scanner.
    """
    try:
        import orjson
    except ImportError:
        return _standard_decoder(), False
    return orjson.loads, True


def _standard_decoder() -> Callable[[str], Any]:
    """The standard library's decoder, calling its C scanner directly for a line that is one
    JSON value and nothing else (as every line ce-parallel writes is): that skips the two
    whitespace matches and two Python calls of ``JSONDecoder.decode``, a fifth of the time per
    line. Anything else goes through ``decode``, which parses or raises with its message."""
    decoder = json.JSONDecoder()
    scan = decoder.scan_once  # type: ignore[attr-defined]
    full = decoder.decode

    def decode(line: str) -> Any:
        try:
            value, end = scan(line, 0)
        except (ValueError, StopIteration):
            return full(line)
        return value if end == len(line) else full(line)

    return decode


#: Bytes read from a file at once. Lines are cut at ``\n`` only, so a block ends on a line
#: boundary and a UTF-8 sequence is never split (``\n`` never occurs inside one).
BLOCK_BYTES = 1 << 20


def _lines(path: str, start: int, end: int | None) -> Iterator[tuple[str, bool]]:
    """``(line, ended)`` for the lines from byte ``start`` (a line start) to ``end`` (a line
    start, or None for the end of the file), without their ``\n``; ``ended`` is False only for
    a last line without one. Bytes that are not UTF-8 become U+FFFD: the line then fails to
    parse, or keeps the replaced character inside a string; it is reported, never a crash.
    """
    with open(path, "rb") as handle:
        handle.seek(start)
        left = None if end is None else end - start
        tail = b""
        while left is None or left > 0:
            block = handle.read(BLOCK_BYTES if left is None else min(BLOCK_BYTES, left))
            if not block:
                break
            if left is not None:
                left -= len(block)
            if tail:
                block = tail + block
            cut = block.rfind(b"\n") + 1
            tail = block[cut:]
            if cut:
                lines = block[:cut].decode("utf-8", "replace").split("\n")
                lines.pop()  # the empty string after the last "\n"
                for line in lines:
                    yield line, True
        if tail:
            yield tail.decode("utf-8", "replace"), False


@dataclass
class RangeState:
    """What reading one byte range learnt that a reader of the next range needs.

    ``lines`` counts every line of the range (to number the next range's lines); ``first`` is
    the version and line of its first usable record, ``last`` the version of its last one (a
    change of version between two ranges of one file is noted when they are joined).
    """

    lines: int = 0
    first: tuple[int, int] | None = None
    last: int | None = None


def read_range(
    path: str,
    start: int,
    end: int | None,
    problems: Problems,
    versions: Counter[int],
    state: RangeState,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(version, record)`` for every usable line of ``path`` from byte ``start`` to
    ``end``; lines are numbered from 1 at ``start`` (see ``read_records`` for what is skipped).
    """
    decode, _ = _decoder()
    last_version: int | None = None
    lineno = 0
    for lineno, (raw, ended) in enumerate(_lines(path, start, end), 1):
        try:
            record = decode(raw)
        except ValueError as exc:
            if not raw.strip():
                continue
            if not ended:
                problems.add(path, lineno, "truncated", "the last line is cut short")
            else:
                problems.add(path, lineno, "malformed", f"not JSON ({exc})")
            continue
        if type(record) is not dict:
            problems.add(path, lineno, "malformed", "not a JSON object")
            continue
        event = record.get("event")
        if type(event) is not str:
            problems.add(path, lineno, "malformed", "no string 'event'")
            continue
        version = record.get("version", 1)
        if type(version) is not int:
            problems.add(path, lineno, "bad_version", f"version={version!r}")
            continue
        if version not in KNOWN_VERSIONS:
            known = ", ".join(map(str, KNOWN_VERSIONS))
            message = f"version {version} (this reader knows {known})"
            problems.add(path, lineno, "unknown_version", message)
            continue
        why = check_record(record, version)
        if why is not None:
            problems.add(path, lineno, "invalid", why)
            continue
        if last_version is None:
            state.first = (version, lineno)
        elif version != last_version:
            problems.add(
                path,
                lineno,
                "mixed_versions",
                f"version {version} records follow version {last_version} ones",
            )
        last_version = version
        versions[version] += 1
        yield version, record
    state.lines = lineno
    state.last = last_version


def read_records(
    paths: Iterable[str], problems: Problems, versions: Counter[int] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(version, record)`` for every usable line of every file, in file order.

    A line that is not JSON, not an object, has no string ``event``, has an unknown or
    non-integer ``version`` or breaks the version 2 schema is added to ``problems`` with its
    file and line number and skipped; so is a last line cut short (no newline, not JSON). A file
    whose records change version is noted once per change (``mixed_versions``), not skipped.
    ``versions`` counts the usable lines by version. Files are opened here, so an unreadable
    path raises ``OSError``; check paths first (``unreadable_paths``) to fail before reading.
    """
    seen = versions if versions is not None else Counter()
    for path in paths:
        yield from read_range(path, 0, None, problems, seen, RangeState())


def unreadable_paths(paths: Iterable[str]) -> list[tuple[str, str]]:
    """``(path, reason)`` for every path that cannot be opened for reading."""
    bad = []
    for path in paths:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            bad.append((path, exc.strerror or type(exc).__name__))
    return bad


__all__ = [
    "BLOCK_BYTES",
    "KNOWN_VERSIONS",
    "MAX_LISTED_PROBLEMS",
    "SCHEMA_VERSION",
    "Problem",
    "Problems",
    "RangeState",
    "check_record",
    "number",
    "read_range",
    "read_records",
    "unreadable_paths",
]
