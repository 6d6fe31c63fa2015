"""One batch of events through validate → feature windows → scoring → outputs.

The agents hand plain messages in and get plain outgoing messages back. Redis is touched
three times per batch whatever its size: the feature store's read and conditional write
(:meth:`stream.features.store.FeatureStore.enrich`; a conflicting entity costs one more
round trip) and one atomic script that stores the predictions for the label join.

A processor may be called again on (part of) a batch whose earlier call failed (a retry
after an outage, or the isolation of a poison message, :mod:`stream.service.resilience`): feature
updates are idempotent on event id, and metrics are counted only after the last I/O.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence

import orjson
import redis.asyncio as aioredis

from stream.exceptions import RejectedInput
from stream.features.store import Applied, FeatureStore
from stream.features.windows import EventResult, FeatureInput
from stream.ingest.validation import FeatureChecks, Limits, validate_event, validate_label
from stream.labels.join import PendingPrediction, example_from, join_labels
from stream.labels.store import PredictionStore, StoreInFlight
from stream.messages import (
    Label,
    Outputs,
    TrainingExample,
    dead_letter,
    dead_letter_key,
    encode_prediction,
)
from stream.model.online import OnlineModel
from stream.model.served import arm_of
from stream.records import BatchResult, Incoming, Outgoing, ScoredEvent, ValidEvent
from stream.service.config import Settings
from stream.service.metrics import Metrics
from stream.timestamps import now_ms

Rejected = tuple[Incoming, RejectedInput]
Scored = tuple[list[ScoredEvent], list[PendingPrediction], list[Rejected], list[Outgoing]]


class EventProcessor:
    """Turns a batch of event messages into predictions, dead letters and training examples."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        model: Callable[[], OnlineModel],
        metrics: Metrics,
        shadows: Callable[[], Sequence[OnlineModel]] = list,
        arms: Callable[[], Sequence[tuple[float, float, str]]] = list,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.model = model
        self.shadows = shadows
        self.arms = arms
        self.metrics = metrics
        self.features = FeatureStore(redis, settings)
        self.predictions = PredictionStore(
            redis, settings.redis.prefix, settings.labels.horizon_s, settings.windows.dedupe_ttl_s
        )
        self.limits = Limits.from_settings(settings.worker)
        self.checks = FeatureChecks(settings.features)

    async def process(self, batch: Sequence[Incoming]) -> BatchResult:
        """Validate, enrich, score and store a batch; the outputs to publish."""
        valid, rejects = self._validate(batch, now_ms())
        if not valid:
            return BatchResult(self._dead_letters(rejects), [], [], len(rejects))
        # the served model is read once: a promotion during the batch's awaits must not
        # name one model with the other's version
        models = [self.model(), *self.shadows()]
        early: list[Scored] = []

        def score(results: Sequence[EventResult]) -> None:  # while Redis writes the windows
            early.append(self._score(models, valid, results))

        t0 = time.perf_counter()
        applied = await self.features.enrich([_feature_input(ev) for _, ev in valid], score)
        self.metrics.redis_seconds.labels("features").observe(time.perf_counter() - t0)
        # an entity another writer had changed was re-applied: its events score again
        rescore = applied.conflicts or not early
        scored, pending, unscorable, shadow = (
            self._score(models, valid, applied.results) if rescore else early[0]
        )
        self.metrics.batch_seconds.labels("features_and_scoring").observe(time.perf_counter() - t0)
        messages = self._predictions(scored, pending)
        rejects += unscorable
        # an event that carries its label is learned now: nothing waits for a label
        examples = [
            example_from(p, s.event.label, s.event.ts_ms)
            for s, p in zip(scored, pending, strict=True)
            if s.event.label is not None
        ]
        self._count(len(valid), scored, applied)
        for name, n in Counter(name for p in pending for name in p.shadow).items():
            self.metrics.shadow_predictions.labels(name).inc(n)
        outgoing = [*self._dead_letters(rejects), *messages, *shadow]
        waiting = [(s, p) for s, p in zip(scored, pending, strict=True) if s.event.label is None]
        if not waiting:
            return BatchResult(outgoing, scored, examples, len(rejects))
        # Redis stores the predictions (or claims the labels already waiting for them) while
        # the batch is published and the next one scored: the labels it claims are read and
        # learned before the batch is committed (BatchConsumer). Sent last: nothing after it
        # can fail and leave its reply unread.
        start = time.perf_counter()
        sent = await self.predictions.send(
            [p for _, p in waiting], [s.claimant for s, _ in waiting]
        )
        return BatchResult(outgoing, scored, examples, len(rejects), [_Claims(self, sent, start)])

    def _validate(
        self, batch: Sequence[Incoming], now: int
    ) -> tuple[list[tuple[Incoming, ValidEvent]], list[Rejected]]:
        valid: list[tuple[Incoming, ValidEvent]] = []
        rejects: list[Rejected] = []
        checks = self.checks
        for msg in batch:
            try:
                valid.append((msg, validate_event(msg.value, checks, self.limits, now)))
            except RejectedInput as exc:
                rejects.append((msg, exc))
        return valid, rejects

    def _score(
        self,
        models: Sequence[OnlineModel],
        valid: Sequence[tuple[Incoming, ValidEvent]],
        results: Sequence[EventResult],
    ) -> Scored:
        """Score every model (champion first); each event is served by its arm's model.

        The other models' outputs are kept for the label join and published to the shadow
        topic; a non-finite one is left out (the event was served: nothing to dead-letter).
        An event whose served output is not finite is dead-lettered.
        """
        xs: list[dict[str, float | str]] = [
            {**ev.values, **result.enriched} for (_, ev), result in zip(valid, results, strict=True)
        ]
        # the whole batch at once: a linear pipeline scores it as arrays (model.linear_snapshot)
        outs = [model.predict_many(xs) for model in models]
        serving = self._serving(models, valid)
        scored: list[ScoredEvent] = []
        pending: list[PendingPrediction] = []
        unscorable: list[Rejected] = []
        messages: list[Outgoing] = []
        topic = self.settings.topics.shadow
        processed = now_ms()
        for j, ((msg, ev), x, k) in enumerate(zip(valid, xs, serving, strict=True)):
            model, out = models[k], outs[k][j]
            if not _finite(out.score, out.proba):
                unscorable.append((msg, _non_finite(out.score, model.version)))
                continue
            # encoded once: the prediction, the shadow predictions and the stored pending
            # prediction all carry it
            x_json = orjson.Fragment(orjson.dumps(x))
            others: dict[str, Outputs] = {}
            for i in range(len(models)):
                if i == k or not _finite(outs[i][j].score, outs[i][j].proba):
                    continue
                other, o = models[i], outs[i][j]
                others[other.name] = (other.version, o.prediction, o.score)
                value = encode_prediction(
                    ev.event_id, ev.entity_id, ev.ts_ms, other.name, other.version,
                    o.prediction, o.proba, o.score, x_json, processed,
                )  # fmt: skip
                messages.append(Outgoing(topic, ev.entity_id.encode(), value))
            scored.append(
                ScoredEvent(
                    ev, x, out.prediction, out.proba, out.score, model.version, msg.partition,
                    model.name, msg.offset,
                )
            )  # fmt: skip
            pending.append(
                PendingPrediction(
                    ev.event_id, ev.entity_id, ev.ts_ms, x, model.version, out.prediction,
                    out.score, processed, model.name, others, x_json,
                )
            )  # fmt: skip
        return scored, pending, unscorable, messages

    def _serving(
        self, models: Sequence[OnlineModel], valid: Sequence[tuple[Incoming, ValidEvent]]
    ) -> list[int]:
        """Per event, the index in ``models`` of the model that serves it: its entity's A/B
        arm (:func:`stream.model.served.arm_of`), else the champion (0)."""
        arms = [(lo, hi, i) for lo, hi, name in self.arms() for i, m in enumerate(models)
                if m.name == name]  # fmt: skip
        if not arms:
            return [0] * len(valid)
        return [arm_of(ev.entity_id, arms) for _, ev in valid]

    def _dead_letters(self, rejects: Sequence[Rejected]) -> list[Outgoing]:
        return [reject(self.settings, self.metrics, msg, exc) for msg, exc in rejects]

    def _predictions(
        self, scored: Sequence[ScoredEvent], pending: Sequence[PendingPrediction]
    ) -> list[Outgoing]:
        topic = self.settings.topics.predictions
        processed = now_ms()
        return [
            Outgoing(
                topic,
                s.event.entity_id.encode(),
                encode_prediction(
                    s.event.event_id,
                    s.event.entity_id,
                    s.event.ts_ms,
                    s.model,
                    s.model_version,
                    s.prediction,
                    s.proba,
                    s.score,
                    p.x_json or orjson.Fragment(orjson.dumps(s.x)),
                    processed,
                ),  # fmt: skip
            )
            for s, p in zip(scored, pending, strict=True)
        ]

    def _count(self, n_valid: int, scored: Sequence[ScoredEvent], applied: Applied) -> None:
        m = self.metrics
        m.events_accepted.inc(n_valid)
        issues = Counter((issue.feature, issue.kind) for s in scored for issue in s.event.quality)
        for (feature, kind), n in issues.items():  # one label lookup per kind, not per issue
            m.data_quality.labels(feature, kind).inc(n)
        m.events_duplicate.inc(applied.update.duplicate_count)
        m.events_late.inc(applied.update.late_count)
        m.state_conflicts.inc(applied.conflicts)
        m.state_resets.inc(len(applied.resets))


class _Claims:
    """The labels a batch's store claimed (labels that came before their events), as
    training examples (:class:`stream.records.Joins`)."""

    def __init__(self, processor: EventProcessor, sent: StoreInFlight, started: float) -> None:
        self.metrics = processor.metrics
        self.sent = sent
        self.started = started

    async def examples(self) -> list[TrainingExample]:
        claimed = await self.sent.result()
        self.metrics.redis_seconds.labels("write").observe(time.perf_counter() - self.started)
        now = now_ms()
        joined = [example_from(pred, label.label, label.ts or now) for pred, label in claimed]
        self.metrics.labels_joined.inc(len(joined))
        for example in joined:
            self.metrics.label_lag.observe(example.lag_s)
        return joined

    async def abandon(self) -> None:
        await self.sent.abandon()


def _finite(score: float, proba: dict[str, float] | None) -> bool:
    if not math.isfinite(score):
        return False
    return proba is None or all(map(math.isfinite, proba.values()))


def _non_finite(score: float, version: int) -> RejectedInput:
    return RejectedInput(
        f"model version {version} gave a non-finite score ({score}) for this event",
        stage="score",
        code="non_finite_score",
    )


def reject(settings: Settings, metrics: Metrics, msg: Incoming, exc: RejectedInput) -> Outgoing:
    """The dead letter for a rejected input message, counted by topic, stage and code.

    Dead letter and key are capped (``stream.messages.DLQ_MAX_*``) to fit any producer request.
    """
    metrics.events_rejected.labels(msg.topic, exc.stage, exc.code).inc()
    value = dead_letter(
        exc.reason, exc.stage, msg.topic, msg.partition, msg.offset, msg.key, msg.value or b"",
        now_ms(),
    )  # fmt: skip
    return Outgoing(settings.topics.dlq, dead_letter_key(msg.key), value)


def _feature_input(ev: ValidEvent) -> FeatureInput:
    # the numeric values (the windows take each as a float), a missing one as None
    missing = ev.missing
    values = {
        k: None if k in missing else v for k, v in ev.values.items() if not isinstance(v, str)
    }
    return FeatureInput(ev.event_id, ev.entity_id, ev.ts_ms, values)


class LabelProcessor:
    """Joins label messages to the stored predictions; returns training examples.

    A label whose prediction is not stored yet is parked until its event is scored; the
    expiry sweep counts those that never joined (``labels_unmatched``).
    """

    def __init__(self, settings: Settings, redis: aioredis.Redis, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.predictions = PredictionStore(redis, settings.redis.prefix, settings.labels.horizon_s)
        self.limits = Limits.from_settings(settings.worker)

    async def process(
        self, batch: Sequence[Incoming]
    ) -> tuple[list[TrainingExample], list[Outgoing]]:
        now = now_ms()
        labels: list[Label] = []
        rejects: list[Rejected] = []
        for msg in batch:
            try:
                labels.append(validate_label(msg.value, self.limits, now))
            except RejectedInput as exc:
                rejects.append((msg, exc))
        t0 = time.perf_counter()
        pending = await self.predictions.take(labels, now)
        self.metrics.redis_seconds.labels("label_join").observe(time.perf_counter() - t0)
        joined = join_labels(labels, pending, now)
        self.metrics.labels_joined.inc(len(joined.examples))
        for ex in joined.examples:
            self.metrics.label_lag.observe(ex.lag_s)
        dlq = [reject(self.settings, self.metrics, msg, exc) for msg, exc in rejects]
        return joined.examples, dlq
