"""Consumer lag per partition and rebalance counts, exported as Prometheus metrics.

Lag is the partition's end offset (highwater) minus the offset the group has committed for
it on the broker: the messages a restart would have to (re)process. A worker has two
consumers, each in its own group: Faust's (the internal topics) and the ingest consumer
(events and labels, :mod:`stream.service.batches`); every partition either one owns is
sampled. The committed offsets come from the broker (an admin ``OffsetFetch`` per group,
one round trip each per sample), the truth a restarted worker would start from; until the
group has committed a partition, the consumer's read position stands in for it. A revoked
partition's series is dropped at once: its new owner reports it, and a frozen last value
here would double-count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from faust.exceptions import FaustError
from faust.types import TP

from stream.service.group_offsets import committed_offsets
from stream.service.metrics import Metrics

log = logging.getLogger(__name__)

#: Seconds between two lag samples; Prometheus scrapes every 5 s in deploy/prometheus.
INTERVAL_S = 5.0

#: Errors a sample may hit while the group rebalances or the broker is unreachable: the
#: sample is skipped and the previous values stay until the next one.
_TRANSIENT = (KafkaError, FaustError, asyncio.TimeoutError, OSError)


def partition_lag(highwater: int | None, committed: int | None) -> int | None:
    """Messages between ``committed`` (the next offset to process) and ``highwater``.

    ``None`` when either offset is unknown; never negative (the end offset may be fetched
    a moment before a commit that already includes newer messages).

    >>> partition_lag(120, 100), partition_lag(100, 120), partition_lag(None, 3)
    (20, 0, None)
    """
    if highwater is None or committed is None:
        return None
    return max(0, highwater - committed)


@dataclass
class Source:
    """What the sampler reads of one consumer: its assignment, end offsets and positions."""

    assignment: Callable[[], Iterable[Any]]
    ends: Callable[[list[Any]], Awaitable[Mapping[Any, int]]]
    position: Callable[[Any], Awaitable[int | None]]


def aiokafka_source(consumer: AIOKafkaConsumer) -> Source:
    """A plain aiokafka consumer (end offsets by one ListOffsets request per sample)."""
    return Source(consumer.assignment, consumer.end_offsets, consumer.position)


class LagSampler:
    """Samples the lag of every partition assigned to a worker; counts its rebalances.

    Parameters
    ----------
    admin
        Makes the admin client that reads committed offsets (created at the first sample).
    """

    def __init__(self, metrics: Metrics, admin: Callable[[], AIOKafkaAdminClient]) -> None:
        self.metrics = metrics
        self.make_admin = admin
        self._sources: dict[str, Source] = {}
        self._assigned: dict[str, set[TP]] = {}
        self._exported: set[TP] = set()
        self._admin: AIOKafkaAdminClient | None = None

    def watch(self, group: str, source: Source) -> None:
        """Sample the partitions ``source`` (a consumer of ``group``) is assigned."""
        self._sources[group] = source

    def unwatch(self, group: str) -> None:
        """``group``'s consumer stopped: its partitions are no longer this worker's."""
        self._sources.pop(group, None)
        self.revoked(self._assigned.pop(group, set()))
        self._count_assigned()

    async def sample(self, timeout_s: float = INTERVAL_S) -> None:
        """Export one sample (a timer's body); a rebalance or an outage skips it."""
        try:
            lags = await asyncio.wait_for(self._lags(), timeout=timeout_s)
        except _TRANSIENT as exc:
            log.debug("consumer lag not sampled: %r", exc)
            return
        _export(self.metrics, lags, self._exported)

    def revoked(self, revoked: Iterable[TP]) -> None:
        """Another worker owns these now: forget their lag."""
        _forget(self.metrics, revoked, self._exported)

    def assigned(self, assigned: Iterable[TP], group: str) -> None:
        """Every rebalance of a group (and its first join) ends with an assignment."""
        self.metrics.rebalances.inc()
        self._assigned[group] = {TP(tp.topic, tp.partition) for tp in assigned}
        self._count_assigned()

    def _count_assigned(self) -> None:
        self.metrics.assigned_partitions.clear()
        every = [tp for tps in self._assigned.values() for tp in tps]
        for topic, n in _count_by_topic(every).items():
            self.metrics.assigned_partitions.labels(topic).set(n)

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def _lags(self) -> dict[TP, int]:
        lags: dict[TP, int] = {}
        for group, source in list(self._sources.items()):
            lags.update(await self._group_lags(group, source))
        return lags

    async def _group_lags(self, group: str, source: Source) -> dict[TP, int]:
        assigned = sorted(source.assignment())
        if not assigned:
            return {}
        highwaters = await source.ends(assigned)
        committed = await self._committed(group, assigned)
        lags: dict[TP, int] = {}
        for tp in assigned:
            done = committed.get((tp.topic, tp.partition))
            if done is None:
                done = await source.position(tp)
            lag = partition_lag(highwaters.get(tp), done)
            if lag is not None:
                lags[TP(tp.topic, tp.partition)] = lag
        return lags

    async def _committed(self, group: str, tps: list[Any]) -> dict[tuple[str, int], int]:
        if self._admin is None:
            admin = self.make_admin()
            await admin.start()
            self._admin = admin
        wanted = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        # a busy coordinator skips the sample (wait 0): its empty answer is not "no commits"
        offsets = await committed_offsets(self._admin, group, wanted, wait_s=0.0)
        return {(p.topic, p.partition): offset for p, offset in offsets.items()}


def _export(metrics: Metrics, lags: Mapping[TP, int], exported: set[TP]) -> None:
    _forget(metrics, exported - set(lags), exported)
    for tp, lag in lags.items():
        metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
        exported.add(tp)


def _forget(metrics: Metrics, tps: Iterable[TP], exported: set[TP]) -> None:
    for each in list(tps):
        tp = TP(each.topic, each.partition)
        if tp in exported:
            metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            exported.discard(tp)


def _count_by_topic(tps: Iterable[TP]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tp in tps:
        counts[tp.topic] = counts.get(tp.topic, 0) + 1
    return counts
