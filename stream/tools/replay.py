"""``driftwatch replay``: an event-time range of the events and labels topics run again
through the workers' validation, feature windows, scoring and label join, into other topics.

Range rule, for ``[FROM, TO)``
    An event is in the range when its ``ts`` is; an event without a readable ``ts`` (it is
    dead-lettered) when its record timestamp is. A label is read when its time (its ``ts``,
    else its record timestamp) lies in ``[FROM, TO + labels.horizon)``: a label later than
    the horizon would not have joined live either; one whose event is out of the range
    finds no prediction and joins nothing. Both topics are read from the first record
    stamped at or after ``FROM`` (``offsets_for_times``: records are stamped when produced,
    not before their event) up to their end offsets when the replay starts, so it ends.
Order
    Records are processed in record-timestamp order across every partition of both topics
    (the order the workers received them; events first on a tie), in batches of
    ``worker.batch_size``, holding a few batches per partition at most.
Model
    ``--model`` (default: the champion of the lineup, else of the configuration). A fresh
    model of its settings scores each batch and then learns the training examples the
    batch produced, in label-arrival order, through the live trainer's guard: progressive
    validation, as the live learner with no publication lag. With ``--version N`` that
    stored version scores everything, frozen.
State and outputs
    Redis keys under ``{prefix}:replay:{run id}`` (``--prefix``), deleted at the end unless
    ``--keep-state``; predictions and dead letters to ``{topic}.replay`` (``--suffix``).
    Live keys are only read (the lineup, a stored version) and live topics never written.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from array import array
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeAlias, TypeVar

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord, TopicPartition

from stream.exceptions import DriftwatchError, RejectedInput
from stream.ingest.scoring import EventProcessor, LabelProcessor
from stream.messages import TrainingExample
from stream.model.lineup import Lineup, champion_of
from stream.model.online import OnlineModel, Task, coerce_label, create_model
from stream.model.snapshots import SnapshotStore
from stream.model.trainer import Trainer
from stream.monitoring.performance_metrics import compute_metrics, monitored_metrics
from stream.records import Incoming
from stream.service.config import ModelSettings, Settings
from stream.service.kafka_security import client_options
from stream.service.metrics import Metrics
from stream.service.publish import new_producer, publish
from stream.service.redis_client import redis_client
from stream.service.topics import partitions_of
from stream.service.units import parse_instant
from stream.timestamps import to_epoch_ms
from stream.tools.demo import Progress

STALL_S = 60.0  # no record and no partition finished for this long: the broker is gone
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # Kafka topic characters
_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]+$")  # as RedisSettings.prefix
K = TypeVar("K")
T = TypeVar("T")
Record: TypeAlias = ConsumerRecord[bytes, bytes]


@dataclass(frozen=True)
class ReplayOptions:
    start_ms: int
    end_ms: int
    prefix: str  # of the replay's Redis keys
    suffix: str  # of the output topics
    model: str | None = None
    version: int | None = None
    keep_state: bool = False


def replay_options(
    settings: Settings, start: str, end: str, *, prefix: str | None = None,
    suffix: str = ".replay", model: str | None = None, version: int | None = None,
    keep_state: bool = False,
) -> ReplayOptions:  # fmt: skip
    """The command's arguments, checked; ``ValueError`` names the wrong option.

    >>> o = replay_options(Settings(), "2026-01-01T00:00:00Z", "1767225660000")
    >>> o.end_ms - o.start_ms, o.prefix.startswith("dw:replay:"), o.suffix
    (60000, True, '.replay')
    """
    try:
        lo, hi = parse_instant(start), parse_instant(end)
    except ValueError as exc:
        raise ValueError(f"--from/--to: {exc}") from None
    if lo >= hi:
        raise ValueError(f"--from {start} must be before --to {end}")
    live = settings.redis.prefix
    prefix = prefix or f"{live}:replay:{uuid.uuid4().hex[:8]}"
    inside = prefix.startswith(f"{live}:") and not prefix.startswith(f"{live}:replay:")
    if not _PREFIX.match(prefix) or prefix == live or inside or live.startswith(f"{prefix}:"):
        raise ValueError(
            f"--prefix {prefix!r}: expected letters, digits and _.:- outside the live "
            f"prefix {live!r}'s keys (e.g. {live}:replay:NAME)"
        )
    taken = {*settings.topics.names, settings.topics.shadow}
    if not _NAME.match(suffix) or taken & set(output_topics(settings, suffix)):
        raise ValueError(f"--suffix {suffix!r}: expected letters, digits and ._- naming new topics")
    return ReplayOptions(lo, hi, prefix, suffix, model, version, keep_state)


def output_topics(settings: Settings, suffix: str) -> tuple[str, str]:
    """The replay's predictions and dead-letter topics."""
    return settings.topics.predictions + suffix, settings.topics.dlq + suffix


def time_of(value: bytes | None, record_ts: int) -> int:
    """A message's time: its JSON ``ts``, else (absent, unreadable) the record's timestamp.

    >>> time_of(b'{"ts": "2026-01-01T00:00:00Z"}', 5), time_of(b"{not json", 5)
    (1767225600000, 5)
    """
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return to_epoch_ms(orjson.loads(value or b"").get("ts"))
    return record_ts


def in_range(
    event: bool, value: bytes | None, record_ts: int, options: ReplayOptions, horizon_ms: int
) -> bool:
    """The range rule (module docstring): is this event in the range, this label in its window?

    >>> o = replay_options(Settings(), "1000", "2000")
    >>> in_range(True, b'{"ts": 1000}', 5000, o, 600), in_range(True, b'{"ts": 2000}', 5, o, 600)
    (True, False)
    >>> in_range(False, b'{"event_id": "e1", "label": 1}', 2500, o, 600)
    True
    """
    end = options.end_ms + (0 if event else horizon_ms)
    return options.start_ms <= time_of(value, record_ts) < end


class ArrivalOrder(Generic[K, T]):
    """Items of several sources, each in its own order, merged by timestamp (k-way).

    An item goes out only while every open source has one buffered (the next one of an
    empty source could be older); a tie goes to the source listed first.

    >>> order = ArrivalOrder(["events", "labels"])
    >>> order.add("events", [(1, "e1"), (5, "e5")]), order.add("labels", [(3, "l3")])
    (None, None)
    >>> order.release(10), order.close("labels"), order.release(10), order.finished
    (['e1', 'l3'], None, ['e5'], False)
    """

    def __init__(self, sources: Iterable[K]) -> None:
        self.sources = list(sources)
        self._reset()

    def _reset(self) -> None:
        self._buffers: dict[K, deque[tuple[int, T]]] = {s: deque() for s in self.sources}
        self.open = set(self.sources)

    def add(self, source: K, items: Iterable[tuple[int, T]]) -> None:
        self._buffers[source].extend(items)

    def close(self, source: K) -> None:
        """``source`` has nothing more to add."""
        self.open.discard(source)

    def buffered(self, source: K) -> int:
        return len(self._buffers[source])

    @property
    def blocked(self) -> bool:
        return any(not self._buffers[s] for s in self.open)

    @property
    def finished(self) -> bool:
        return not self.open and not any(self._buffers.values())

    def release(self, limit: int) -> list[T]:
        out: list[T] = []
        while len(out) < limit and not self.blocked:
            ready = [b for b in self._buffers.values() if b]
            if not ready:
                break
            out.append(min(ready, key=lambda b: b[0][0]).popleft()[1])
        return out


class RangeMetrics:
    """Label, prediction and score of every joined example, and the task's metrics over all
    of them (24 bytes an example; a multiclass label and prediction as strings)."""

    def __init__(self, task: Task, names: Sequence[str]) -> None:
        self.task, self.names = task, names
        self.ys: Any = [] if task == "multiclass" else array("d")
        self.preds: Any = [] if task == "multiclass" else array("d")
        self.scores = array("d")

    def add(self, examples: Iterable[TrainingExample]) -> None:
        value: Callable[[Any], Any] = str if self.task == "multiclass" else float
        for x in examples:
            with contextlib.suppress(RejectedInput):  # a label the trainer refuses too
                self.ys.append(value(coerce_label(x.y, self.task)))
                self.preds.append(value(x.prediction))
                self.scores.append(x.score)

    def values(self) -> tuple[dict[str, float], dict[str, float]]:
        """The metrics and their standard errors (none without examples)."""
        if not self.scores:
            return {}, {}
        # compute_metrics reads the arrays through numpy
        return compute_metrics(self.task, self.names, self.ys, self.preds, list(self.scores))


class Replay:
    """One replay run: its settings, processors, model, producer and counts."""

    def __init__(
        self, settings: Settings, options: ReplayOptions, redis: aioredis.Redis,
        spec: ModelSettings, frozen: OnlineModel | None,
    ) -> None:  # fmt: skip
        predictions, dlq = output_topics(settings, options.suffix)
        topics = settings.topics.model_copy(update={"predictions": predictions, "dlq": dlq})
        prefixed = settings.redis.model_copy(update={"prefix": options.prefix})
        s = self.settings = settings.for_model(spec).model_copy(
            update={"topics": topics, "redis": prefixed}
        )
        self.options = options
        metrics = Metrics()
        self.model = frozen or create_model(spec, s.features)
        self.trainer = (
            None if frozen else Trainer(s, SnapshotStore.from_settings(redis, s), metrics)
        )
        if self.trainer is not None:
            self.trainer.model = self.model  # learns in memory, never saved
        self.events = EventProcessor(s, redis, lambda: self.model, metrics)
        self.labels = LabelProcessor(s, redis, metrics)
        names = monitored_metrics(spec.task, settings.monitoring.performance_metrics)
        self.metrics = RangeMetrics(spec.task, names)
        self.counts: Counter[str] = Counter()
        self.producer = new_producer(settings)
        self._horizon_ms = round(settings.labels.horizon_s * 1000)
        self._offset = 0  # the examples' order, as offsets for the trainer's guard

    def keep(self, r: Record) -> bool:
        """The range rule for one record; counts what was read."""
        kind = "events" if r.topic == self.settings.topics.events else "labels"
        ok = in_range(kind == "events", r.value, r.timestamp, self.options, self._horizon_ms)
        self.counts.update({f"{kind}_read": 1, f"{kind}_kept": ok})
        return ok

    async def process(self, records: Sequence[Record]) -> None:
        """One batch as a worker takes it: its events, then its labels (each in record-time
        order); the outputs published, then the training examples learned in that order."""
        topic = self.settings.topics.events
        incoming = [(r.topic == topic, Incoming(r.topic, r.partition, r.offset, r.key, r.value))
                    for r in records]  # fmt: skip
        result = await self.events.process([m for is_event, m in incoming if is_event])
        joined, dlq = await self.labels.process([m for is_event, m in incoming if not is_event])
        self.counts.update(scored=len(result.scored), events_dead=result.rejected,
                           labels_dead=len(dlq))  # fmt: skip
        self.counts["refused"] += len(await publish(self.producer, [*result.outgoing, *dlq]))
        self._learn([*result.examples, *joined])

    def _learn(self, examples: Sequence[TrainingExample]) -> None:
        self.counts["joined"] += len(examples)
        self.metrics.add(examples)
        if self.trainer is None or not examples:
            return
        learned = self.trainer.learn_batch([(self._offset + i, x) for i, x in enumerate(examples)])
        self._offset += len(examples)
        self.counts.update(learned=learned.learned, skipped=len(learned.skipped))

    async def read_all(self) -> None:
        """Read the range of both topics and process it, batch by batch."""
        s = self.settings
        tps = await _prepare_topics(s, [s.topics.events, s.topics.labels])
        consumer = AIOKafkaConsumer(
            **client_options(s), group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest",
        )  # fmt: skip
        await consumer.start()
        try:
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            found = await consumer.offsets_for_times({tp: self.options.start_ms for tp in tps})
            starts = {tp: ends[tp] if found.get(tp) is None else found[tp].offset for tp in tps}
            for tp in tps:
                consumer.seek(tp, starts[tp])
            total = sum(ends[tp] - starts[tp] for tp in tps if tp.topic == s.topics.events)
            progress = Progress(max(total, 1))
            async for batch in self._batches(consumer, {tp: ends[tp] for tp in tps}):
                await self.process(batch)
                progress.update(self.counts["events_read"])
            progress.done()
        finally:
            await consumer.stop()

    async def _batches(
        self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]
    ) -> AsyncIterator[list[Record]]:
        size = self.settings.worker.batch_size
        order: ArrivalOrder[TopicPartition, Record] = ArrivalOrder(ends)  # events listed first
        moved = time.monotonic()
        await self._close_finished(consumer, order, ends)
        while not order.finished:
            if order.blocked:
                fetched = await consumer.getmany(timeout_ms=500, max_records=size)
                for tp, records in fetched.items():
                    order.add(tp, [(r.timestamp, r) for r in records
                                   if r.offset < ends[tp] and self.keep(r)])  # fmt: skip
                if await self._close_finished(consumer, order, ends) or fetched:
                    moved = time.monotonic()
                elif time.monotonic() - moved > STALL_S:
                    raise DriftwatchError(f"no records from the broker for {STALL_S:.0f} s")
                for tp in order.open:  # bounded memory: a few batches per partition
                    if order.buffered(tp) >= 4 * size:
                        consumer.pause(tp)
                    else:
                        consumer.resume(tp)
            batch = order.release(size)
            if batch:
                yield batch

    async def _close_finished(
        self, consumer: AIOKafkaConsumer, order: ArrivalOrder[Any, Record], ends: dict[Any, int]
    ) -> bool:
        """Close (and stop fetching) the partitions read up to their end offsets."""
        finished = [tp for tp in list(order.open) if await consumer.position(tp) >= ends[tp]]
        for tp in finished:
            order.close(tp)
            consumer.pause(tp)
        return bool(finished)

    def summary(self, deleted: int | None) -> list[str]:
        o, c, s, model = self.options, self.counts, self.settings, self.model
        how = f"version {model.version}, frozen"
        if self.trainer is not None:
            how = f"fresh, learned {c['learned']} examples in label-arrival order"
            how += f" ({c['skipped']} refused by the trainer's guard)" if c["skipped"] else ""
        values, ses = self.metrics.values()
        shown = ", ".join(f"{m} {v:.4f} (SE {ses[m]:.4f})" for m, v in values.items()) or "-"
        return [
            f"replayed [{_iso(o.start_ms)}, {_iso(o.end_ms)}) of {s.topics.events} and "
            f"{s.topics.labels}",
            f"model: {model.name} ({model.pipeline}), {how}",
            f"events: {c['events_read']} read, {c['events_kept']} in range, {c['scored']} "
            f"scored, {c['events_dead']} dead-lettered",
            f"labels: {c['labels_read']} read, {c['labels_kept']} in window, {c['joined']} "
            f"joined, {c['labels_dead']} dead-lettered",
            f"metrics over {len(self.metrics.scores)} labelled events: {shown}",
            f"outputs: predictions -> {s.topics.predictions}, dead letters -> {s.topics.dlq}"
            + (f" ({c['refused']} refused by the broker)" if c["refused"] else ""),
            "state: "
            + (f"kept under {o.prefix}:*" if deleted is None else f"{deleted} keys deleted"),
        ]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


async def run_replay(settings: Settings, options: ReplayOptions) -> list[str]:
    """Replay the range (module docstring); the summary's lines."""
    redis = redis_client(settings)
    try:
        spec = await _model_spec(redis, settings, options.model)
        frozen = None
        if options.version is not None:
            store = SnapshotStore.from_settings(redis, settings.for_model(spec))
            frozen = (await store.load_version(options.version))[0]
        cursor = None
        while cursor != 0:  # never mix with (nor delete) what another run kept
            cursor, keys = await redis.scan(cursor or 0, match=f"{options.prefix}:*", count=1000)
            if keys:
                raise DriftwatchError(f"--prefix {options.prefix}: keys exist there already")
        replay = Replay(settings, options, redis, spec, frozen)
        try:
            try:
                await replay.producer.start()
                await replay.read_all()
            finally:
                await replay.producer.stop()
        finally:
            deleted = None if options.keep_state else await delete_keys(redis, options.prefix)
        return replay.summary(deleted)
    finally:
        await redis.aclose()


async def _model_spec(redis: aioredis.Redis, settings: Settings, name: str | None) -> ModelSettings:
    """The settings of model ``name`` in the lineup, else in the configuration; ``None``:
    the champion's."""
    entries = await Lineup(redis, settings.redis.prefix).entries()
    if name is None:
        champion = champion_of(entries)
        return settings.model if champion is None else champion.spec
    if name in entries:
        return entries[name].spec
    try:
        return settings.model_named(name)
    except KeyError:
        known = sorted({*entries, *(m.name for m in settings.models)})
        raise DriftwatchError(f"--model {name!r}: no such model; expected one of {known}") from None


async def _prepare_topics(settings: Settings, inputs: Sequence[str]) -> list[TopicPartition]:
    """The input topics' partitions; creates the missing output topics."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        parts = await partitions_of(settings, inputs)
        existing = set(await admin.list_topics())
        outputs = [settings.topics.predictions, settings.topics.dlq]
        new = [NewTopic(n, settings.topics.partitions, 1) for n in outputs if n not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another replay won the race
                await admin.create_topics(new)
        return [TopicPartition(name, p) for name in inputs for p in parts[name]]
    finally:
        await admin.close()


async def delete_keys(redis: aioredis.Redis, prefix: str, chunk: int = 500) -> int:
    """UNLINK every key under ``{prefix}:``, ``chunk`` at a time; how many there were."""
    deleted, keys = 0, []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        keys.append(key)
        if len(keys) >= chunk:
            deleted += await redis.unlink(*keys)
            keys = []
    if keys:
        deleted += await redis.unlink(*keys)
    return deleted
