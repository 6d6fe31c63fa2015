"""Consumer lag per partition and rebalance counts, exported as Prometheus metrics.

Lag is the partition's end offset (highwater) minus the offset the group has committed for
it on the broker: the messages a restart would have to (re)process. The committed offsets
come from the broker (an admin ``OffsetFetch``, one round trip per sample), the truth a
restarted worker would start from; until the group has committed a partition, the
consumer's read position stands in for it. A revoked partition's series is dropped at
once: its new owner reports it, and a frozen last value here would double-count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from faust.exceptions import FaustError
from faust.types import TP

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


class LagSampler:
    """Samples the lag of every partition assigned to a worker; counts its rebalances."""

    def __init__(self, app: faust.App, group: str, bootstrap: str, metrics: Metrics) -> None:
        self.app = app
        self.group = group
        self.bootstrap = bootstrap
        self.metrics = metrics
        self._exported: set[TP] = set()
        self._admin: AIOKafkaAdminClient | None = None

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

    def assigned(self, assigned: Iterable[TP]) -> None:
        """Every rebalance (and the first join) ends with an assignment, possibly empty."""
        self.metrics.rebalances.inc()
        self.metrics.assigned_partitions.clear()
        for topic, n in _count_by_topic(assigned).items():
            self.metrics.assigned_partitions.labels(topic).set(n)

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def _lags(self) -> dict[TP, int]:
        consumer: Any = self.app.consumer
        assigned = sorted(consumer.assignment())
        if not assigned:
            return {}
        highwaters: Mapping[TP, int] = await consumer.highwaters(*assigned)
        committed = await self._committed(assigned)
        lags: dict[TP, int] = {}
        for tp in assigned:
            done = committed.get(tp)
            if done is None:
                done = await consumer.position(tp)
            lag = partition_lag(highwaters.get(tp), done)
            if lag is not None:
                lags[tp] = lag
        return lags

    async def _committed(self, tps: list[TP]) -> dict[TP, int]:
        if self._admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            self._admin = admin
        wanted = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        offsets = await self._admin.list_consumer_group_offsets(self.group, partitions=wanted)
        by_tp = {(tp.topic, tp.partition): tp for tp in tps}
        return {
            by_tp[(p.topic, p.partition)]: meta.offset
            for p, meta in offsets.items()
            if meta.offset >= 0 and (p.topic, p.partition) in by_tp
        }


def _export(metrics: Metrics, lags: Mapping[TP, int], exported: set[TP]) -> None:
    _forget(metrics, exported - set(lags), exported)
    for tp, lag in lags.items():
        metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
        exported.add(tp)


def _forget(metrics: Metrics, tps: Iterable[TP], exported: set[TP]) -> None:
    for tp in list(tps):
        if tp in exported:
            metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            exported.discard(tp)


def _count_by_topic(tps: Iterable[TP]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tp in tps:
        counts[tp.topic] = counts.get(tp.topic, 0) + 1
    return counts
