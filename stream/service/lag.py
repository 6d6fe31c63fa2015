"""Consumer lag per partition and rebalance counts, exported as Prometheus metrics.

Lag is the partition's end offset (highwater) minus the offset the group has committed for
it: the messages a restart would have to (re)process. Until this worker has a committed
offset for a partition (a fresh group), the consumer's read position stands in for it.
Faust's own ``Monitor`` keeps committed offsets too, but does not forget them when a
partition is revoked, so it would report a stale lag after the partition moved away and
back; the consumer's map is the one Faust itself decides commits with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.exceptions import FaustError
from faust.types import TP

from stream.service.metrics import Metrics

log = logging.getLogger(__name__)

#: Seconds between two lag samples; Prometheus scrapes every 5 s in deploy/prometheus.
INTERVAL_S = 5.0

#: Errors a sample may hit while the group rebalances or the broker is unreachable: the
#: sample is skipped and the previous values stay until the next one.
_TRANSIENT = (KafkaError, FaustError, asyncio.TimeoutError)


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


def install(app: faust.App, metrics: Metrics, interval_s: float = INTERVAL_S) -> None:
    """Sample the lag of every assigned partition every ``interval_s``; count rebalances."""
    exported: set[TP] = set()

    @app.timer(interval_s)
    async def sample_consumer_lag() -> None:
        try:
            lags = await asyncio.wait_for(_lags(app.consumer), timeout=interval_s)
        except _TRANSIENT as exc:
            log.debug("consumer lag not sampled: %r", exc)
            return
        _export(metrics, lags, exported)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types async receivers loosely
    async def forget_revoked_lag(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        # another worker owns these now: a frozen last value here would double-count lag
        _forget(metrics, revoked, exported)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def count_rebalance(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        # every rebalance (and the first join) ends with an assignment, possibly empty
        metrics.rebalances.inc()
        metrics.assigned_partitions.clear()
        for topic, n in _count_by_topic(assigned).items():
            metrics.assigned_partitions.labels(topic).set(n)


async def _lags(consumer: Any) -> dict[TP, int]:
    assigned = sorted(consumer.assignment())
    if not assigned:
        return {}
    highwaters: Mapping[TP, int] = await consumer.highwaters(*assigned)
    committed: Mapping[TP, int | None] = consumer._committed_offset
    lags: dict[TP, int] = {}
    for tp in assigned:
        done = committed.get(tp)
        if done is None:
            done = await consumer.position(tp)
        lag = partition_lag(highwaters.get(tp), done)
        if lag is not None:
            lags[tp] = lag
    return lags


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
