"""The drift and data-quality monitors a worker owns, and their persistence in Redis.

Scorers send compact per-subject batches to the monitor topic keyed by subject, so each
subject's monitor lives on exactly one worker (the owner of the subject's partition) however
many workers score: one firing alert per episode, not one per worker. The owner keeps the
monitor's state (reference, windows, open episodes) in Redis, signed like model snapshots,
with the offset of the last message it applied, so a restarted or newly assigned owner
resumes without counting a message twice.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from stream.ingest.scoring import BatchResult
from stream.messages import now_ms
from stream.model.snapshot_format import sign, verify
from stream.monitoring.drift import SubjectMonitor
from stream.monitoring.quality import QualityMonitor, quality_counts
from stream.monitoring.reference import generation_key, load_pinned
from stream.monitoring.subjects import (
    SubjectBatch,
    SubjectKind,
    monitored_subjects,
    subject_batches,
)
from stream.service.config import Settings
from stream.service.metrics import Metrics
from stream.service.resilience import Poisoned, describe

log = logging.getLogger(__name__)

QUALITY = "quality"
DLQ_SUBJECT = "dlq"


def family_size(settings: Settings) -> int:
    """How many (subject, detector) pairs share the family-wise false-alarm budget."""
    m = settings.monitoring
    sizes = {"numeric": len(m.numeric_detectors), "categorical": len(m.categorical_detectors)}
    return sum(sizes[kind] for kind, _ in monitored_subjects(settings).values())


def monitor_messages(
    settings: Settings, result: BatchResult, subjects: dict[str, SubjectKind]
) -> list[tuple[bytes, bytes]]:
    """(key, value) messages for the monitor topic from one scored batch."""
    out = [
        (b.subject.encode(), b"D" + b.encode()) for b in subject_batches(result.scored, subjects)
    ]
    counts = quality_counts(result.scored)
    if result.scored:
        ts = [s.event.ts_ms for s in result.scored]
        span = (min(ts), max(ts))
        for feature, (n, c) in counts.items():
            body = {"feature": feature, "n": n, "counts": c, "ts": span}
            out.append((f"{QUALITY}:{feature}".encode(), b"Q" + orjson.dumps(body)))
    n_all = len(result.scored) + result.rejected
    if n_all:
        now = now_ms()
        body = {
            "feature": DLQ_SUBJECT,
            "n": n_all,
            "counts": {"rejected": result.rejected},
            "ts": (now, now),
        }
        out.append((f"{QUALITY}:{DLQ_SUBJECT}".encode(), b"Q" + orjson.dumps(body)))
    return out


@dataclass
class Owned:
    """One monitor with the offset of the last message it applied."""

    monitor: Any
    partition: int
    offset: int = -1
    dirty: bool = False
    generation: int = 0  # of the pinned references this monitor follows


@dataclass
class MonitorHub:
    """Routes monitor-topic messages to the subject and quality monitors this worker owns."""

    settings: Settings
    redis: aioredis.Redis
    metrics: Metrics
    key: bytes
    owned: dict[str, Owned] = field(default_factory=dict)
    generation: int = 0
    pinned: dict[str, tuple[list[Any], list[int]]] = field(default_factory=dict)
    _saved_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.subjects = monitored_subjects(self.settings)
        self.family = family_size(self.settings)
        # apply (partly in a thread) and save (also from the rebalance signal) never overlap
        self._lock = asyncio.Lock()

    def redis_key(self, name: str) -> str:
        return f"{self.settings.redis.prefix}:monitor:{name}"

    async def apply(
        self, messages: Sequence[tuple[int, int, bytes]], off_loop: bool = True
    ) -> tuple[list[dict[str, Any]], list[Poisoned]]:
        """Apply (partition, offset, value) messages in order.

        Returns the alerts raised and the messages that could not be applied (each with
        its error; the monitors skip them). All Redis reads come first, so a retry after a
        Redis error applies nothing twice. With ``off_loop`` the detector work runs in a
        thread: fitting a reference takes seconds, and the scoring agent must keep going
        meanwhile.
        """
        async with self._lock:
            await self._follow_pins()
            poisoned: list[Poisoned] = []
            routed = []
            for partition, offset, value in messages:
                try:
                    routed.append((partition, offset, *self._route(value)))
                except Exception as exc:  # any decoding error is this message's own
                    poisoned.append(Poisoned((partition, offset, value), describe(exc)))
            for partition, _, name, _ in routed:
                if name is not None and name not in self.owned:
                    await self._owned(name, partition)
            if off_loop:
                alerts = await asyncio.to_thread(self._apply_routed, routed, poisoned)
            else:
                alerts = self._apply_routed(routed, poisoned)
            return alerts, poisoned

    def _apply_routed(
        self, routed: Sequence[tuple[int, int, str | None, Any]], poisoned: list[Poisoned]
    ) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = []
        for partition, offset, name, payload in routed:
            owned = self.owned.get(name) if name is not None else None
            if name is None or owned is None or offset <= owned.offset:
                continue  # not monitored here, or applied before a restart
            try:
                if owned.generation != self.generation:
                    alerts.extend(self._repin(name, owned))
                alerts.extend(self._update(owned, name, payload))
            except Exception as exc:  # a batch the monitor cannot take: skip it, say so
                log.exception("monitor %s: message at %d/%d skipped", name, partition, offset)
                poisoned.append(Poisoned((partition, offset, payload), describe(exc)))
            owned.offset, owned.dirty = offset, True
        return alerts

    async def _follow_pins(self) -> None:
        """One GET per batch: pick up references pinned or unpinned with the CLI."""
        raw = await self.redis.get(generation_key(self.settings.redis.prefix))
        generation = int(raw or 0)
        if generation != self.generation:
            self.pinned = await load_pinned(self.redis, self.settings.redis.prefix)
            self.generation = generation
            log.info("reference generation %d: %d pinned subjects", generation, len(self.pinned))

    def _repin(self, name: str, owned: Owned) -> list[dict[str, Any]]:
        owned.generation = self.generation
        if isinstance(owned.monitor, QualityMonitor):
            return []
        if name in self.pinned:
            values, ts = self.pinned[name]
            return list(owned.monitor.reset_reference(values, ts))
        owned.monitor = self._new(name)  # unpinned: collect a fresh reference from now on
        return []

    def _route(self, value: bytes) -> tuple[str | None, Any]:
        tag, body = value[:1], value[1:]
        if tag == b"D":
            batch = SubjectBatch.decode(body)
            return (batch.subject if batch.subject in self.subjects else None), batch
        if tag == b"Q":
            q = orjson.loads(body)
            return f"{QUALITY}:{q['feature']}", q
        log.warning("unknown monitor message %r", value[:20])
        return None, None

    def _update(self, owned: Owned, name: str, payload: Any) -> list[dict[str, Any]]:
        if isinstance(owned.monitor, QualityMonitor):
            q = payload
            alerts = owned.monitor.update(q["feature"], q["n"], q["counts"], tuple(q["ts"]))
            for (feature, kind), rate in owned.monitor.rates().items():
                self.metrics.quality_rate.labels(feature, kind).set(rate)
            return alerts
        self.metrics.monitor_values.inc(len(payload.values))
        alerts = owned.monitor.update(payload)
        for detector, (stat, threshold, active) in owned.monitor.statistics().items():
            if stat is not None:
                self.metrics.drift_statistic.labels(name, detector).set(stat)
            self.metrics.drift_threshold.labels(name, detector).set(threshold)
            self.metrics.drift_active.labels(name, detector).set(1.0 if active else 0.0)
        return alerts

    async def _owned(self, name: str, partition: int) -> None:
        restored = await self._restore(name)
        if restored is None:
            monitor = self._new(name)
            if monitor is None:
                return
            restored = Owned(monitor, partition)
        self.owned[name] = restored

    def _new(self, name: str) -> Any:
        m, model = self.settings.monitoring, self.settings.model.name
        if name.startswith(f"{QUALITY}:"):
            return QualityMonitor(m, model)
        if name not in self.subjects:
            return None
        kind, warmup_ms = self.subjects[name]
        detectors = m.numeric_detectors if kind == "numeric" else m.categorical_detectors
        return SubjectMonitor(name, kind, detectors, m, self.family, model, warmup_ms)

    async def _restore(self, name: str) -> Owned | None:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.redis_key(name)))
        if not raw:
            return None
        blob, sig = raw.get(b"state", b""), raw.get(b"sig")
        if not verify(blob, sig, self.key):
            # refused, never unpickled; the monitor starts afresh (a new reference)
            log.error("monitor state %s failed its HMAC check: not loaded, starting afresh",
                      self.redis_key(name))  # fmt: skip
            return None
        owned: Owned = pickle.loads(blob)  # noqa: S301 - verified HMAC above
        owned.dirty = False
        return owned

    async def save(self, force: bool = False) -> int:
        """Persist the changed monitors (every checkpoint_interval, or now with ``force``)."""
        due = time.monotonic() - self._saved_at >= self.settings.monitoring.checkpoint_interval_s
        if not (force or due):
            return 0
        async with self._lock:
            return await self._save()

    async def _save(self) -> int:
        self._saved_at = time.monotonic()
        dirty = {name: o for name, o in self.owned.items() if o.dirty}
        if not dirty:
            return 0
        pipe = self.redis.pipeline(transaction=True)
        for name, owned in dirty.items():
            blob = pickle.dumps(owned)
            pipe.hset(self.redis_key(name), mapping={"state": blob, "sig": sign(blob, self.key)})
        await pipe.execute()
        for owned in dirty.values():  # only once written: a failed save is tried again
            owned.dirty = False
        return len(dirty)

    def keep_only(self, partitions: set[int]) -> None:
        """After a rebalance: drop the monitors of partitions this worker no longer owns (their
        new owner resumes from the state saved at revocation); keep the rest in memory."""
        self.owned = {n: o for n, o in self.owned.items() if o.partition in partitions}
