"""The monitors' work survives a SIGKILL between two saves of their state.

The monitor states are saved every ``checkpoint_interval`` (an hour here: no save comes
before the kill), so the monitor topic must not be committed beyond the last save: the
restarted worker applies every value again, and a graceful stop saves them.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from stream.monitoring.drift import SubjectMonitor
from stream.monitoring.state_store import MonitorStateStore
from stream.service.batches import consumer_group
from stream.service.config import Settings
from tests.integration.kafka_io import committed_offsets, consume, produce
from tests.integration.test_monitoring import card_records, with_monitoring
from tests.integration.test_observability import free_port, scraped, wait_for

pytestmark = pytest.mark.integration
N = 1500  # below reference_size (2000): every value stays in the reference being collected


def applied(s: Settings) -> float:
    """The subject values the worker's monitors applied (0 while its /metrics is not up)."""
    return scraped(f"http://{s.worker.metrics_address}/metrics", "driftwatch_monitor_values_total")


def with_metrics_port(s: Settings) -> Settings:
    worker = s.worker.model_copy(update={"metrics_address": f"127.0.0.1:{free_port()}"})
    return s.model_copy(update={"worker": worker})


def saved_monitor(s: Settings, subject: str) -> SubjectMonitor | None:
    async def load() -> SubjectMonitor | None:
        redis = aioredis.from_url(s.redis.url)
        try:
            owned = await MonitorStateStore(redis, s.redis.prefix, b"integration-test-key").load(
                subject
            )
        finally:
            await redis.aclose()
        return None if owned is None else owned.monitor  # type: ignore[return-value]

    return asyncio.run(load())


@pytest.mark.parametrize("process", ["child", "worker"])
def test_a_sigkill_between_two_saves_loses_no_monitored_value(
    settings: Settings, worker_factory, process: str
) -> None:
    # "idle" is a scheduling class of the child's (the sample config's); in the worker: "low"
    priority = "idle" if process == "child" else "low"
    s = with_monitoring(
        settings, subjects=("amount",), checkpoint_interval="1h", process=process, priority=priority
    )
    doomed = worker_factory(with_metrics_port(s), name="doomed")
    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, card_records(N, seed=5)))
    asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, N, 120))
    wait_for(lambda: applied(doomed.settings) >= N, f"the monitors applied {N} values")
    group = consumer_group(s, s.topics.monitor)
    committed = asyncio.run(committed_offsets(s.kafka.bootstrap, group, s.topics.monitor))
    assert committed == {}, committed  # applied, not saved: not committed
    doomed.kill()
    assert saved_monitor(s, "amount") is None

    again = worker_factory(with_metrics_port(s), name="restarted")
    # nothing was committed: the restarted owner applies every value again
    wait_for(lambda: applied(again.settings) >= N, f"the restarted monitors applied {N}")
    again.stop()  # a graceful stop saves the states and commits
    monitor = saved_monitor(s, "amount")
    assert monitor is not None and monitor.phase == "collecting"
    # every value is in the reference being collected or waiting for the watermark; the
    # events the doomed worker scored but did not commit were scored again, and their
    # second values came behind the watermark (late)
    order = monitor.order
    print(f"reference {len(monitor._ref_values)}, buffered {order.buffered}, late {order.late}")
    assert len(monitor._ref_values) + order.buffered + order.late >= N
    committed = asyncio.run(committed_offsets(s.kafka.bootstrap, group, s.topics.monitor))
    assert sum(committed.values()) > 0
