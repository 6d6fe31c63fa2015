"""The drift and data-quality monitors a worker owns: :class:`MonitorHub`.

Scorers send each subject's values to the monitor topic on the partition its name hashes to
(:func:`monitor_messages`), so each subject's monitor lives on exactly one worker (the owner
of the subject's partition) however many workers score: one firing alert per episode, not
one per worker. The owner keeps each monitor's state in Redis
(:mod:`stream.monitoring.state_store`) with the offset of the last message it applied, so a
restarted or newly assigned owner resumes without counting a message twice.

Durability
----------
The states are saved every ``monitoring.checkpoint_interval`` (and at a revocation or a
shutdown), not after every message: a save pickles every changed monitor. A monitor-topic
offset may therefore be committed only once the messages before it are in a saved state
(:meth:`MonitorHub.durable`): a worker killed between two saves leaves its messages since
the last save to the next owner, which applies them again from that state (alerts they
raised are raised again, with the same ``alert_id``: at-least-once, never lost).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import redis.asyncio as aioredis

from stream.messages import (
    MonitorBatch,
    QualityBatch,
    SubjectBatch,
    SubjectKind,
    decode_monitor_message,
    encode_monitor_batch,
)
from stream.model.online import OnlineModel
from stream.model.snapshots import SnapshotStore
from stream.monitoring.base import Monitor, Reference
from stream.monitoring.drift import SubjectMonitor
from stream.monitoring.quality import DLQ, REJECTED, QualityMonitor, quality_counts
from stream.monitoring.reference import generation_key, load_pinned
from stream.monitoring.state_store import MonitorStateStore, Owned
from stream.monitoring.subjects import (
    PREDICTION_SUBJECTS,
    monitored_subjects,
    subject_columns,
)
from stream.records import BatchResult, ScoredEvent
from stream.service.config import Settings
from stream.service.metrics import Metrics
from stream.service.resilience import Poisoned, describe
from stream.timestamps import now_ms

log = logging.getLogger(__name__)

QUALITY = "quality"

Alert = dict  # the alert dicts of stream.monitoring.alerts.make_alert
Routed = tuple[int, int, str, MonitorBatch]


def family_size(settings: Settings) -> int:
    """How many (subject, detector) pairs share the family-wise false-alarm budget."""
    m = settings.monitoring
    sizes = {"numeric": len(m.numeric_detectors), "categorical": len(m.categorical_detectors)}
    return sum(sizes[kind] for kind, _ in monitored_subjects(settings).values())


def monitor_messages(
    result: BatchResult,
    subjects: dict[str, SubjectKind],
    partitions: Sequence[int] | None = None,
    reference: OnlineModel | None = None,
    route: Callable[[str], int] | None = None,
) -> list[tuple[bytes, bytes]]:
    """(key, value) messages for the monitor topic from one scored batch.

    The subjects' values go as :class:`~stream.messages.SubjectColumns`: with ``route`` (a
    subject's monitor-topic partition, as the producer's partitioner puts its key) one
    message per partition, keyed by one of its subjects, so every subject still reaches the
    worker that owns its partition; without it one message per subject.  The quality
    counts go as one :class:`~stream.messages.QualityBatch` per feature.

    ``partitions``: the events-topic partition of each scored event, sent with the values
    so that the monitors merge the partitions by event time; by default each scored
    event's own ``partition`` where the scorer records one (``None``: arrival order).
    ``reference``: the reference model, once the prediction monitors have pinned one: the
    prediction subjects then carry its outputs on these events (and its version), not the
    served model's (:mod:`stream.monitoring.settling`).
    """
    if partitions is None:
        partitions = _source_partitions(result.scored)
    if reference is None:
        columns = subject_columns(result.scored, subjects, partitions)
    else:
        outputs = {s: k for s, k in subjects.items() if s in PREDICTION_SUBJECTS}
        inputs = {s: k for s, k in subjects.items() if s not in outputs}
        columns = subject_columns(result.scored, inputs, partitions)
        judged = subject_columns(rescored(result.scored, reference), outputs, partitions)
        if columns is not None and judged is not None:
            columns = columns + judged
    out: list[tuple[bytes, bytes]] = []
    if columns is not None:
        groups: dict[object, list[str]] = {}
        for name in columns.subjects:
            groups.setdefault(name if route is None else route(name), []).append(name)
        for names in groups.values():
            out.append((names[0].encode(), columns.select(set(names)).encode()))
    quality: list[QualityBatch] = []
    if result.scored:
        ts = [s.event.ts_ms for s in result.scored]
        span = (min(ts), max(ts))
        for feature, (n, counts) in quality_counts(result.scored).items():
            quality.append(QualityBatch(feature, n, counts, span))
    n_all = len(result.scored) + result.rejected
    if n_all:
        now = now_ms()
        quality.append(QualityBatch(DLQ, n_all, {REJECTED: result.rejected}, (now, now)))
    return out + [(b.subject.encode(), encode_monitor_batch(b)) for b in quality]


def rescored(scored: Sequence[ScoredEvent], model: OnlineModel) -> list[ScoredEvent]:
    """The scored events as ``model`` scores them (the same features, its outputs)."""
    if not scored:
        return []
    outputs = model.predict_many([s.x for s in scored])
    version = model.version
    return [
        ScoredEvent(s.event, s.x, o.prediction, o.proba, o.score, version, s.partition)
        for s, o in zip(scored, outputs, strict=True)
    ]


def _source_partitions(scored: Sequence[ScoredEvent]) -> list[int] | None:
    """The events-topic partition of each scored event, if every one carries it."""
    # getattr: ScoredEvent gains its source partition with the scorer change that sends it
    found = [getattr(s, "partition", None) for s in scored]
    return None if None in found else cast(list[int], found)


def joined(routed: Sequence[Routed]) -> list[tuple[Routed, list[Routed]]]:
    """Each subject's consecutive value batches of one read as one batch, with the messages
    it joins; subjects in the order they first come, each keeping its own order.

    A subject monitor pays per batch as well as per value (its event-time order, warm-up
    and reference bookkeeping, a detector call per check): 2.0 us per value in batches of
    500 values, 2.7 in batches of 95, 5.1 in batches of 24. A monitor topic read holds one
    batch per subject for every scored batch it covers, so a monitor that keeps up with a
    scorer at a few thousand events/s gets small ones unless they are joined.

    Joined, the detectors check at the same values and the alerts carry the same times and
    ids as one message at a time. So a batch joins the one before only if no source
    partition's event times go back between them: a value older than what its partition
    sent before (an event scored again after a crash) is late after one message, behind
    the watermark, and would be in time in a joined batch, whose watermark moves once.
    (One exception: a subject whose event-time order overflows ``monitoring.max_buffered``,
    a partition lagging by that many values, releases its oldest values at other points
    joined than one message at a time, so values right behind such a release may be late
    one way and in time the other.)
    Batches also join only when they come from the same monitor-topic partition and carry
    the same kind and model version, and either all or none name their events' partitions;
    quality counts are applied one by one.

    >>> a = SubjectBatch("x", "numeric", [1.0], [10], 2, [0])
    >>> b = SubjectBatch("x", "numeric", [2.0, 3.0], [11, 12], 2, [1, 0])
    >>> q = QualityBatch("x", 1, {}, (10, 10))
    >>> found = joined([(0, 5, "x", a), (0, 6, "q", q), (0, 6, "x", b)])
    >>> [(r[2], r[1], [o for _, o, _, _ in parts]) for r, parts in found]
    [('x', 6, [5, 6]), ('q', 6, [6])]
    >>> found[0][0][3].values, found[0][0][3].partitions
    ([1.0, 2.0, 3.0], [0, 1, 0])
    >>> again = SubjectBatch("x", "numeric", [1.0], [10], 2, [0])  # partition 0 goes back
    >>> [len(parts) for _, parts in joined([(0, 5, "x", b), (0, 6, "x", again)])]
    [1, 1]
    """
    by_name: dict[str, list[Routed]] = {}
    for item in routed:
        by_name.setdefault(item[2], []).append(item)
    spans = _Spans()
    out: list[tuple[Routed, list[Routed]]] = []
    for items in by_name.values():
        run, highs = [items[0]], spans.highs(items[0][3])
        for item in items[1:]:
            if _joinable(run[-1], item) and spans.after(item[3], highs):
                run.append(item)
            else:
                out.append(_join(run))
                run, highs = [item], spans.highs(item[3])
        out.append(_join(run))
    return out


class _Spans:
    """The oldest and newest event time of each source partition in a batch (per list of
    times: the subjects of one columns message share theirs, so each message's are
    computed once)."""

    def __init__(self) -> None:
        self._found: dict[int, dict[int, tuple[int, int]]] = {}

    def _spans(self, batch: MonitorBatch) -> dict[int, tuple[int, int]]:
        if not isinstance(batch, SubjectBatch) or batch.partitions is None or not batch.ts:
            return {}  # arrival order: nothing is ever late
        key = id(batch.ts)  # the batches are alive until the end: ids are not reused
        found = self._found.get(key)
        if found is None:
            ts, parts = np.asarray(batch.ts), np.asarray(batch.partitions)
            found = {}
            for p in np.unique(parts).tolist():
                mine = ts[parts == p]
                found[p] = (int(mine.min()), int(mine.max()))
            self._found[key] = found
        return found

    def highs(self, batch: MonitorBatch) -> dict[int, int]:
        """The newest event time of each source partition in ``batch``."""
        return {p: high for p, (_, high) in self._spans(batch).items()}

    def after(self, batch: MonitorBatch, highs: dict[int, int]) -> bool:
        """Whether ``batch`` goes back in no partition from ``highs`` (then its own newest
        times are taken into ``highs``)."""
        spans = self._spans(batch)
        if any(low < highs.get(p, low) for p, (low, _) in spans.items()):
            return False
        for p, (_, high) in spans.items():
            highs[p] = max(high, highs.get(p, high))
        return True


def _joinable(a: Routed, b: Routed) -> bool:
    x, y = a[3], b[3]
    return (
        a[0] == b[0]
        and isinstance(x, SubjectBatch)
        and isinstance(y, SubjectBatch)
        and x.kind == y.kind
        and x.model_version == y.model_version
        and (x.partitions is None) == (y.partitions is None)
    )


def _join(run: list[Routed]) -> tuple[Routed, list[Routed]]:
    if len(run) == 1:
        return run[0], run
    batches = cast(list[SubjectBatch], [item[3] for item in run])
    first, last = batches[0], run[-1]
    values: list[Any] = [v for b in batches for v in b.values]
    ts = [t for b in batches for t in b.ts]
    partitions = None
    if first.partitions is not None:
        partitions = [p for b in batches for p in cast(list[int], b.partitions)]
    batch = SubjectBatch(first.subject, first.kind, values, ts, first.model_version, partitions)
    return (last[0], last[1], last[2], batch), run


def _fitted(monitor: SubjectMonitor, seconds: float) -> None:
    ref = monitor.reference
    log.info("%s: reference of %d values (event times %s to %s), detectors calibrated in %.2f s",
             monitor.subject, ref.n, ref.from_ts, ref.to_ts, seconds)  # fmt: skip


@dataclass
class MonitorHub:
    """Routes monitor-topic messages to the subject and quality monitors this worker owns."""

    settings: Settings
    redis: aioredis.Redis
    metrics: Metrics
    key: bytes
    owned: dict[str, Owned] = field(default_factory=dict)
    generation: int = 0
    pinned: dict[str, Reference] = field(default_factory=dict)
    #: the reference model's version the prediction monitors judge by (None: not pinned)
    reference_version: int | None = None
    _saved_at: float = field(default_factory=time.monotonic)
    # monitor-topic partition -> last offset applied; -> next offset whose messages are saved
    _applied: dict[int, int] = field(default_factory=dict)
    _durable: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.subjects = monitored_subjects(self.settings)
        self.family = family_size(self.settings)
        self.store = MonitorStateStore(self.redis, self.settings.redis.prefix, self.key)
        self.snapshots = SnapshotStore.from_settings(self.redis, self.settings)
        # apply (partly in a thread) and save (also from the rebalance signal) never overlap
        self._lock = asyncio.Lock()

    async def apply(
        self, messages: Sequence[tuple[int, int, bytes]], off_loop: bool = True
    ) -> tuple[list[Alert], list[Poisoned]]:
        """Apply (partition, offset, value) messages in order.

        Returns the alerts raised and the messages that could not be applied (each with
        its error; the monitors skip them). All Redis reads come first, so a retry after a
        Redis error applies nothing twice. With ``off_loop`` the detector work runs in a
        thread: fitting a reference takes about 0.3 s per numeric subject (seconds when many
        subjects complete theirs in one batch), and the scoring agent must keep going
        meanwhile.
        """
        async with self._lock:
            await self._follow_pins()
            poisoned: list[Poisoned] = []
            routed: list[Routed] = []
            for partition, offset, value in messages:
                if offset > self._applied.get(partition, -1):
                    self._applied[partition] = offset
                try:
                    batches = decode_monitor_message(value)
                except Exception as exc:  # any decoding error is this message's own
                    poisoned.append(Poisoned((partition, offset, value), describe(exc)))
                    continue
                for batch in batches:
                    if batch.subject in self.subjects or isinstance(batch, QualityBatch):
                        routed.append((partition, offset, batch.subject, batch))
            now = now_ms()
            for partition, _, name, _ in routed:
                if name not in self.owned:
                    self.owned[name] = await self._load(name, partition, now)
            if off_loop:
                alerts = await asyncio.to_thread(self._apply_routed, routed, poisoned, now)
            else:
                alerts = self._apply_routed(routed, poisoned, now)
            alerts += await self._pin_reference()
            return alerts, poisoned

    async def _load(self, name: str, partition: int, now: int) -> Owned:
        owned = await self.store.load(name)
        if owned is None:
            return Owned(self._new(name), partition)
        if isinstance(owned.monitor, SubjectMonitor):
            # silent while no one owned the monitor, not idle: every partition gets its time
            owned.monitor.order.resume(now)
        return owned

    def _apply_routed(
        self, routed: Sequence[Routed], poisoned: list[Poisoned], now: int
    ) -> list[Alert]:
        alerts: list[Alert] = []
        # the gauges of each monitor once, after its last batch here (a reading per
        # (subject, detector) after every batch was a twentieth of the monitors' CPU)
        touched: dict[str, Monitor] = {}
        fresh = [r for r in routed if r[1] > self.owned[r[2]].offset]  # not applied before
        for (partition, offset, name, batch), parts in joined(fresh):
            owned = self.owned[name]
            try:
                if owned.generation != self.generation:
                    owned.generation = self.generation
                    alerts.extend(owned.monitor.repin(self.pinned.get(name)))
                monitor = owned.monitor
                if self._follows(name, monitor):
                    alerts.extend(cast(SubjectMonitor, monitor).follow(self.reference_version))
                if isinstance(monitor, SubjectMonitor) and isinstance(batch, SubjectBatch):
                    fitted, started = monitor.phase == "fitted", time.perf_counter()
                    alerts.extend(monitor.update(batch, now))
                    if not fitted and monitor.phase == "fitted":
                        _fitted(monitor, time.perf_counter() - started)
                else:
                    alerts.extend(monitor.apply(batch))
                if isinstance(batch, SubjectBatch):
                    self.metrics.monitor_values.inc(len(batch.values))
            except Exception as exc:  # a batch the monitor cannot take: skip it, say so
                log.exception("monitor %s: messages at %d/%s skipped", name, partition,
                              ",".join(str(o) for _, o, _, _ in parts))  # fmt: skip
                poisoned.extend(Poisoned((p, o, encode_monitor_batch(b)), describe(exc))
                                for p, o, _, b in parts)  # fmt: skip
            owned.offset, owned.dirty = offset, True
            touched[name] = owned.monitor
        for name, monitor in touched.items():
            try:
                self._export(monitor)
            except Exception:  # the gauges only: the batches are applied, say so
                log.exception("monitor %s: its gauges could not be exported", name)
        return alerts

    async def flush(self, now: int | None = None) -> list[Alert]:
        """Release the values the event-time order holds for partitions that went idle.

        A subject's values wait for every active partition; once every partition is silent
        (the end of a stream, a pause) no message comes to release them. Called every second
        or so by the monitor consumer; a monitor whose buffers are empty costs nothing.
        """
        async with self._lock:
            now = now_ms() if now is None else now
            held = [
                o for o in self.owned.values()
                if isinstance(o.monitor, SubjectMonitor) and o.monitor.order.buffered
            ]  # fmt: skip
            if not held:
                return []
            return await asyncio.to_thread(self._flush, held, now)

    def _flush(self, held: Sequence[Owned], now: int) -> list[Alert]:
        alerts: list[Alert] = []
        for owned in held:
            monitor = cast(SubjectMonitor, owned.monitor)
            try:
                alerts.extend(monitor.flush(now))
            except Exception:  # as a skipped batch: the monitor keeps its state, say so
                log.exception("monitor %s: idle flush failed", monitor.subject)
            owned.dirty = True
            self._export(monitor)
        return alerts

    def durable(self, partition: int) -> int | None:
        """The offset of the monitor topic's ``partition`` up to which every message this
        worker applied is in a saved state (``None``: none yet): the most it may commit."""
        return self._durable.get(partition)

    def _export(self, monitor: Monitor) -> None:
        for reading in monitor.readings():
            getattr(self.metrics, reading.gauge).labels(*reading.labels).set(reading.value)

    def _follows(self, name: str, monitor: Monitor) -> bool:
        """Whether a monitor judges the reference model's outputs: a prediction subject's,
        unless an operator pinned its reference values."""
        return (
            name in PREDICTION_SUBJECTS
            and name not in self.pinned
            and isinstance(monitor, SubjectMonitor)
        )

    async def _pin_reference(self) -> list[Alert]:
        """Pin the reference model a prediction monitor asked for once settled (or adopt
        the one another monitor pinned first), and make every prediction monitor follow it.

        A failure leaves the request standing for the next batch (nothing is lost)."""
        monitors = [
            cast(SubjectMonitor, o.monitor) for name, o in self.owned.items()
            if self._follows(name, o.monitor)
        ]  # fmt: skip
        wanted = [m.pin_wanted for m in monitors if m.pin_wanted is not None]
        if not wanted:
            return []
        try:
            version = await self.snapshots.pin_reference(max(wanted))
        except Exception as exc:
            log.warning("prediction monitors: could not pin the reference model (%s); trying "
                        "again with the next batch", describe(exc))  # fmt: skip
            return []
        log.info("model %s: version %d is the reference model of the prediction monitors",
                 self.settings.model.name, version)  # fmt: skip
        self.reference_version = version
        alerts: list[Alert] = []
        for name, owned in self.owned.items():
            if self._follows(name, owned.monitor):
                alerts.extend(cast(SubjectMonitor, owned.monitor).follow(version))
                owned.dirty = True
        return alerts

    async def _follow_pins(self) -> None:
        """One round trip per batch: pick up references pinned or unpinned with the CLI,
        and the reference model's version."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(generation_key(self.settings.redis.prefix))
            pipe.hget(self.snapshots.reference_key, "version")
            raw, reference = await pipe.execute()
        self.reference_version = None if reference is None else int(reference)
        generation = int(raw or 0)
        if generation != self.generation:
            pinned = await load_pinned(self.redis, self.settings.redis.prefix)
            self.pinned = {name: Reference(v, ts) for name, (v, ts) in pinned.items()}
            self.generation = generation
            log.info("reference generation %d: %d pinned subjects", generation, len(self.pinned))

    def _new(self, name: str) -> Monitor:
        m, model = self.settings.monitoring, self.settings.model.name
        if name.startswith(f"{QUALITY}:"):
            return QualityMonitor(m, model)
        kind, warmup_ms = self.subjects[name]
        detectors = m.numeric_detectors if kind == "numeric" else m.categorical_detectors
        partitions = self.settings.topics.partitions
        return SubjectMonitor(name, kind, detectors, m, self.family, model, warmup_ms, partitions)

    async def save(self, force: bool = False) -> int:
        """Persist the changed monitors (every checkpoint_interval, or now with ``force``)."""
        due = time.monotonic() - self._saved_at >= self.settings.monitoring.checkpoint_interval_s
        if not (force or due):
            return 0
        async with self._lock:
            self._saved_at = time.monotonic()
            applied = dict(self._applied)  # no message is applied while the lock is held
            dirty = {name: o for name, o in self.owned.items() if o.dirty}
            await self.store.save(dirty)
            self._durable.update({p: offset + 1 for p, offset in applied.items()})
            return len(dirty)

    def keep_only(self, partitions: set[int]) -> None:
        """After a rebalance: drop the monitors of partitions this worker no longer owns (their
        new owner resumes from the state saved at revocation); keep the rest in memory."""
        self.owned = {n: o for n, o in self.owned.items() if o.partition in partitions}
        self._applied = {p: o for p, o in self._applied.items() if p in partitions}
        self._durable = {p: o for p, o in self._durable.items() if p in partitions}
