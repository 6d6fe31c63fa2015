"""scripts/services.py starts and stops real services idempotently, on ports of its own."""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DRIFTWATCH_RUN_DIR": str(tmp_path / "run"),
        "DRIFTWATCH_KAFKA_PORT": str(_free_port()),
        "DRIFTWATCH_KAFKA_CONTROLLER_PORT": str(_free_port()),
        "DRIFTWATCH_REDIS_PORT": str(_free_port()),
        "DRIFTWATCH_START_TIMEOUT": "120",
    }


def services(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "services.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.integration
@pytest.mark.parametrize("name", ["redis", "kafka"])
def test_start_stop_twice(env: dict[str, str], name: str) -> None:
    port = int(env[f"DRIFTWATCH_{name.upper()}_PORT"])
    try:
        for _ in range(2):
            first = services(env, "start", name)
            assert first.returncode == 0, first.stderr
            assert "ready at" in first.stderr
            again = services(env, "start", name)
            assert again.returncode == 0 and "already running" in again.stderr
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
            status = services(env, "status", name)
            assert "running at 127.0.0.1" in status.stdout
            if name == "kafka":  # formatted with a well-formed cluster id, log noise kept out
                meta = Path(env["DRIFTWATCH_RUN_DIR"]) / "kafka" / "data" / "meta.properties"
                assert re.search(r"^cluster\.id=[A-Za-z0-9_-]{22}$", meta.read_text(), re.M)
            stop = services(env, "stop", name)
            assert stop.returncode == 0 and "stopped" in stop.stderr
            assert "stopped" in services(env, "status", name).stdout
    finally:
        services(env, "stop", name)


@pytest.mark.parametrize("name", ["redis", "kafka"])
def test_port_in_use_is_a_clear_error(env: dict[str, str], name: str) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", int(env[f"DRIFTWATCH_{name.upper()}_PORT"])))
        blocker.listen()
        result = services(env, "start", name)
    assert result.returncode == 1
    assert "already in use by another process" in result.stderr
    assert f"DRIFTWATCH_{name.upper()}_PORT" in result.stderr


def test_bad_arguments_print_usage(env: dict[str, str]) -> None:
    result = services(env, "launch")
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_cluster_ids_are_kafka_uuids(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("services", REPO / "scripts" / "services.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "services", module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    ids = {module.random_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        assert len(text) == 22 and not text.startswith("-")
        assert len(base64.urlsafe_b64decode(text + "==")) == 16
