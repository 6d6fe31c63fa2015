"""Plain aiokafka producers and consumers for integration tests (bounded waits only)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord, TopicPartition

from stream.service import group_offsets
from stream.service.topics import wait_consumed  # noqa: F401 - re-exported for the tests


async def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    n = 0
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


async def consume(
    bootstrap: str, topic: str, expected: int, timeout: float, settle: float = 0.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the beginning until ``expected`` records arrived or ``timeout``.

    With ``settle`` > 0, keep reading that many seconds after reaching ``expected`` so that
    surplus records (duplicates) are seen too.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-reader-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        reached_at: float | None = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                out.extend(records)
            if len(out) >= expected:
                reached_at = reached_at or time.monotonic()
                if time.monotonic() - reached_at >= settle:
                    break
    finally:
        await consumer.stop()
    return out


async def send_with_offsets(
    producer: AIOKafkaProducer,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    timeout: float = 60.0,
) -> list[tuple[int, int]]:
    """Send ``records`` with a started producer; the (partition, offset) of each, in order.

    A value of ``None`` is a tombstone. Raises if any record is not acknowledged within
    ``timeout`` seconds.
    """
    futures = [await producer.send(topic, value, key=key) for key, value in records]
    metadata = await asyncio.wait_for(asyncio.gather(*futures), timeout)
    return [(m.partition, m.offset) for m in metadata]


async def produce_with_offsets(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    max_request_size: int = 1_048_576,
    timeout: float = 60.0,
) -> list[tuple[int, int]]:
    """Like :func:`produce`, but returns the (partition, offset) the broker gave each record."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=max_request_size
    )
    await producer.start()
    try:
        return await send_with_offsets(producer, topic, records, timeout)
    finally:
        await producer.stop()


async def consume_until(
    bootstrap: str,
    topics: Sequence[str],
    done: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
    timeout: float,
    settle: float = 0.0,
    options: Mapping[str, Any] | None = None,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topics`` from the beginning (no consumer group) until ``done(records)`` or
    ``timeout``; with ``settle`` > 0, keep reading that long afterwards (duplicates).
    ``options``: the connection arguments (``client_options(settings)``) instead of a
    plaintext connection to ``bootstrap``."""
    consumer = AIOKafkaConsumer(
        *topics,
        **(options or {"bootstrap_servers": bootstrap}),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        reached_at: float | None = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                out.extend(records)
            if reached_at is None and done(out):
                reached_at = time.monotonic()
            if reached_at is not None and time.monotonic() - reached_at >= settle:
                break
    finally:
        await consumer.stop()
    return out


async def record_count(bootstrap: str, topic: str, partitions: int) -> int:
    """How many records ``topic`` holds: the sum of its partitions' end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The offsets ``group`` committed on ``topic``, by partition (empty: none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await group_offsets.committed_offsets(admin, group)
    finally:
        await admin.close()
    return {tp.partition: offset for tp, offset in committed.items() if tp.topic == topic}


class Collector:
    """Reads topics from the beginning in a background thread, for waits during a test.

    Every wait is bounded; ``stop()`` ends the thread (bounded too). It survives a broker
    restart (the client reconnects).
    """

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self._lock = threading.Lock()
        self._records: dict[str, list[ConsumerRecord[bytes, bytes]]] = {t: [] for t in topics}
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="collector", daemon=True)

    def start(self, timeout: float = 30.0) -> Collector:
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"collector did not start within {timeout}s: {self._error!r}")
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def records(self, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
        with self._lock:
            return list(self._records[topic])

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self._records[topic])

    def wait_for(
        self,
        what: Callable[[Collector], bool],
        timeout: float,
        describe: str = "condition",
        alive: Callable[[], bool] | None = None,
    ) -> None:
        """Poll ``what(self)`` until true; TimeoutError after ``timeout`` seconds, or
        RuntimeError as soon as ``alive()`` is False (e.g. the worker died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what(self):
                return
            if alive is not None and not alive():
                raise RuntimeError(f"gave up waiting for {describe}: the process died")
            if self._error is not None:
                raise RuntimeError(f"collector failed: {self._error!r}")
            time.sleep(0.1)
        raise TimeoutError(f"no {describe} within {timeout}s")

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported to the waiting test
            self._error = exc
            self._started.set()

    async def _run(self) -> None:
        consumer = AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        self._started.set()
        try:
            while not self._stopping.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                with self._lock:
                    for tp, records in batches.items():
                        self._records[tp.topic].extend(records)
        finally:
            await consumer.stop()
