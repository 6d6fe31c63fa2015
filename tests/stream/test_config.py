"""Configuration: TOML file, environment overrides, errors that name the field."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest

from stream.cli import tune_gc
from stream.config import load_settings, parse_duration
from stream.exceptions import ConfigError

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
    with pytest.raises(ValueError, match="positive duration"):
        parse_duration("-5s")


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
        [sys.executable, "-m", "stream.cli", *args],
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
