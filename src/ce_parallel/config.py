"""``ParallelConfig``: every setting of ce-parallel, validated, and the ``CE_PARALLEL*`` reader.

This module is the only place that reads the ``CE_PARALLEL*`` environment variables. It never
caches them: ``ParallelConfig.from_env`` reads the environment at call time.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .checks import (
    OFF_WORDS,
    ON_WORDS,
    check_bool,
    check_callable,
    check_int,
    check_seconds,
    parse_switch,
    rejected,
    switch_word,
)
from .errors import ConfigurationError
from .registry import strategy_names

#: A registered strategy name (see ``ce_parallel.registry``): the built-in ones are
#: ``sequential``, ``threads``, ``processes``, ``joblib``, ``dask`` and ``auto``.
StrategyName = str
FallbackMode = Literal["serial", "raise"]

FALLBACK_MODES: tuple[str, ...] = ("serial", "raise")

ENV_MAIN = "CE_PARALLEL"
ENV_FULL = "CE_PARALLEL_FULL"
ENV_TELEMETRY = "CE_PARALLEL_TELEMETRY"
ENV_DASK_ADDRESS = "CE_PARALLEL_DASK_ADDRESS"

# key=value tokens of CE_PARALLEL: token key -> (config field, smallest accepted value)
_NUMERIC_TOKENS: dict[str, tuple[str, int]] = {
    "workers": ("max_workers", 1),
    "min_batch": ("min_batch_size", 1),
    "min_instances": ("min_instances_for_parallel", 1),
    "tiny": ("tiny_workload_threshold", 1),
    "instance_chunk": ("instance_chunk_size", 1),
    "task_bytes": ("task_size_hint_bytes", 0),
}


def accepted_tokens_text() -> str:
    """Every ``CE_PARALLEL`` token, for error messages (strategies as registered now)."""
    return (
        f"{'|'.join(sorted(OFF_WORDS))}, {'|'.join(sorted(ON_WORDS))}, "
        + "|".join(strategy_names())
        + ", workers=N, min_batch=N, min_instances=N, tiny=N, instance_chunk=N (N >= 1), "
        "n_jobs=N (N != 0; -1: all of the CPU budget), "
        "task_bytes=N (N >= 0), timeout=S (S > 0), fallback=serial|raise"
    )


def _field(name: str) -> str:
    return f"ParallelConfig.{name}"


@dataclass
class ParallelConfig:
    """Settings for ce-parallel's executors and facade.

    The first twelve fields, their names and defaults match the executor configuration of
    calibrated-explanations, so an existing configuration can be passed through unchanged.
    Every field is validated on construction; a bad value raises ``ConfigurationError``.
    """

    enabled: bool = False
    strategy: StrategyName = "sequential"
    max_workers: int | None = None
    min_batch_size: int = 8
    min_instances_for_parallel: int | None = None
    tiny_workload_threshold: int | None = None
    instance_chunk_size: int | None = None
    task_size_hint_bytes: int = 0
    force_serial_on_failure: bool = False
    telemetry: Callable[[str, dict[str, Any]], Any] | None = None
    worker_initializer: Callable[..., Any] | None = None
    worker_init_args: tuple[Any, ...] | None = None
    # ce-parallel's own settings
    full_matrix: bool = False
    timeout: float | None = None
    fallback: FallbackMode = "serial"
    telemetry_path: str | None = None
    dask_address: str | None = None
    n_jobs: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def __setattr__(self, name: str, value: Any) -> None:
        # a changed field is checked again where the config is next used (validate()), and
        # what was decided from the old value is not reused (revision)
        object.__setattr__(self, name, value)
        if name not in ("_checked", "_revision"):
            object.__setattr__(self, "_checked", False)
            object.__setattr__(self, "_revision", self.revision + 1)

    @property
    def revision(self) -> int:
        """How many times a field was set (construction included): decisions remembered for
        this config hold while it stays the same."""
        return int(self.__dict__.get("_revision", 0))

    def validate(self) -> ParallelConfig:
        """Check every field (again); a bad value raises ``ConfigurationError`` naming it.

        Runs on construction, and again wherever a config is used (an executor, a facade), so a
        field changed after construction is checked before it takes effect (a config nobody
        changed is not checked twice). Returns ``self``.
        """
        if self.__dict__.get("_checked"):
            return self
        self._check_fields()
        object.__setattr__(self, "_checked", True)
        return self

    def _check_fields(self) -> None:
        check_bool(_field("enabled"), self.enabled)
        names = strategy_names()
        if self.strategy not in names:
            raise rejected(_field("strategy"), self.strategy, "one of " + ", ".join(names))
        check_int(_field("max_workers"), self.max_workers, 1)
        check_int(_field("min_batch_size"), self.min_batch_size, 1, optional=False)
        check_int(_field("min_instances_for_parallel"), self.min_instances_for_parallel, 1)
        check_int(_field("tiny_workload_threshold"), self.tiny_workload_threshold, 1)
        check_int(_field("instance_chunk_size"), self.instance_chunk_size, 1)
        check_int(_field("task_size_hint_bytes"), self.task_size_hint_bytes, 0, optional=False)
        check_bool(_field("force_serial_on_failure"), self.force_serial_on_failure)
        check_callable(_field("telemetry"), self.telemetry)
        check_callable(_field("worker_initializer"), self.worker_initializer)
        if self.worker_init_args is not None:
            if not isinstance(self.worker_init_args, (tuple, list)):
                raise rejected(
                    _field("worker_init_args"), self.worker_init_args, "a tuple, a list or None"
                )
            self.worker_init_args = tuple(self.worker_init_args)
        check_bool(_field("full_matrix"), self.full_matrix)
        check_seconds(_field("timeout"), self.timeout)
        if self.n_jobs is not None:
            from .njobs import resolve_n_jobs

            resolve_n_jobs(self.n_jobs, 1, setting=_field("n_jobs"))
            if self.max_workers is not None:
                raise rejected(
                    _field("n_jobs"),
                    self.n_jobs,
                    f"None when max_workers={self.max_workers!r} is set (give one of the two)",
                )
        if self.fallback not in FALLBACK_MODES:
            raise rejected(_field("fallback"), self.fallback, "'serial' or 'raise'")
        for name in ("telemetry_path", "dask_address"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise rejected(_field(name), value, "a string or None")
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))

    def explicit_workers(self, budget: int) -> int | None:
        """The worker count the user asked for (``max_workers``, or ``n_jobs`` as joblib spells
        it, resolved on a CPU budget of ``budget``); None: the budget decides."""
        if self.max_workers is not None:
            return self.max_workers
        if self.n_jobs is None:
            return None
        from .njobs import resolve_n_jobs

        return resolve_n_jobs(self.n_jobs, budget, setting=_field("n_jobs"))

    @property
    def fallback_to_serial(self) -> bool:
        """Whether infrastructure failures re-run unfinished work serially instead of raising.

        ``force_serial_on_failure=True`` (calibrated-explanations' switch) always means serial
        recovery, whatever ``fallback`` says.
        """
        return self.fallback == "serial" or self.force_serial_on_failure

    def replace(self, **changes: Any) -> ParallelConfig:
        """Return a validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls,
        base: ParallelConfig | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ParallelConfig:
        """Return ``base`` (or the defaults) with the ``CE_PARALLEL*`` variables applied.

        ``environ`` defaults to ``os.environ`` read now. An unknown token, a non-number or an
        out-of-range number raises ``ConfigurationError`` naming the variable and the token.
        """
        env = os.environ if environ is None else environ
        changes = parse_ce_parallel(env.get(ENV_MAIN, ""))
        full = env.get(ENV_FULL)
        if full is not None and full.strip():
            changes["full_matrix"] = parse_switch(ENV_FULL, full)
        path = env.get(ENV_TELEMETRY, "").strip()
        if path:
            changes["telemetry_path"] = path
        address = env.get(ENV_DASK_ADDRESS, "").strip()
        if address:
            changes["dask_address"] = address
        return dataclasses.replace(base if base is not None else cls(), **changes)


def operator_switch(environ: Mapping[str, str] | None = None) -> bool | None:
    """What the operator's ``CE_PARALLEL`` says about enabling: False (off), True (on), or None.

    ``off`` is a kill switch that no code overrides; ``on`` or a strategy name forces parallel
    work even where the facade would be cautious (for example in CI).
    """
    env = os.environ if environ is None else environ
    enabled = parse_ce_parallel(env.get(ENV_MAIN, "")).get("enabled")
    return None if enabled is None else bool(enabled)


def parse_ce_parallel(raw: str) -> dict[str, Any]:
    """Parse a ``CE_PARALLEL`` value into ``ParallelConfig`` field changes.

    Tokens are comma-separated; spaces and case are ignored. An off word (``off``, ``0``,
    ``false``, ``no``, ``disable``) is the operator's kill switch: it wins over any enabling
    token in the same value, and a malformed token beside it cannot undo it (it is reported as
    a ``ConfigurationWarning`` instead of an error, so that ``off`` always switches off).
    """
    changes: dict[str, Any] = {}
    disabled = False
    errors: list[ConfigurationError] = []
    names = strategy_names()
    for piece in raw.split(","):
        token = piece.strip().lower().replace(" ", "")
        if not token:
            continue
        switch = switch_word(token)
        if switch is False:
            disabled = True
        elif switch is True:
            changes["enabled"] = True
        elif token in names:
            changes["strategy"] = token
            changes["enabled"] = True
        elif "=" in token:
            key, _, value = token.partition("=")
            try:
                changes.update(_parse_keyed(piece.strip(), key, value))
            except ConfigurationError as exc:
                errors.append(exc)
        else:
            errors.append(_env_error(piece.strip(), "unknown token"))
    if disabled:
        for error in errors:
            warnings.warn(
                f"{error} (ignored: {ENV_MAIN} also says off, which wins)",
                ConfigurationWarning,
                stacklevel=2,
            )
        return {**changes, "enabled": False}
    if errors:
        raise errors[0]
    return changes


class ConfigurationWarning(UserWarning):
    """A setting was malformed but ignored, because the operator's kill switch wins."""


def _parse_keyed(token: str, key: str, value: str) -> dict[str, Any]:
    if key in _NUMERIC_TOKENS:
        field, minimum = _NUMERIC_TOKENS[key]
        try:
            number = int(value)
        except ValueError:
            raise _env_error(token, "not a whole number") from None
        if number < minimum:
            raise _env_error(token, f"must be >= {minimum}")
        return {field: number}
    if key == "n_jobs":
        try:
            count = int(value)
        except ValueError:
            raise _env_error(token, "not a whole number") from None
        if count == 0:
            raise _env_error(token, "n_jobs=0 has no meaning; -1 is all of the CPU budget")
        return {"n_jobs": count}
    if key == "timeout":
        try:
            seconds = float(value)
        except ValueError:
            raise _env_error(token, "not a number of seconds") from None
        if not seconds > 0 or seconds != seconds or seconds == float("inf"):
            raise _env_error(token, "must be a finite number > 0")
        return {"timeout": seconds}
    if key == "fallback":
        if value not in FALLBACK_MODES:
            raise _env_error(token, "fallback must be serial or raise")
        return {"fallback": value}
    raise _env_error(token, "unknown setting")


def _env_error(token: str, why: str) -> ConfigurationError:
    return ConfigurationError(
        f"{ENV_MAIN} token {token!r} is not accepted ({why}); "
        f"accepted tokens: {accepted_tokens_text()}"
    )


__all__ = [
    "ConfigurationWarning",
    "ParallelConfig",
    "accepted_tokens_text",
    "operator_switch",
    "parse_ce_parallel",
]
