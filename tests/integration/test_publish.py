"""Publishing in record batches (stream/service/publish.py) against the real broker."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaProducer

from stream.records import Outgoing
from stream.service.config import Settings
from stream.service.publish import new_producer, publish
from stream.service.topics import ensure_topics
from tests.integration.kafka_io import consume_until

pytestmark = pytest.mark.integration


async def _publish_and_compare(s: Settings) -> None:
    await ensure_topics(s)
    topic = s.topics.predictions
    keys = [f"card-{i}".encode() for i in range(300)]
    too_large = Outgoing(topic, b"big", b"x" * 2_000_000)
    messages = [Outgoing(topic, k, b"v:" + k) for k in keys]
    producer = new_producer(s)
    plain = AIOKafkaProducer(bootstrap_servers=s.kafka.bootstrap)
    await producer.start()
    await plain.start()
    try:
        refused = await publish(producer, [*messages[:150], too_large, *messages[150:]])
        # where any Kafka client puts each key: aiokafka's own per-message send
        expected = {}
        for k in keys[:20]:
            meta = await (await plain.send(s.topics.dlq, b"probe", key=k))
            expected[k] = meta.partition
    finally:
        await plain.stop()
        await producer.stop()
    assert [(m.key, "MessageSizeTooLargeError" in why) for m, why in refused] == [(b"big", True)]
    records = await consume_until(s.kafka.bootstrap, [topic], lambda r: len(r) >= 300, 30)
    assert sorted(r.key for r in records) == sorted(keys)
    assert all(r.value == b"v:" + r.key for r in records)
    got = {r.key: r.partition for r in records}
    assert {k: got[k] for k in expected} == expected
    assert len(set(got.values())) == s.topics.partitions  # spread over every partition


def test_outputs_land_where_any_client_puts_their_key_and_oversize_is_refused(
    settings: Settings,
) -> None:
    asyncio.run(_publish_and_compare(settings))


async def _publish_timed(s: Settings, linger_ms: int) -> float:
    await ensure_topics(s)
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka.bootstrap, linger_ms=linger_ms)
    await producer.start()
    try:
        await producer.partitions_for(s.topics.predictions)  # metadata before the clock
        messages = [Outgoing(s.topics.predictions, f"k{i}".encode(), b"v") for i in range(50)]
        start = time.monotonic()
        assert await publish(producer, messages) == []
        return time.monotonic() - start
    finally:
        await producer.stop()


def test_a_batch_is_sent_at_once_not_after_the_producers_linger(settings: Settings) -> None:
    """A batch's outputs are complete when published: aiokafka lingered an open record
    batch for linger_ms (5 ms on the worker's producer, on every batch's outputs)."""
    assert asyncio.run(_publish_timed(settings, linger_ms=10_000)) < 5.0
