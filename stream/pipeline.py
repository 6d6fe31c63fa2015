"""One batch of events through validate → feature windows → scoring → outputs.

The agents hand plain messages in and get plain outgoing messages back; Redis is touched
twice per batch (one read pipeline, one write pipeline) whatever the batch size.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from stream.config import Settings
from stream.exceptions import RejectedInput
from stream.feature_store import FeatureStore
from stream.features import BatchUpdate, FeatureInput
from stream.labels import PendingPrediction, TrainingExample, example_from, join_labels
from stream.messages import Label, dead_letter, now_ms
from stream.metrics import Metrics
from stream.model import OnlineModel
from stream.prediction_store import PredictionStore
from stream.redis_batch import BatchWriter, write_script
from stream.validation import Limits, ValidEvent, validate_event, validate_label


@dataclass(frozen=True)
class Incoming:
    """A consumed Kafka record, as the agents see it."""

    topic: str
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class ScoredEvent:
    """What the monitors see of one scored event."""

    event: ValidEvent
    x: dict[str, float | str]
    prediction: int | float | str | None
    proba: dict[str, float] | None
    score: float
    model_version: int


@dataclass
class BatchResult:
    outgoing: list[Outgoing]
    scored: list[ScoredEvent]
    examples: list[TrainingExample]
    rejected: int


def train_topic_name(settings: Settings) -> str:
    """The single-partition topic that serialises learning for one model."""
    return f"{settings.worker.app_id}-train-{settings.model.name}"


class EventProcessor:
    """Turns a batch of event messages into predictions, dead letters and training examples."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        model: Callable[[], OnlineModel],
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.model = model
        self.metrics = metrics
        self.features = FeatureStore(redis, settings)
        self.predictions = PredictionStore(redis, settings.redis.prefix, settings.labels.horizon_s)
        self.limits = Limits(settings.worker.max_payload_bytes, settings.worker.max_fields)
        self._write_script = write_script(redis)

    async def process(self, batch: Sequence[Incoming]) -> BatchResult:
        self.metrics.events_received.inc(len(batch))
        self.metrics.batch_size.observe(len(batch))
        valid, outgoing = self._validate(batch)
        if not valid:
            return BatchResult(outgoing, [], [], len(outgoing))
        inputs = [_feature_input(ev) for ev in valid]
        t0 = time.perf_counter()
        loaded = await self.features.load(inputs)
        t1 = time.perf_counter()
        self.metrics.redis_seconds.labels("read").observe(t1 - t0)
        update = self.features.update(loaded, inputs)
        scored, pending = self._score(valid, [r.enriched for r in update.results])
        t2 = time.perf_counter()
        self.metrics.batch_seconds.labels("features_and_scoring").observe(t2 - t1)
        writes = BatchWriter(self.redis, self._write_script)
        self.features.stage(writes, update)
        # one round trip, two atomic scripts: states with their dedupe markers; predictions
        # stored, or joined to a label that overtook its event
        pipe = self.redis.pipeline(transaction=False)
        await writes.queue(pipe)
        # an event that carries its label is learned now: nothing waits for a label
        waiting = [p for ev, p in zip(valid, pending, strict=True) if ev.label is None]
        has_preds = await self.predictions.stage(pipe, waiting)
        replies = await pipe.execute()
        claimed = self.predictions.claimed(replies[-1], waiting) if has_preds else []
        self.metrics.redis_seconds.labels("write").observe(time.perf_counter() - t2)
        self._count(valid, update)
        outgoing.extend(self._predictions(scored))
        examples = [
            example_from(p, ev.label, ev.ts_ms)
            for ev, p in zip(valid, pending, strict=True)
            if ev.label is not None
        ]
        now = now_ms()
        for pred, label in claimed:
            examples.append(example_from(pred, label.label, label.ts or now))
            self.metrics.label_lag.observe(examples[-1].lag_s)
        self.metrics.labels_joined.inc(len(claimed))
        return BatchResult(outgoing, scored, examples, len(batch) - len(valid))

    def _validate(self, batch: Sequence[Incoming]) -> tuple[list[ValidEvent], list[Outgoing]]:
        valid: list[ValidEvent] = []
        dlq: list[Outgoing] = []
        specs = self.settings.features
        for msg in batch:
            try:
                valid.append(validate_event(msg.value, specs, self.limits))
            except RejectedInput as exc:
                dlq.append(reject(self.settings, self.metrics, msg, exc))
        return valid, dlq

    def _score(
        self, valid: Sequence[ValidEvent], enriched: Sequence[dict[str, float]]
    ) -> tuple[list[ScoredEvent], list[PendingPrediction]]:
        model = self.model()
        scored: list[ScoredEvent] = []
        pending: list[PendingPrediction] = []
        processed = now_ms()
        for ev, extra in zip(valid, enriched, strict=True):
            x: dict[str, float | str] = {**ev.values, **extra}
            out = model.predict(x)
            scored.append(ScoredEvent(ev, x, out.prediction, out.proba, out.score, model.version))
            pending.append(
                PendingPrediction(
                    ev.event_id,
                    ev.entity_id,
                    ev.ts_ms,
                    x,
                    model.version,
                    out.prediction,
                    out.score,
                    processed,
                )
            )
        return scored, pending

    def _predictions(self, scored: Sequence[ScoredEvent]) -> list[Outgoing]:
        model = self.model()
        topic = self.settings.topics.predictions
        processed = now_ms()
        out = []
        for s in scored:
            value = orjson.dumps(
                {
                    "event_id": s.event.event_id,
                    "entity_id": s.event.entity_id,
                    "ts": s.event.ts_ms,
                    "model": model.name,
                    "model_version": s.model_version,
                    "prediction": s.prediction,
                    "proba": s.proba,
                    "score": s.score,
                    "features": s.x,
                    "processed_at": processed,
                }
            )
            out.append(Outgoing(topic, s.event.entity_id.encode(), value))
        return out

    def _count(self, valid: Sequence[ValidEvent], update: BatchUpdate) -> None:
        m = self.metrics
        m.events_accepted.inc(len(valid))
        issues = Counter((issue.feature, issue.kind) for ev in valid for issue in ev.quality)
        for (feature, kind), n in issues.items():  # one label lookup per kind, not per issue
            m.data_quality.labels(feature, kind).inc(n)
        m.events_duplicate.inc(update.duplicate_count)
        m.events_late.inc(update.late_count)


def reject(settings: Settings, metrics: Metrics, msg: Incoming, exc: RejectedInput) -> Outgoing:
    """The dead letter for a rejected input message, counted by topic, stage and code."""
    metrics.events_rejected.labels(msg.topic, exc.stage, exc.code).inc()
    value = dead_letter(
        exc.reason, exc.stage, msg.topic, msg.partition, msg.offset, msg.key, msg.value or b"",
        now_ms(),
    )  # fmt: skip
    return Outgoing(settings.topics.dlq, msg.key, value)


def _feature_input(ev: ValidEvent) -> FeatureInput:
    values = {
        k: (None if k in ev.missing else float(v))
        for k, v in ev.values.items()
        if not isinstance(v, str)
    }
    return FeatureInput(ev.event_id, ev.entity_id, ev.ts_ms, values)


class LabelProcessor:
    """Joins label messages to the stored predictions; returns training examples."""

    def __init__(self, settings: Settings, redis: aioredis.Redis, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.predictions = PredictionStore(redis, settings.redis.prefix, settings.labels.horizon_s)
        self.limits = Limits(settings.worker.max_payload_bytes, settings.worker.max_fields)

    async def process(
        self, batch: Sequence[Incoming]
    ) -> tuple[list[TrainingExample], list[Outgoing]]:
        self.metrics.labels_received.inc(len(batch))
        labels: list[Label] = []
        dlq: list[Outgoing] = []
        for msg in batch:
            try:
                labels.append(validate_label(msg.value, self.limits))
            except RejectedInput as exc:
                dlq.append(reject(self.settings, self.metrics, msg, exc))
        t0 = time.perf_counter()
        pending = await self.predictions.take(labels)
        self.metrics.redis_seconds.labels("label_join").observe(time.perf_counter() - t0)
        joined = join_labels(labels, pending, now_ms())
        self.metrics.labels_joined.inc(len(joined.examples))
        self.metrics.labels_unmatched.inc(len(joined.unmatched))
        for ex in joined.examples:
            self.metrics.label_lag.observe(ex.lag_s)
        return joined.examples, dlq
