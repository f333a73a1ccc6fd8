"""``ParallelConfig``: every setting of ce-parallel, validated, and the ``CE_PARALLEL*`` reader.

This module is the only place that reads the ``CE_PARALLEL*`` environment variables. It never
caches them: ``ParallelConfig.from_env`` reads the environment at call time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigurationError

StrategyName = Literal["sequential", "threads", "processes", "joblib", "dask", "auto"]
FallbackMode = Literal["serial", "raise"]

#: Every strategy name a config accepts.
STRATEGIES: tuple[str, ...] = ("sequential", "threads", "processes", "joblib", "dask", "auto")
#: Strategies the facade offers without the full-matrix flag.
CONSERVATIVE_STRATEGIES: tuple[str, ...] = ("sequential", "threads", "joblib")
FALLBACK_MODES: tuple[str, ...] = ("serial", "raise")

ENV_MAIN = "CE_PARALLEL"
ENV_FULL = "CE_PARALLEL_FULL"
ENV_TELEMETRY = "CE_PARALLEL_TELEMETRY"
ENV_DASK_ADDRESS = "CE_PARALLEL_DASK_ADDRESS"

_ENABLE_WORDS = frozenset({"on", "1", "true", "enable"})
_DISABLE_WORDS = frozenset({"off", "0", "false"})
_FULL_ON = frozenset({"1", "true", "on", "yes"})
_FULL_OFF = frozenset({"", "0", "false", "off", "no"})

# key=value tokens of CE_PARALLEL: token key -> (config field, parser, smallest accepted value)
_NUMERIC_TOKENS: dict[str, tuple[str, type, float]] = {
    "workers": ("max_workers", int, 1),
    "min_batch": ("min_batch_size", int, 1),
    "min_instances": ("min_instances_for_parallel", int, 1),
    "tiny": ("tiny_workload_threshold", int, 1),
    "instance_chunk": ("instance_chunk_size", int, 1),
    "task_bytes": ("task_size_hint_bytes", int, 0),
}

ACCEPTED_TOKENS_TEXT = (
    "off|0|false, on|1|true|enable, "
    + "|".join(STRATEGIES)
    + ", workers=N, min_batch=N, min_instances=N, tiny=N, instance_chunk=N (N >= 1), "
    "task_bytes=N (N >= 0), timeout=S (S > 0), fallback=serial|raise"
)


def _bad(field: str, value: Any, accepted: str) -> ConfigurationError:
    return ConfigurationError(
        f"ParallelConfig.{field}={value!r} is not accepted; expected {accepted}"
    )


def _check_int(field: str, value: Any, minimum: int, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = " or None" if optional else ""
        raise _bad(field, value, f"an integer >= {minimum}{none}")


def _check_bool(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _bad(field, value, "True or False")


def _check_callable(field: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise _bad(field, value, "a callable or None")


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

    def __post_init__(self) -> None:
        _check_bool("enabled", self.enabled)
        if self.strategy not in STRATEGIES:
            raise _bad("strategy", self.strategy, "one of " + ", ".join(STRATEGIES))
        _check_int("max_workers", self.max_workers, 1, optional=True)
        _check_int("min_batch_size", self.min_batch_size, 1, optional=False)
        _check_int("min_instances_for_parallel", self.min_instances_for_parallel, 1, optional=True)
        _check_int("tiny_workload_threshold", self.tiny_workload_threshold, 1, optional=True)
        _check_int("instance_chunk_size", self.instance_chunk_size, 1, optional=True)
        _check_int("task_size_hint_bytes", self.task_size_hint_bytes, 0, optional=False)
        _check_bool("force_serial_on_failure", self.force_serial_on_failure)
        _check_callable("telemetry", self.telemetry)
        _check_callable("worker_initializer", self.worker_initializer)
        if self.worker_init_args is not None:
            if not isinstance(self.worker_init_args, (tuple, list)):
                raise _bad("worker_init_args", self.worker_init_args, "a tuple, a list or None")
            self.worker_init_args = tuple(self.worker_init_args)
        _check_bool("full_matrix", self.full_matrix)
        if self.timeout is not None and (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, (int, float))
            or not self.timeout > 0
        ):
            raise _bad("timeout", self.timeout, "a number of seconds > 0 or None")
        if self.fallback not in FALLBACK_MODES:
            raise _bad("fallback", self.fallback, "'serial' or 'raise'")
        for field in ("telemetry_path", "dask_address"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise _bad(field, value, "a string or None")
            if isinstance(value, os.PathLike):
                setattr(self, field, os.fspath(value))

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
        if full is not None:
            word = full.strip().lower()
            if word in _FULL_ON:
                changes["full_matrix"] = True
            elif word not in _FULL_OFF:
                raise ConfigurationError(
                    f"{ENV_FULL}={full!r} is not accepted; expected 1/true/on or 0/false/off"
                )
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

    Tokens are comma-separated; spaces and case are ignored. ``off`` wins over any enabling
    token in the same value, so an operator's kill switch cannot be undone by a later token.
    """
    changes: dict[str, Any] = {}
    disabled = False
    for piece in raw.split(","):
        token = piece.strip().lower().replace(" ", "")
        if not token:
            continue
        if token in _DISABLE_WORDS:
            disabled = True
        elif token in _ENABLE_WORDS:
            changes["enabled"] = True
        elif token in STRATEGIES:
            changes["strategy"] = token
            changes["enabled"] = True
        elif "=" in token:
            key, _, value = token.partition("=")
            changes.update(_parse_keyed(piece.strip(), key, value))
        else:
            raise _env_error(piece.strip(), "unknown token")
    if disabled:
        changes["enabled"] = False
    return changes


def _parse_keyed(token: str, key: str, value: str) -> dict[str, Any]:
    if key in _NUMERIC_TOKENS:
        field, kind, minimum = _NUMERIC_TOKENS[key]
        try:
            number = kind(value)
        except ValueError:
            raise _env_error(token, "not a whole number") from None
        if number < minimum:
            raise _env_error(token, f"must be >= {minimum}")
        return {field: number}
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
        f"accepted tokens: {ACCEPTED_TOKENS_TEXT}"
    )


__all__ = [
    "CONSERVATIVE_STRATEGIES",
    "STRATEGIES",
    "ParallelConfig",
    "operator_switch",
    "parse_ce_parallel",
]
