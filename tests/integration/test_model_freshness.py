"""Scorers are told of a new version at once, and report how far behind they serve.

Against the real Redis (the holder and its store) and real worker processes on the real
broker. The poll interval is set far longer than every wait here, so only the notification
(the store's changes stream) can make a scorer serve a new version in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio

from stream.model.holder import ModelHolder
from stream.model.online import OnlineModel, create_model
from stream.model.snapshots import SnapshotStore
from stream.service.config import ModelSettings, Settings
from tests.integration.kafka_io import produce
from tests.integration.test_learning_and_crash import labelled
from tests.integration.test_observability import free_port, scraped
from tests.integration.test_pipeline import as_records, demo_settings  # noqa: F401 - fixture
from tests.integration.worker_process import ASSIGNED_LINE

pytestmark = pytest.mark.integration

KEY = "integration-test-key"
POLL = "60s"  # longer than every wait below: only a notification can be in time
TOLD_WITHIN_S = 3.0


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def fresh() -> OnlineModel:
    return create_model(ModelSettings(name="fraud"), [])


def learned(n: int) -> OnlineModel:
    model = fresh()
    for i in range(n):
        model.learn({"amount": float(i % 100)}, int(i % 100 > 50))
    return model


async def timed(wait: Any) -> tuple[Any, float]:
    t0 = time.monotonic()
    result = await wait
    return result, time.monotonic() - t0


async def test_a_waiting_holder_is_told_of_a_publication_and_a_promotion(
    client: redis.asyncio.Redis, redis_url: str, uid: str
) -> None:
    trainer_client = redis.asyncio.Redis.from_url(redis_url)  # the trainer's own connection
    try:
        trainer = SnapshotStore(trainer_client, f"test-{uid}", "fraud", KEY.encode())
        holder = ModelHolder(SnapshotStore(client, f"test-{uid}", "fraud", KEY.encode()), fresh())
        assert await holder.refresh() is False  # nothing published yet

        waiting = asyncio.create_task(timed(holder.wait_for_change(30.0)))
        await asyncio.sleep(0.3)  # the holder is blocked in its wait now
        assert not waiting.done()
        await trainer.publish(learned(50))
        told, waited = await asyncio.wait_for(waiting, 10)
        assert told and waited < TOLD_WITHIN_S, waited
        assert await holder.refresh() and holder.model.version == 1

        # published while nobody waited (a worker busy, or away from Redis): kept for it
        await trainer.publish(learned(80))
        told, waited = await timed(holder.wait_for_change(30.0))
        assert told and waited < 1.0, waited
        assert await holder.refresh() and holder.model.n_learned == 80

        await trainer.promote(1)  # an operator's promotion is announced as well
        told, waited = await timed(holder.wait_for_change(30.0))
        assert told and waited < 1.0
        assert await holder.refresh() and holder.model.version == 1

        told, waited = await timed(holder.wait_for_change(0.5))  # nothing new: times out
        assert not told and 0.5 <= waited < 2.0
    finally:
        await trainer_client.aclose()


def _scrape(worker_settings: Settings, name: str) -> float:
    return scraped(f"http://{worker_settings.worker.metrics_address}/metrics", name)


def _eventually(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"no {what} within {timeout:.0f}s")


async def _store_state(s: Settings) -> tuple[int | None, int | None, int | None]:
    """(trainer's learned examples, current version, its learned examples)."""
    client = redis.asyncio.Redis.from_url(s.redis.url)
    try:
        store = SnapshotStore(client, s.redis.prefix, s.model.name, KEY.encode())
        current = await store.current_version()
        served = None if current is None else (await store.load_version(current))[0].n_learned
        return await store.trainer_learned(), current, served
    finally:
        await client.aclose()


def test_every_worker_serves_a_new_version_at_once_and_reports_its_lag(
    demo_settings: Settings,  # noqa: F811
    worker_factory: Callable[..., Any],
) -> None:
    model = demo_settings.model.model_copy(update={"publish_every": 1, "poll_interval": POLL})
    configs = [
        demo_settings.model_copy(
            update={
                "model": model,
                "worker": demo_settings.worker.model_copy(
                    update={"metrics_address": f"127.0.0.1:{free_port()}"}
                ),
            }
        )
        for _ in range(2)
    ]
    s = configs[0]
    first = worker_factory(configs[0], "a")
    worker_factory(configs[1], "b")
    first.wait_for_log(ASSIGNED_LINE, 60, occurrences=2)  # the group rebalanced onto both
    events, ys = labelled(300, seed=21)
    for event, y in zip(events, ys, strict=True):
        event["label"] = y  # learned right after scoring

    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, as_records(events[:200])))
    _eventually(lambda: asyncio.run(_store_state(s))[::2] == (200, 200), "200 published", 60)
    _, current, _ = asyncio.run(_store_state(s))
    for config in configs:  # the trainer and the other worker alike
        _eventually(
            lambda c=config: (
                _scrape(c, "driftwatch_model_version") == current
                and _scrape(c, "driftwatch_model_lag_examples") == 0
            ),
            f"version {current} served with no lag on {config.worker.metrics_address}",
            TOLD_WITHIN_S,
        )

    # an operator pins that version: the trainer goes on learning, the lag shows it
    asyncio.run(_pin(s, current))
    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, as_records(events[200:])))
    _eventually(lambda: asyncio.run(_store_state(s))[0] == 300, "300 learned", 60)
    for config in configs:
        _eventually(
            lambda c=config: (
                _scrape(c, "driftwatch_model_version") == current
                and _scrape(c, "driftwatch_model_lag_examples") == 100
            ),
            f"a lag of 100 examples on {config.worker.metrics_address}",
            TOLD_WITHIN_S,
        )
        assert 0 <= _scrape(config, "driftwatch_model_served_age_seconds") < 120


async def _pin(s: Settings, version: int | None) -> None:
    client = redis.asyncio.Redis.from_url(s.redis.url)
    try:
        await SnapshotStore(client, s.redis.prefix, s.model.name, KEY.encode()).promote(version)
    finally:
        await client.aclose()
