"""Outage retries, poison isolation and the batch guard, without a broker or Redis."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiokafka.errors as kafka_errors
import pytest
import redis.exceptions as redis_errors
from faust.exceptions import ProducerSendError

from stream.exceptions import StateConflictError
from stream.service.metrics import Metrics
from stream.service.resilience import (
    Health,
    Poisoned,
    RepeatFilter,
    dependency_of,
    guarded,
    isolate,
    until_done,
)


def fast_health() -> Health:
    return Health(Metrics(), backoff_start_s=0.001, backoff_cap_s=0.005)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.mark.parametrize(
    ("exc", "dependency"),
    [
        (redis_errors.ConnectionError("refused"), "redis"),
        (redis_errors.TimeoutError("timed out"), "redis"),
        (redis_errors.BusyLoadingError("LOADING"), "redis"),
        (redis_errors.AuthenticationError("WRONGPASS"), "redis"),
        (redis_errors.ResponseError("LOADING Redis is loading the dataset"), "redis"),
        (redis_errors.ResponseError("ERR Error running script: bad argument"), None),
        (kafka_errors.KafkaConnectionError(), "kafka"),
        (kafka_errors.KafkaTimeoutError(), "kafka"),
        (kafka_errors.NotLeaderForPartitionError(), "kafka"),
        (kafka_errors.MessageSizeTooLargeError(), None),
        (StateConflictError("busy"), "redis"),
        (ValueError("bad data"), None),
        (KeyError("x"), None),
    ],
)
def test_transient_failures_are_told_from_the_data_s(
    exc: Exception, dependency: str | None
) -> None:
    assert dependency_of(exc) == dependency


def test_a_producer_error_is_judged_by_its_cause() -> None:
    for cause, dependency in ((kafka_errors.KafkaTimeoutError(), "kafka"),
                              (kafka_errors.MessageSizeTooLargeError(), None)):  # fmt: skip
        try:
            raise ProducerSendError("Error while sending") from cause
        except ProducerSendError as exc:
            assert dependency_of(exc) == dependency


async def test_an_outage_is_retried_and_logged_once_at_start_and_once_at_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = fast_health()
    tries = 0

    async def flaky() -> str:
        nonlocal tries
        tries += 1
        if tries <= 20:
            raise redis_errors.ConnectionError("Connection refused")
        return "done"

    with caplog.at_level(logging.INFO, logger="stream.service.resilience"):
        assert await health.retry("score", flaky) == "done"
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "redis unavailable" in m]) == 1
    assert len([m for m in lines if "redis available again" in m]) == 1
    retries = sample(health.metrics, "driftwatch_retries_total", dependency="redis", step="score")
    assert retries == 20
    assert sample(health.metrics, "driftwatch_dependency_degraded", dependency="redis") == 0


async def test_the_degraded_gauge_is_up_during_an_outage() -> None:
    health = fast_health()
    seen: list[float] = []

    async def flaky() -> None:
        seen.append(sample(health.metrics, "driftwatch_dependency_degraded", dependency="kafka"))
        if len(seen) < 3:
            raise kafka_errors.KafkaConnectionError()

    await health.retry("publish", flaky)
    assert seen == [0.0, 1.0, 1.0]
    assert not health.degraded("kafka")


async def test_a_data_error_is_not_retried() -> None:
    health = fast_health()
    tries = 0

    async def broken() -> None:
        nonlocal tries
        tries += 1
        raise ValueError("bad bucket")

    with pytest.raises(ValueError, match="bad bucket"):
        await health.retry("score", broken)
    assert tries == 1


async def test_isolation_finds_every_poison_message_and_keeps_the_rest_in_order() -> None:
    items = list(range(100))
    poison = {3, 4, 57, 99}
    calls = 0

    async def process(part: Any) -> list[int]:
        nonlocal calls
        calls += 1
        if poison & set(part):
            raise RuntimeError(f"poison in {min(poison & set(part))}")
        return list(part)

    bad: list[Poisoned] = []
    done = [x for part in await isolate(items, process, bad) for x in part]
    assert done == [x for x in items if x not in poison]
    assert sorted(p.item for p in bad) == sorted(poison)
    assert all(p.error.startswith("RuntimeError: poison in") for p in bad)
    assert calls < 60  # a bisection, not one call per message


async def test_isolation_lets_cancellation_through() -> None:
    async def process(part: Any) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await isolate([1, 2], process, [])


async def test_a_failing_step_is_retried_not_given_up() -> None:
    health = fast_health()
    tries = 0

    async def step() -> None:
        nonlocal tries
        tries += 1
        if tries < 4:
            raise RuntimeError("a bug in the step")

    await until_done("score", step, 3, health)
    assert tries == 4
    assert sample(health.metrics, "driftwatch_task_errors_total", task="score") == 3


async def test_a_timer_body_never_raises() -> None:
    health = fast_health()

    async def down() -> None:
        raise redis_errors.ConnectionError("down")

    async def bug() -> None:
        raise ZeroDivisionError("oops")

    async def fine() -> None:
        return None

    await guarded("sweep_expired", down, health)
    assert health.degraded("redis")
    await guarded("sweep_expired", bug, health)
    assert sample(health.metrics, "driftwatch_task_errors_total", task="sweep_expired") == 1
    await guarded("sweep_expired", fine, health)
    assert not health.degraded("redis")


def test_repeated_client_errors_are_rate_limited_with_a_count() -> None:
    limiter = RepeatFilter(interval_s=0.0)
    record = logging.LogRecord("aiokafka.conn", logging.ERROR, "", 0, "Unable connect to %s",
                               ("node 1",), None)  # fmt: skip
    assert limiter.filter(record)
    limiter = RepeatFilter(interval_s=3600.0)

    def rec(name: str = "aiokafka.conn", level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord(name, level, "", 0, "Unable connect to %s", ("node 1",), None)

    assert [limiter.filter(rec()) for _ in range(1000)].count(True) == 1
    assert limiter.filter(rec("stream.service.app"))  # our own lines are never filtered
    assert limiter.filter(rec(level=logging.INFO))
