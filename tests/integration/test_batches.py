"""The batch consumers (events, labels, training examples) across rebalances and upgrades.

Against the session's real broker and Redis: a worker that joins mid-backlog takes over
partitions at exactly the offsets the other worker committed before letting them go, and a
worker upgraded from the Faust-only consumption resumes where the Faust group had
committed.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.service.batches import ASSIGNED, consumer_group, ingest_group
from stream.service.config import Settings
from stream.service.topics import wait_consumed
from tests.integration.faults import (
    Outputs,
    PacedProducer,
    Sent,
    card_events,
    good,
    read_outputs,
)
from tests.integration.kafka_io import committed_offsets, consume_until, produce_with_offsets
from tests.integration.test_pipeline import demo_settings  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


@pytest.fixture
def quiet_settings(demo_settings: Settings) -> Settings:  # noqa: F811
    """The demo's features, windows and model; monitoring off (not what is tested here)."""
    return demo_settings.model_copy(
        update={"monitoring": demo_settings.monitoring.model_copy(update={"enabled": False})}
    )


def produce(s: Settings, events: list[dict]) -> list[Sent]:
    messages = good(events)
    positions = asyncio.run(
        produce_with_offsets(
            s.kafka.bootstrap, s.topics.events, [(m.key, m.value) for m in messages]
        )
    )
    return [Sent(m, p, o) for m, (p, o) in zip(messages, positions, strict=True)]


def outputs(s: Settings, sent: list[Sent], timeout: float = 180.0) -> Outputs:
    t = s.topics
    return read_outputs(s.kafka.bootstrap, t.events, t.predictions, t.dlq, sent, timeout)


def test_a_worker_joining_mid_stream_takes_over_without_duplicates(
    quiet_settings: Settings, worker_factory
) -> None:
    """A's revocation waits for its batch in flight (and the one still being published) and
    commits them before B is given the partitions: B starts exactly there, so a graceful
    rebalance repeats no event. Without that wait, B reprocesses A's uncommitted batches."""
    s = quiet_settings
    events = card_events(12000, seed=81, n_cards=300, run_id="join")
    a = worker_factory(s, name="a")
    producer = PacedProducer(s.kafka.bootstrap, s.topics.events, good(events), rate=600).start()
    try:
        asyncio.run(
            consume_until(s.kafka.bootstrap, [s.topics.predictions], lambda r: len(r) >= 1500, 60)
        )
        assert not producer.finished, "the stream ended before B joined"
        b = worker_factory(s, name="b")
        a.wait_for_log(ASSIGNED, 60, occurrences=2)  # A let go of half of the partitions
        assert not producer.finished, "the stream ended before the rebalance"
        assert producer.join(60), "producer did not finish"
    finally:
        producer.stop()
    sent = producer.produced()
    out = outputs(s, sent)

    acc = out.account(sent)
    assert not acc.lost, acc.summary()
    assert ASSIGNED in b.log_text()
    assert acc.duplicates == 0, acc.summary()
    assert a.alive() and b.alive()


def test_an_upgraded_worker_resumes_where_the_faust_group_committed(
    quiet_settings: Settings, worker_factory
) -> None:
    """Earlier versions consumed events in the Faust group ``<app_id>``: the ingest group
    starts at those offsets, neither replaying what was processed nor skipping the rest."""
    s = quiet_settings
    sent = produce(s, card_events(400, seed=82, n_cards=50, run_id="upgrade"))
    # what the old worker had processed: the first half of every partition
    by_partition: dict[int, list[int]] = {}
    for x in sent:
        by_partition.setdefault(x.partition, []).append(x.offset)
    legacy = {p: sorted(offsets)[len(offsets) // 2] for p, offsets in by_partition.items()}
    asyncio.run(_commit(s, s.worker.app_id, legacy))

    worker_factory(s)
    done = [x for x in sent if x.offset < legacy[x.partition]]
    todo = [x for x in sent if x.offset >= legacy[x.partition]]
    out = outputs(s, todo)
    asyncio.run(asyncio.sleep(2.0))  # anything replayed from before would be out by now
    records = asyncio.run(
        consume_until(s.kafka.bootstrap, [s.topics.predictions], lambda r: False, 3)
    )
    predicted = {orjson.loads(r.value)["event_id"] for r in records}

    assert not out.account(todo).lost, out.account(todo).summary()
    assert not predicted & {x.message.event_id for x in done}
    committed = asyncio.run(committed_offsets(s.kafka.bootstrap, ingest_group(s), s.topics.events))
    assert committed == {p: max(o) + 1 for p, o in by_partition.items()}
    assert consumer_group(s, s.topics.events) == ingest_group(s)


async def _commit(s: Settings, group: str, offsets: dict[int, int]) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = {TopicPartition(s.topics.events, p): o for p, o in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()


def test_wait_consumed_counts_a_partition_never_committed_as_empty(settings: Settings) -> None:
    """An empty partition the group never committed (offset -1) is not 'behind 1'."""
    s = settings

    async def go() -> None:
        # one record on one partition; the other three stay empty
        [(partition, offset)] = await produce_with_offsets(
            s.kafka.bootstrap, s.topics.events, [(b"k", b"v")]
        )
        tp = TopicPartition(s.topics.events, partition)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka.bootstrap, group_id=f"{s.worker.app_id}-wait",
            enable_auto_commit=False,
        )  # fmt: skip
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.commit({tp: offset + 1})
        finally:
            await consumer.stop()
        await wait_consumed(s.kafka.bootstrap, f"{s.worker.app_id}-wait", s.topics.events, 10)

    asyncio.run(go())
