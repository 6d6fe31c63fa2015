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


def _load_services(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> object:
    monkeypatch.setenv("DRIFTWATCH_RUN_DIR", str(run_dir))
    spec = importlib.util.spec_from_file_location("services", REPO / "scripts" / "services.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "services", module)
    spec.loader.exec_module(module)
    return module


def test_kafka_is_ready_only_once_it_logs_so() -> None:
    spec = importlib.util.spec_from_file_location("services_k", REPO / "scripts" / "services.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["services_k"] = module
    try:
        spec.loader.exec_module(module)
        kafka = module.Kafka()
    finally:
        del sys.modules["services_k"]
    # an open port alone is not enough: a KRaft broker opens it before it has registered
    assert kafka.ready_line == "Kafka Server started"
    assert kafka.failed_lines


# a started service outlives its Popen object on purpose (the CLI returns while it runs)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_start_up_that_fails_alive_is_retried_once_afresh(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A process that stays alive after logging a fatal start-up error (as a KRaft node does)
    is stopped at once, its data reset, and started a second time."""
    services = _load_services(monkeypatch, tmp_path / "run")
    port = _free_port()
    starts = tmp_path / "starts"
    # the first start logs the failure and hangs; the second listens and logs readiness
    script = (
        "import pathlib, socket, sys, time\n"
        f"p = pathlib.Path({str(starts)!r}); n = len(p.read_text()) if p.exists() else 0\n"
        "p.write_text('x' * (n + 1))\n"
        "if n == 0:\n"
        "    print('ERROR [SharedServer id=1] Got exception while starting', flush=True)\n"
        "    time.sleep(60)\n"
        f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\n"
        "print('Fake Server started', flush=True); time.sleep(60)\n"
    )
    resets: list[int] = []

    class Fake(services.Service):  # type: ignore[attr-defined,name-defined,misc]
        ready_line = "Fake Server started"
        failed_lines = ("Got exception while starting",)

        def install(self) -> None:
            pass

        def command(self) -> list[str]:
            return [sys.executable, "-c", script]

        def reset(self) -> bool:
            resets.append(1)
            return True

    fake = Fake("fake", (port,))
    try:
        assert fake.start() == "started"
        assert resets == [1] and starts.read_text() == "xx"
        log = fake.logfile.read_text()
        assert log.count("Got exception while starting") == 1 and "Fake Server started" in log
    finally:
        fake.stop()

    class Broken(Fake):
        def reset(self) -> bool:
            return False

    starts.unlink()
    broken = Broken("broken", (_free_port(),))
    with pytest.raises(services.ServiceError, match="failed during start-up"):  # type: ignore[attr-defined]
        broken.start()
    assert broken.pid() is None
