"""Publishing a batch's outputs: every message acknowledged by the broker, or dead-lettered.

A batch's input offsets are committed (or, on a Faust agent, acked) only after the broker
acknowledged every output of the batch: delivery is at-least-once.

The outputs are grouped by topic partition (the Java client's murmur2 partitioner, as
aiokafka and Faust use, so a key lands where any Kafka client would put it) and sent as a
few record batches, one future per record batch instead of one per message: aiokafka's
per-message ``send`` (a future, an accumulator lookup and a callback per message) was about
a tenth of a worker's CPU.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from stream.messages import dead_letter, dead_letter_key
from stream.monitoring.alerts import alert_key
from stream.records import Outgoing
from stream.service.config import Settings
from stream.service.kafka_security import client_options
from stream.service.metrics import Metrics
from stream.service.resilience import Health, dependency_of, describe
from stream.timestamps import now_ms

log = logging.getLogger(__name__)

#: Largest record batch built here (the broker's default ``message.max.bytes`` is 1 MiB).
BATCH_BYTES = 512 * 1024
#: Largest request (and so message) the producer sends: the Kafka clients' default.
MAX_REQUEST_BYTES = 1_048_576
#: A record's framing on top of its key and value, counted as aiokafka counts it.
_RECORD_OVERHEAD = 64

_partitioner = DefaultPartitioner()
#: murmur2 is pure Python in aiokafka (~3 µs a key): the partitions of recent keys, by
#: (key, partition count); emptied when it reaches this size, so memory stays bounded
_PARTITION_CACHE_SIZE = 1 << 16
_partition_of: dict[tuple[bytes, int], int] = {}


def partition_for(key: bytes | None, partitions: list[int]) -> int:
    """The partition of ``key`` among a topic's ``partitions`` (Kafka numbers them 0 to
    n - 1), as every Kafka client picks it.

    >>> ids = [0, 1, 2, 3]
    >>> partition_for(b"card-1", ids) == DefaultPartitioner()(b"card-1", ids, [])
    True
    """
    if key is None:
        return int(_partitioner(None, partitions, partitions))
    cached = _partition_of.get((key, len(partitions)))
    if cached is None:
        if len(_partition_of) >= _PARTITION_CACHE_SIZE:
            _partition_of.clear()
        cached = _partition_of[(key, len(partitions))] = int(_partitioner(key, partitions, []))
    return cached


def new_producer(settings: Settings) -> AIOKafkaProducer:
    """The worker's producer: every output acknowledged by all in-sync replicas."""
    return AIOKafkaProducer(
        acks="all",
        linger_ms=5,
        max_batch_size=BATCH_BYTES,
        max_request_size=MAX_REQUEST_BYTES,
        client_id=f"{settings.worker.app_id}-publisher",
        **client_options(settings),
    )


async def publish(
    producer: AIOKafkaProducer, messages: Sequence[Outgoing]
) -> list[tuple[Outgoing, str]]:
    """Send ``messages`` and wait until the broker acknowledged every one of them.

    A transient error raises (the caller retries the whole list; duplicates are allowed,
    losses are not). A message refused for itself (too large, invalid) is returned with
    the reason, for the caller to dead-letter.
    """
    refused: list[tuple[Outgoing, str]] = []
    by_partition: dict[tuple[str, int], list[Outgoing]] = {}
    partitions: dict[str, list[int]] = {}
    for m in messages:
        size = len(m.key or b"") + len(m.value or b"") + _RECORD_OVERHEAD
        if size > MAX_REQUEST_BYTES:
            refused.append((m, describe(MessageSizeTooLargeError(
                f"the message is {size} bytes, more than the {MAX_REQUEST_BYTES} a request "
                "may carry"))))  # fmt: skip
            continue
        every = partitions.get(m.topic)
        if every is None:
            every = partitions[m.topic] = sorted(await producer.partitions_for(m.topic))
        by_partition.setdefault((m.topic, partition_for(m.key, every)), []).append(m)
    sent: list[tuple[list[Outgoing], Any]] = []
    for (topic, partition), members in by_partition.items():
        for chunk in _record_batches(producer, members):
            batch, group = chunk
            sent.append((group, await producer.send_batch(batch, topic, partition=partition)))
    outcomes = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
    for (group, _), outcome in zip(sent, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if dependency_of(outcome) is not None or not isinstance(outcome, Exception):
                raise outcome
            refused += await _one_by_one(producer, group)  # which message was it?
    return refused


def _record_batches(
    producer: AIOKafkaProducer, members: Sequence[Outgoing]
) -> list[tuple[Any, list[Outgoing]]]:
    """``members`` (one partition's messages) as closed record batches of at most
    BATCH_BYTES."""
    out: list[tuple[Any, list[Outgoing]]] = []
    batch = producer.create_batch()
    group: list[Outgoing] = []
    for m in members:
        if batch.append(key=m.key, value=m.value, timestamp=None) is None:
            out.append((batch, group))
            batch, group = producer.create_batch(), []
            batch.append(key=m.key, value=m.value, timestamp=None)  # the first always fits
        group.append(m)
    if group:
        out.append((batch, group))
    for batch, _ in out:
        # complete: aiokafka sends a closed batch at once, an open one only after the
        # producer's linger_ms, and the next batch for its partition waits until then
        batch.close()
    return out


async def _one_by_one(
    producer: AIOKafkaProducer, messages: Sequence[Outgoing]
) -> list[tuple[Outgoing, str]]:
    """Send a refused record batch's messages singly: the refusals are the culprits'."""
    refused: list[tuple[Outgoing, str]] = []
    for m in messages:
        try:
            await (await producer.send(m.topic, m.value, key=m.key))
        except Exception as exc:
            if dependency_of(exc) is not None:
                raise
            refused.append((m, describe(exc)))
    return refused


def encode_alert(alert: dict[str, Any]) -> bytes:
    """Alert JSON; numpy scalars in the evidence become plain numbers."""
    return orjson.dumps(alert, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class Publisher:
    """Publishes with retries through outages; dead-letters what the broker refuses.

    Owns the worker's producer: started at the first publication, flushed and stopped by
    :meth:`close` when the worker stops (a publication after that waits to be cancelled,
    its batch uncommitted).
    """

    def __init__(self, settings: Settings, metrics: Metrics, health: Health):
        self.settings = settings
        self.metrics = metrics
        self.health = health
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._closed = asyncio.Event()

    async def producer(self) -> AIOKafkaProducer:
        if self._closed.is_set():
            await asyncio.Event().wait()  # stopping: wait to be cancelled, commit nothing
        async with self._starting:
            if self._producer is None:
                producer = new_producer(self.settings)
                await self.health.retry("publish", producer.start)
                self._producer = producer
        return self._producer

    async def partitions(self, topic: str) -> list[int]:
        """The partitions of ``topic`` as the producer knows them (from its metadata)."""
        producer = await self.producer()
        found = await self.health.retry("publish", lambda: producer.partitions_for(topic))
        return sorted(found)

    async def close(self) -> None:
        """Flush and stop the producer (the worker stops)."""
        self._closed.set()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()  # flushes what was sent

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish ``messages``; a message the broker refuses for itself is dead-lettered."""
        if not messages:
            return
        health = self.health
        producer = await self.producer()
        refused = await health.retry(
            "publish", lambda: health.patient("kafka", "publish", publish(producer, messages))
        )
        if refused:
            letters = [self._undeliverable(m, error) for m, error in refused]
            still = await self.health.retry("publish", lambda: publish(producer, letters))
            for m, error in still:
                log.error("dead letter for %s not published either: %s", m.topic, error)

    def _undeliverable(self, m: Outgoing, error: str) -> Outgoing:
        self.metrics.events_rejected.labels(m.topic, "publish", "refused").inc()
        log.error("output to %s refused by the broker: %s; dead-lettered", m.topic, error)
        value = dead_letter(error, "publish", m.topic, None, None, m.key, m.value, now_ms())
        return Outgoing(self.settings.topics.dlq, dead_letter_key(m.key), value)

    def alerts(self, alerts: Sequence[dict[str, Any]]) -> list[Outgoing]:
        """Alert messages keyed by kind and subject; each is counted and logged once."""
        topic = self.settings.topics.alerts
        for a in alerts:
            self.metrics.alerts.labels(a["kind"], a["status"]).inc()
            log.warning(
                "alert %s %s %s/%s: %s",
                a["status"], a["kind"], a["subject"], a["detector"], a["message"],
            )  # fmt: skip
        return [Outgoing(topic, alert_key(a), encode_alert(a)) for a in alerts]
