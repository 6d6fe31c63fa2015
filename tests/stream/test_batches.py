"""How the batch consumers fill a batch from the partitions (no broker: aiokafka's fetch
order) and what they commit."""

from __future__ import annotations

import asyncio
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition
from redis import exceptions as redis_errors

from stream.monitoring.hub import MonitorHub
from stream.records import Outgoing, Outputs
from stream.service.batches import BatchConsumer, Checkpointed, consumer_group, fetch_balanced
from stream.service.config import Settings
from stream.service.metrics import Metrics
from stream.service.monitor_process import monitor_consumer
from stream.service.resilience import Health


class Fetched:
    """What aiokafka's fetcher holds, drained as its ``getmany`` drains it: partition after
    partition, in the order they were fetched, up to ``max_records``."""

    def __init__(self, sizes: dict[int, int]) -> None:
        self.buffers = {
            TopicPartition("events", p): deque(
                SimpleNamespace(partition=p, offset=i, timestamp=i) for i in range(n)
            )
            for p, n in sizes.items()
        }

    def assignment(self) -> set[TopicPartition]:
        return set(self.buffers)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int = 500
    ) -> dict[TopicPartition, list[Any]]:
        out: dict[TopicPartition, list[Any]] = {}
        for tp, buffer in self.buffers.items():
            if (partitions and tp not in partitions) or not buffer or max_records == 0:
                continue
            taken = [buffer.popleft() for _ in range(min(max_records, len(buffer)))]
            out[tp] = taken
            max_records -= len(taken)
        return out


def counts(batch: dict[TopicPartition, list[Any]]) -> dict[int, int]:
    return {tp.partition: len(rs) for tp, rs in sorted(batch.items())}


async def test_a_backlog_is_shared_among_the_partitions() -> None:
    fetched = Fetched({0: 5000, 1: 5000, 2: 5000, 3: 5000})
    plain = await Fetched({0: 5000, 1: 5000}).getmany(max_records=500)
    assert counts(plain) == {0: 500}  # aiokafka alone: one partition after the other

    first = await fetch_balanced(fetched, 500)  # type: ignore[arg-type]
    second = await fetch_balanced(fetched, 500)  # type: ignore[arg-type]
    for batch in (first, second):
        assert sum(counts(batch).values()) == 500
        assert len(batch) == 4 and max(counts(batch).values()) - min(counts(batch).values()) <= 2
    # each partition's records in order, the next batch going on where this one ended
    for tp, records in second.items():
        offsets = [r.offset for r in first[tp] + records]
        assert offsets == list(range(len(offsets)))


async def test_a_busy_partition_fills_the_batch_when_the_others_are_idle() -> None:
    fetched = Fetched({0: 10, 1: 3000, 2: 0, 3: 7})
    batch = await fetch_balanced(fetched, 500)  # type: ignore[arg-type]
    assert counts(batch) == {0: 10, 1: 483, 3: 7}


async def test_nothing_fetched_is_an_empty_batch() -> None:
    assert await fetch_balanced(Fetched({0: 0, 1: 0}), 500, timeout_ms=0) == {}  # type: ignore[arg-type]


def test_every_input_topic_has_its_group() -> None:
    s = Settings(worker={"app_id": "dw"}, model={"name": "m"})
    groups = {t: consumer_group(s, t) for t in (s.topics.events, s.topics.labels, "dw-train-m")}
    assert groups == {s.topics.events: "dw-ingest", s.topics.labels: "dw-ingest",
                      "dw-train-m": "dw-learn"}  # fmt: skip
    assert consumer_group(s, s.topics.monitor) == "dw-monitor"
    with pytest.raises(ValueError, match="not consumed"):
        consumer_group(s, s.topics.predictions)


class Plain:
    async def process(self, records: Any) -> list[Outgoing]:
        return []


class Saving(Plain):
    """A checkpointed step: its work is saved up to ``saved`` (next offset per partition)."""

    def __init__(self) -> None:
        self.saved: dict[int, int] = {}
        self.checkpoints = 0

    def durable(self, partition: int) -> int | None:
        return self.saved.get(partition)

    async def tick(self) -> list[Outgoing]:
        return []

    async def checkpoint(self) -> None:
        self.checkpoints += 1


class Committing:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


async def test_a_checkpointed_topic_is_committed_only_as_far_as_its_work_is_saved() -> None:
    step = Saving()
    assert isinstance(step, Checkpointed) and not isinstance(Plain(), Checkpointed)
    batches = BatchConsumer(
        Settings(),
        {"monitor": step, "events": Plain()},
        None,
        Health(Metrics()),
        None,  # type: ignore[arg-type]
    )
    consumer = Committing()
    monitor, events = TopicPartition("monitor", 0), TopicPartition("events", 0)

    await batches._commit(consumer, {monitor: 100, events: 50})  # type: ignore[arg-type]
    assert consumer.commits == [{events: 50}]  # nothing of the monitor topic saved yet
    step.saved[0] = 40
    await batches._commit(consumer, {events: 60})  # type: ignore[arg-type]
    assert consumer.commits[-1] == {monitor: 40, events: 60}
    step.saved[0] = 101
    await batches._commit(consumer, {})  # type: ignore[arg-type]
    assert consumer.commits[-1] == {monitor: 100}  # what waited, now saved
    await batches._commit(consumer, {})  # type: ignore[arg-type]
    assert len(consumer.commits) == 3  # nothing new: no commit


async def test_a_plain_topic_is_committed_as_published() -> None:
    batches = BatchConsumer(Settings(), {"events": Plain()}, None, Health(Metrics()), None)  # type: ignore[arg-type]
    consumer = Committing()
    tp = TopicPartition("events", 0)
    await batches._commit(consumer, {tp: 7})  # type: ignore[arg-type]
    await batches._commit(consumer, {tp: 9})  # type: ignore[arg-type]
    assert consumer.commits == [{tp: 7}, {tp: 9}]


class Trickle(Fetched):
    """Partition 0 gets ``every`` more records each ``tick_s`` (the fetcher's arrivals)."""

    def __init__(self, every: int, tick_s: float) -> None:
        super().__init__({0: every})
        self.every, self.tick_s, self.next = every, tick_s, every

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int = 500
    ) -> dict[TopicPartition, list[Any]]:
        got = await super().getmany(*partitions, timeout_ms=0, max_records=max_records)
        if got or timeout_ms == 0:
            return got
        await asyncio.sleep(self.tick_s)  # nothing buffered: wait for the next arrivals
        buffer = self.buffers[TopicPartition("events", 0)]
        buffer.extend(
            SimpleNamespace(partition=0, offset=i, timestamp=i)
            for i in range(self.next, self.next + self.every)
        )
        self.next += self.every
        return await super().getmany(*partitions, timeout_ms=0, max_records=max_records)


async def test_a_batch_waits_up_to_the_linger_to_fill() -> None:
    assert counts(await fetch_balanced(Trickle(10, 0.005), 100)) == {0: 10}  # type: ignore[arg-type]
    full = await fetch_balanced(Trickle(10, 0.005), 100, linger_s=30.0)  # type: ignore[arg-type]
    assert counts(full) == {0: 100}  # full long before the linger ends
    offsets = [r.offset for r in full[TopicPartition("events", 0)]]
    assert offsets == list(range(100))


async def test_commits_wait_out_the_interval_and_a_settle_commits_what_waited() -> None:
    batches = BatchConsumer(Settings(), {"events": Plain()}, None, Health(Metrics()), None)  # type: ignore[arg-type]
    consumer = Committing()
    tp = TopicPartition("events", 0)
    for offset in (10, 20, 30):  # three batches acknowledged in quick succession
        acked = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        batches._publishing.append((acked, {tp: offset}))
        await batches._settle_oldest(consumer, lazy=True)  # type: ignore[arg-type]
    assert consumer.commits == [{tp: 10}]  # 20 and 30 came within the interval: they wait
    await batches.settle(consumer)  # type: ignore[arg-type]  # idle, revoked or stopping
    assert consumer.commits == [{tp: 10}, {tp: 30}]


class Recording:
    """A publisher that keeps what it is given."""

    def __init__(self) -> None:
        self.published: list[list[bytes | None]] = []

    async def publish(self, out: list[Outgoing]) -> None:
        self.published.append([m.value for m in out])


async def test_a_batch_is_delivered_once_what_its_steps_give_later_is_published() -> None:
    # the labels a batch's prediction store claimed are known when Redis answers, after the
    # predictions are published: the batch (and its commit) waits for them too
    publisher = Recording()
    batches = BatchConsumer(Settings(), {"events": Plain()}, publisher, Health(Metrics()), None)  # type: ignore[arg-type]
    answer = asyncio.Event()
    calls = []

    async def claimed() -> list[Outgoing]:
        calls.append(1)
        await answer.wait()
        if len(calls) == 1:
            raise redis_errors.ConnectionError("the reply was lost")  # asked again
        return [Outgoing("train", b"m", b"example")]

    out = Outputs([Outgoing("predictions", b"c1", b"prediction")], [claimed])
    delivered = asyncio.ensure_future(batches._deliver(out, 1))
    await asyncio.sleep(0.05)
    assert publisher.published == [[b"prediction"]] and not delivered.done()
    answer.set()
    await asyncio.wait_for(delivered, 30)
    assert publisher.published == [[b"prediction"], [b"example"]] and len(calls) == 2


def test_the_monitor_consumer_lingers_as_configured_the_others_as_the_worker() -> None:
    s = Settings.model_validate(
        {"worker": {"batch_max_latency": "5ms"}, "monitoring": {"batch_linger": "40ms"}}
    )
    hub = MonitorHub(s, aioredis.Redis(), Metrics(), b"k" * 32)  # no I/O here
    monitors = monitor_consumer(s, Metrics(), Health(Metrics()), hub, None, None)  # type: ignore[arg-type]
    assert monitors.linger_s == 0.04
    ingest = BatchConsumer(s, {"events": Plain()}, None, Health(Metrics()), None)  # type: ignore[arg-type]
    assert ingest.linger_s == 0.005


def test_after_batch_is_told_and_a_failure_there_is_only_logged() -> None:
    told: list[int] = []
    batches = BatchConsumer(
        Settings(), {"events": Plain()}, None, Health(Metrics()), None,  # type: ignore[arg-type]
        after_batch=lambda: told.append(1),
    )  # fmt: skip
    batches._after_batch()
    assert told == [1]

    def failing() -> None:
        raise OSError("pipe closed")

    batches.after_batch = failing
    batches._after_batch()  # logged, not raised: the batch is processed
