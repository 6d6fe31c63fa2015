"""How the batch consumers fill a batch from the partitions (no broker: aiokafka's fetch order)."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from stream.service.batches import consumer_group, fetch_balanced
from stream.service.config import Settings


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
    assert consumer_group(s, s.topics.monitor) == "dw"
