"""Configuration: TOML file, environment overrides, errors that name the field."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest

from stream.exceptions import ConfigError
from stream.service.cli import tune_gc
from stream.service.config import RedisSettings, load_settings
from stream.service.redaction import masked_url
from stream.service.units import parse_duration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DRIFTWATCH_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "driftwatch.toml"
    path.write_text(text)
    return path


def test_sample_config_is_valid() -> None:
    settings = load_settings(REPO / "driftwatch.toml")
    assert settings.topics.events == "events"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[worker]\nbatch_size = 10\n[kafka]\nbootstrap = "a:1"\n')
    monkeypatch.setenv("DRIFTWATCH_WORKER__BATCH_SIZE", "20")
    settings = load_settings(path)
    assert settings.worker.batch_size == 20
    assert settings.kafka.bootstrap == "a:1"


def test_bad_value_names_field_value_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, "[worker]\nbatch_size = 0\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    msg = str(info.value)
    assert "worker.batch_size" in msg and "got 0" in msg and "greater than or equal to 1" in msg


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:http", "127.0.0.1:70000"])
def test_bad_metrics_address_stops_start_up(tmp_path: Path, address: str) -> None:
    with pytest.raises(ConfigError, match="worker.metrics_address.*is not host:port"):
        load_settings(write(tmp_path, f'[worker]\nmetrics_address = "{address}"\n'))


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="worker.batchsize"):
        load_settings(write(tmp_path, "[worker]\nbatchsize = 5\n"))


def test_bad_duration(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="worker.batch_max_latency"):
        load_settings(write(tmp_path, '[worker]\nbatch_max_latency = "soon"\n'))
    with pytest.raises(ConfigError, match="monitoring.batch_linger"):
        load_settings(write(tmp_path, '[monitoring]\nbatch_linger = "-1s"\n'))
    linger = load_settings(write(tmp_path, '[monitoring]\nbatch_linger = "0"\n'))
    assert linger.monitoring.batch_linger_s == 0.0
    with pytest.raises(ValueError, match="positive duration"):
        parse_duration("-5s")


def test_monitor_priority(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")).monitoring.priority == "low"
    with pytest.raises(ConfigError, match="monitoring.priority"):
        load_settings(write(tmp_path, '[monitoring]\npriority = "lowest"\n'))
    # the priority of a child process: no child, no priority to give it
    with pytest.raises(ConfigError, match='monitoring.*needs process = "child"'):
        load_settings(write(tmp_path, '[monitoring]\nprocess = "worker"\npriority = "idle"\n'))


def test_secret_in_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DRIFTWATCH_SNAPSHOT_KEY"):
        load_settings(write(tmp_path, 'snapshot_key = "x"\n'))


def test_secret_from_environment_is_hidden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DRIFTWATCH_SNAPSHOT_KEY", "hunter2")
    settings = load_settings(write(tmp_path, ""))
    assert settings.snapshot_key is not None
    assert settings.snapshot_key.get_secret_value() == "hunter2"
    assert "hunter2" not in str(settings.redacted())


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[worker\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_duplicate_topic_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="distinct"):
        load_settings(write(tmp_path, '[topics]\nevents = "x"\nlabels = "x"\n'))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "stream.service.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO)},
        timeout=60,
    )


def test_cli_bad_config_stops_with_message(tmp_path: Path) -> None:
    write(tmp_path, "[worker]\nbatch_size = -3\n")
    result = _cli("worker", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid config field 'worker.batch_size'" in result.stderr


def test_cli_bad_argument_prints_usage(tmp_path: Path) -> None:
    result = _cli("frobnicate", cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: driftwatch" in result.stderr


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        tune_gc(0)
        assert (gc.get_threshold(), gc.get_freeze_count()) == (before, frozen)
        tune_gc(50_000)
        assert gc.get_threshold() == (50_000, before[1], before[2])
        assert gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:secret@host", "redis://:***@host"),
        ("rediss://u:p@ss:w@host/0?db=1", "rediss://u:***@host/0?db=1"),
        ("redis://host:6379/0?password=secret&db=1", "redis://host:6379/0?password=***&db=1"),
        ("unix:///tmp/redis.sock?Password=secret", "unix:///tmp/redis.sock?Password=***"),
        ("redis://user@host:6379/0", "redis://user@host:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://u:secret@[::1", "redis://***"),
    ],
)
def test_masked_url(url: str, masked: str) -> None:
    assert masked_url(url) == masked


def test_redis_password_in_the_url_is_masked_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTWATCH_REDIS__URL", "redis://app:hunter2@cache:6379/0?password=pw2")
    settings = load_settings(write(tmp_path, ""))
    assert settings.redis.url.startswith("redis://app:hunter2@")  # the client still gets it
    shown = [str(settings.redacted()), repr(settings), repr(settings.redis), str(settings)]
    for text in shown:
        assert "hunter2" not in text and "pw2" not in text
    assert settings.redacted()["redis"]["url"] == "redis://app:***@cache:6379/0?password=***"
    monkeypatch.setenv("DRIFTWATCH_REDIS__URL", "http://app:hunter2@cache:6379/0")
    with pytest.raises(ConfigError, match="redis.url") as info:
        load_settings(write(tmp_path, ""))
    assert "hunter2" not in str(info.value) and "app:***@cache" in str(info.value)
    assert "hunter2" not in repr(RedisSettings(url="redis://:hunter2@h"))


def test_event_time_limits(tmp_path: Path) -> None:
    worker = load_settings(write(tmp_path, "")).worker
    assert (worker.min_event_time_ms, worker.max_event_time_ahead_ms) == (
        946_684_800_000,
        86_400_000,
    )
    text = '[worker]\nmin_event_time = 1700000000000\nmax_event_time_ahead = "10m"\n'
    worker = load_settings(write(tmp_path, text)).worker
    assert (worker.min_event_time_ms, worker.max_event_time_ahead_ms) == (
        1_700_000_000_000,
        600_000,
    )
    text = '[worker]\nmin_event_time = "2024-03-01T12:00:00+01:00"\n'
    assert load_settings(write(tmp_path, text)).worker.min_event_time_ms == 1_709_290_800_000


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('min_event_time = "last year"', "is not an ISO-8601 timestamp"),
        ('min_event_time = "99999-01-01"', "is not an ISO-8601 timestamp"),
        ("min_event_time = -5", "must be >= 0, got -5"),
        ('min_event_time = "1e300"', "is not an ISO-8601 timestamp"),
        ("min_event_time = 300000000000000", "must be <= 253402300799999"),
        ('max_event_time_ahead = "0s"', "positive duration"),
    ],
)
def test_bad_event_time_limits_name_the_field(tmp_path: Path, line: str, expected: str) -> None:
    field = line.split(" =")[0]
    with pytest.raises(ConfigError, match=f"invalid config field 'worker.{field}'") as info:
        load_settings(write(tmp_path, f"[worker]\n{line}\n"))
    assert expected in str(info.value)
