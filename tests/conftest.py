"""Session fixtures: a real Kafka broker and a real Redis server on 127.0.0.1.

They are started through ``scripts/services.py`` (the same script a developer uses) when
they are not already running, and stopped at the end only if this session started them.
``DRIFTWATCH_TEST_KAFKA`` / ``DRIFTWATCH_TEST_REDIS`` point the tests at services that are
already running elsewhere on this machine instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVICES = [sys.executable, str(REPO / "scripts" / "services.py")]


def _services(action: str, name: str) -> dict[str, object]:
    proc = subprocess.run(
        [*SERVICES, action, name, "--json"], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/services.py {action} {name} failed:\n{proc.stderr}", pytrace=False)
    result: dict[str, object] = json.loads(proc.stdout)[name]
    return result


def _report(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


@pytest.fixture(scope="session")
def kafka_bootstrap(pytestconfig: pytest.Config) -> Iterator[str]:
    """Bootstrap address of a real Apache Kafka broker (KRaft, single node)."""
    external = os.environ.get("DRIFTWATCH_TEST_KAFKA")
    started = None
    if external:
        address = external
    else:
        started = _services("start", "kafka")
        address = str(started["address"])
    cluster = asyncio.run(_describe_cluster(address))
    version = started["version"] if started else "external"
    _report(pytestconfig, f"\nkafka: Apache Kafka {version} at {address}, {cluster}")
    yield address
    if started and started["result"] == "started":
        _services("stop", "kafka")


async def _describe_cluster(address: str) -> str:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=address, request_timeout_ms=30_000)
    await admin.start()
    try:
        info = await admin.describe_cluster()
        return f"cluster_id={info['cluster_id']} brokers={len(info['brokers'])}"
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def redis_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """URL of a real Redis server."""
    import redis

    external = os.environ.get("DRIFTWATCH_TEST_REDIS")
    started = None
    if external:
        url = external
    else:
        started = _services("start", "redis")
        url = f"redis://{started['address']}/0"
    client = redis.Redis.from_url(url)
    version = client.info("server")["redis_version"]
    client.close()
    _report(pytestconfig, f"redis: Redis {version} at {url}")
    yield url
    if started and started["result"] == "started":
        _services("stop", "redis")


@pytest.fixture
def uid() -> str:
    """A fresh id for this test's topics, consumer group and Redis key prefix."""
    return uuid.uuid4().hex[:12]
