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
from typing import IO, Any

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
# event -> ((field, exact types allowed, None allowed, json_safe's number strings allowed), ...)
_CHECKS: dict[str, tuple[tuple[str, frozenset[type], bool, bool], ...]] = {
    event: tuple(
        (name, _TYPES[kind.rstrip("?")], kind.endswith("?"), kind.startswith("num"))
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
    for name, types, optional, numeric in checks:
        value = get(name)
        if value is None:
            if optional:
                continue
            return f"{record['event']} record without {name!r}"
        if type(value) in types:
            continue
        # json_safe writes nan and the infinities as strings: accepted where None is (estimates)
        if numeric and optional and type(value) is str and value in _NON_FINITE:
            continue
        kind = "number" if numeric else next(iter(types)).__name__
        return f"{record['event']} record: {name}={value!r} is not {kind}"
    return None


def _decoder() -> tuple[Callable[[Any], Any], bool]:
    """The JSON decoder for one line, and whether it takes bytes: orjson when it is installed
    (several times faster; it also rejects ``NaN`` tokens, which ce-parallel never writes),
    else the standard library's.
    """
    try:
        import orjson
    except ImportError:
        return json.JSONDecoder().decode, False
    return orjson.loads, True


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
    decode, binary = _decoder()
    newline: Any = b"\n" if binary else "\n"
    for path in paths:
        last_version: int | None = None
        # lines end at "\n" only. As text, bytes that are not UTF-8 become U+FFFD and the line
        # then fails to parse (or keeps a replaced character inside a string); as bytes, orjson
        # rejects them. Either way the line is reported, never a crash.
        if binary:
            handle: IO[Any] = open(path, "rb")  # noqa: SIM115 - closed by the with below
        else:
            handle = open(path, encoding="utf-8", errors="replace", newline="\n")  # noqa: SIM115
        with handle:
            for lineno, raw in enumerate(handle, 1):
                try:
                    record = decode(raw)
                except ValueError as exc:
                    if not raw.strip():
                        continue
                    if not raw.endswith(newline):
                        problems.add(path, lineno, "truncated", "the last line is cut short")
                    else:
                        problems.add(path, lineno, "malformed", f"not JSON ({exc})")
                    continue
                if not isinstance(record, dict):
                    problems.add(path, lineno, "malformed", "not a JSON object")
                    continue
                event = record.get("event")
                if not isinstance(event, str):
                    problems.add(path, lineno, "malformed", "no string 'event'")
                    continue
                version = record.get("version", 1)
                if not isinstance(version, int) or isinstance(version, bool):
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
                if last_version is not None and version != last_version:
                    problems.add(
                        path,
                        lineno,
                        "mixed_versions",
                        f"version {version} records follow version {last_version} ones",
                    )
                last_version = version
                seen[version] += 1
                yield version, record


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
    "KNOWN_VERSIONS",
    "MAX_LISTED_PROBLEMS",
    "SCHEMA_VERSION",
    "Problem",
    "Problems",
    "check_record",
    "number",
    "read_records",
    "unreadable_paths",
]
