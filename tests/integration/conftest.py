"""Per-test settings with fresh topics, consumer group and Redis prefix, and worker processes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.service.config import RedisSettings, Settings, TopicSettings, WorkerSettings
from stream.service.topics import ensure_topics
from tests.integration.worker_process import WorkerProcess


@pytest.fixture
def settings(kafka_bootstrap: str, redis_url: str, uid: str) -> Settings:
    settings = Settings(
        kafka={"bootstrap": kafka_bootstrap},
        topics=TopicSettings(
            events=f"events-{uid}",
            labels=f"labels-{uid}",
            predictions=f"predictions-{uid}",
            alerts=f"alerts-{uid}",
            dlq=f"events.dlq-{uid}",
            monitor=f"monitor-{uid}",
            partitions=4,
        ),
        redis=RedisSettings(url=redis_url, prefix=f"test-{uid}"),
        worker=WorkerSettings(
            app_id=f"driftwatch-test-{uid}", batch_max_latency="20ms", metrics_address="127.0.0.1:0"
        ),
    )
    asyncio.run(ensure_topics(settings))
    return settings


@pytest.fixture
def worker_factory(settings: Settings, tmp_path: Path) -> Iterator[type[WorkerProcess]]:
    """Start ``driftwatch worker`` processes for this test; all are stopped afterwards."""
    started: list[WorkerProcess] = []

    def start(config: Settings | None = None, name: str = "worker") -> WorkerProcess:
        proc = WorkerProcess(
            config or settings,
            tmp_path / f"{name}-{len(started)}",
            {"DRIFTWATCH_SNAPSHOT_KEY": "integration-test-key"},
        )
        started.append(proc)
        proc.start()
        return proc

    yield start  # type: ignore[misc]
    for proc in started:
        proc.stop()
