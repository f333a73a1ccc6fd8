"""ParallelConfig: validation of every field and the CE_PARALLEL grammar."""

from __future__ import annotations

import pytest

from ce_parallel import ConfigurationError, ParallelConfig
from ce_parallel.config import parse_ce_parallel
from ce_parallel.registry import strategy_names

STRATEGIES = strategy_names()


def from_env(value: str, **extra: str) -> ParallelConfig:
    return ParallelConfig.from_env(environ={"CE_PARALLEL": value, **extra})


def test_defaults_match_calibrated_explanations_names() -> None:
    cfg = ParallelConfig()
    assert (cfg.enabled, cfg.strategy, cfg.max_workers, cfg.min_batch_size) == (
        False,
        "sequential",
        None,
        8,
    )
    assert cfg.min_instances_for_parallel is None
    assert cfg.tiny_workload_threshold is None
    assert cfg.instance_chunk_size is None
    assert cfg.task_size_hint_bytes == 0
    assert cfg.force_serial_on_failure is False
    assert cfg.telemetry is None and cfg.worker_initializer is None
    assert cfg.worker_init_args is None
    assert (cfg.full_matrix, cfg.timeout, cfg.fallback) == (False, None, "serial")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_name_is_accepted(strategy: str) -> None:
    assert ParallelConfig(strategy=strategy).strategy == strategy  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("strategy", "thread", "one of sequential"),
        ("strategy", "serial", "one of sequential"),
        ("max_workers", 0, "integer >= 1"),
        ("max_workers", -3, "integer >= 1"),
        ("max_workers", 2.5, "integer >= 1"),
        ("max_workers", True, "integer >= 1"),
        ("min_batch_size", 0, "integer >= 1"),
        ("min_instances_for_parallel", 0, "integer >= 1"),
        ("tiny_workload_threshold", -1, "integer >= 1"),
        ("instance_chunk_size", 0, "integer >= 1"),
        ("task_size_hint_bytes", -1, "integer >= 0"),
        ("timeout", -1, "seconds > 0"),
        ("timeout", 0, "seconds > 0"),
        ("timeout", "10", "seconds > 0"),
        ("telemetry", "print", "callable"),
        ("worker_initializer", 3, "callable"),
        ("worker_init_args", "abc", "tuple"),
        ("fallback", "retry", "'serial' or 'raise'"),
        ("enabled", "yes", "True or False"),
        ("full_matrix", 1, "True or False"),
        ("force_serial_on_failure", None, "True or False"),
        ("dask_address", 8786, "string"),
    ],
)
def test_bad_values_name_field_value_and_what_is_accepted(
    field: str, value: object, accepted: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        ParallelConfig(**{field: value})  # type: ignore[arg-type]
    message = str(info.value)
    assert field in message
    assert repr(value) in message
    assert accepted in message


def test_configuration_error_is_a_value_error() -> None:
    assert issubclass(ConfigurationError, ValueError)


def test_worker_init_args_list_becomes_a_tuple() -> None:
    assert ParallelConfig(worker_init_args=[1, 2]).worker_init_args == (1, 2)


@pytest.mark.parametrize("word", ["on", "1", "true", "enable", " ON ", "True"])
def test_enabling_words(word: str) -> None:
    cfg = from_env(word)
    assert cfg.enabled is True
    assert cfg.strategy == "sequential"


@pytest.mark.parametrize("word", ["off", "0", "false", "OFF"])
def test_disabling_words(word: str) -> None:
    assert from_env(word).enabled is False
    assert (
        ParallelConfig.from_env(ParallelConfig(enabled=True), {"CE_PARALLEL": word}).enabled
        is False
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_strategy_name_sets_it_and_enables(strategy: str) -> None:
    cfg = from_env(strategy.upper())
    assert (cfg.enabled, cfg.strategy) == (True, strategy)


def test_documented_examples() -> None:
    assert (from_env("joblib").enabled, from_env("joblib").strategy) == (True, "joblib")
    cfg = from_env("threads, workers=3")
    assert (cfg.enabled, cfg.strategy, cfg.max_workers) == (True, "threads", 3)
    assert from_env("off,threads").enabled is False
    assert from_env("threads,off").enabled is False
    with pytest.raises(ConfigurationError, match="'thread'"):
        from_env("thread")


@pytest.mark.parametrize(
    ("token", "field", "value"),
    [
        ("workers=4", "max_workers", 4),
        ("min_batch=16", "min_batch_size", 16),
        ("min_instances=100", "min_instances_for_parallel", 100),
        ("tiny=50", "tiny_workload_threshold", 50),
        ("instance_chunk=32", "instance_chunk_size", 32),
        ("task_bytes=0", "task_size_hint_bytes", 0),
        ("task_bytes=1048576", "task_size_hint_bytes", 1048576),
        ("timeout=2.5", "timeout", 2.5),
        ("fallback=raise", "fallback", "raise"),
        ("fallback=serial", "fallback", "serial"),
        (" Workers = 2 ", "max_workers", 2),
    ],
)
def test_keyed_tokens(token: str, field: str, value: object) -> None:
    assert getattr(from_env(token), field) == value


def test_keyed_tokens_do_not_enable_by_themselves() -> None:
    assert from_env("workers=2").enabled is False


@pytest.mark.parametrize(
    "token",
    [
        "thread",
        "parallel",
        "workers=0",
        "workers=-3",
        "workers=two",
        "workers=1.5",
        "min_batch=0",
        "min_instances=0",
        "tiny=0",
        "instance_chunk=0",
        "task_bytes=-1",
        "timeout=0",
        "timeout=-1",
        "timeout=soon",
        "timeout=inf",
        "fallback=retry",
        "granularity=feature",
        "workers",
    ],
)
def test_rejected_tokens_name_the_variable_and_the_token(token: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        from_env(f"on,{token}")
    message = str(info.value)
    assert "CE_PARALLEL" in message
    assert token.strip() in message
    assert "accepted tokens" in message


def test_empty_and_blank_values_change_nothing() -> None:
    assert from_env("") == ParallelConfig()
    assert from_env(" , ,") == ParallelConfig()
    assert parse_ce_parallel("") == {}


def test_environ_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CE_PARALLEL", "threads")
    assert ParallelConfig.from_env().strategy == "threads"
    monkeypatch.setenv("CE_PARALLEL", "joblib")
    assert ParallelConfig.from_env().strategy == "joblib"


def test_base_config_is_kept_where_the_environment_is_silent() -> None:
    base = ParallelConfig(max_workers=3, min_batch_size=4, timeout=9.0)
    cfg = ParallelConfig.from_env(base, {"CE_PARALLEL": "processes"})
    assert (cfg.max_workers, cfg.min_batch_size, cfg.timeout) == (3, 4, 9.0)
    assert cfg.strategy == "processes" and base.strategy == "sequential"


@pytest.mark.parametrize(
    ("value", "full"), [("1", True), ("true", True), ("0", False), ("", False)]
)
def test_full_matrix_flag(value: str, full: bool) -> None:
    assert ParallelConfig.from_env(environ={"CE_PARALLEL_FULL": value}).full_matrix is full


def test_full_matrix_flag_rejects_junk() -> None:
    with pytest.raises(ConfigurationError, match="CE_PARALLEL_FULL"):
        ParallelConfig.from_env(environ={"CE_PARALLEL_FULL": "maybe"})


def test_telemetry_path_and_dask_address_come_from_the_environment() -> None:
    cfg = ParallelConfig.from_env(
        environ={
            "CE_PARALLEL_TELEMETRY": "/tmp/t.jsonl",
            "CE_PARALLEL_DASK_ADDRESS": "tcp://h:8786",
        }
    )
    assert (cfg.telemetry_path, cfg.dask_address) == ("/tmp/t.jsonl", "tcp://h:8786")


def test_force_serial_on_failure_means_serial_recovery() -> None:
    assert ParallelConfig(fallback="raise").fallback_to_serial is False
    assert ParallelConfig(fallback="raise", force_serial_on_failure=True).fallback_to_serial is True
