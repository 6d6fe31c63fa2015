"""The Faust application: topics and agents. Agents stay thin: decode, call logic, emit.

Delivery is at-least-once: an agent awaits the broker's acknowledgement of every output of
a batch before the batch's input events are acked (``take_events`` acks after the loop
body), and Faust commits only acked offsets, after flushing the producer.

Nothing may leave an agent body (Faust would ack the batch, see :mod:`stream.resilience`):
each batch goes through one *step* that retries outages and dead-letters poison messages;
whatever still escapes a step is retried after a pause, and a batch left unprocessed when
the worker stops is never committed (:func:`stream.resilience.abandon`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
import orjson
import redis.asyncio as aioredis
from faust.types import EventT

from stream import lag
from stream.alerts import alert_key
from stream.config import Settings
from stream.exceptions import RejectedInput
from stream.labels import TrainingExample
from stream.messages import dead_letter, dead_letter_key, now_ms
from stream.metrics import Metrics
from stream.monitor_hub import MonitorHub, monitor_messages
from stream.performance import PerformanceMonitor
from stream.pipeline import (
    BatchResult,
    EventProcessor,
    Incoming,
    LabelProcessor,
    Outgoing,
    reject,
    train_topic_name,
)
from stream.redis_client import redis_client
from stream.resilience import (
    Dependency,
    Health,
    Poisoned,
    abandon,
    dependency_of,
    describe,
    guarded,
    isolate,
)
from stream.snapshots import ModelHolder, SnapshotStore
from stream.subjects import monitored_subjects
from stream.trainer import Trainer

log = logging.getLogger(__name__)

Step = Callable[[Sequence[EventT[Any]]], Awaitable[None]]


@dataclass
class Worker:
    """The app and the long-lived objects its agents share."""

    app: faust.App
    settings: Settings
    redis: aioredis.Redis
    metrics: Metrics
    holder: ModelHolder
    trainer: Trainer
    hub: MonitorHub
    performance: PerformanceMonitor
    health: Health


def faust_app(settings: Settings) -> faust.App:
    """The Faust app of a worker: raw-bytes topics, at-least-once delivery, no agents yet."""
    return faust.App(
        settings.worker.app_id,
        broker=settings.kafka.url,
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.topics.partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        broker_commit_every=max(settings.worker.batch_size, 100),
        stream_buffer_maxsize=max(4 * settings.worker.batch_size, 4096),
        broker_session_timeout=settings.worker.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.worker.session_timeout_s / 4),
    )


def create_app(settings: Settings, metrics: Metrics | None = None) -> Worker:
    """Build the worker for ``settings``: its Faust app, agents, model, monitors and metrics."""
    app = faust_app(settings)
    redis = redis_client(settings)
    metrics = metrics or Metrics()
    store = SnapshotStore.from_settings(redis, settings)
    trainer = Trainer(settings, store, metrics)
    holder = ModelHolder(store, trainer.fresh_model())
    key = settings.snapshot_key.get_secret_value().encode() if settings.snapshot_key else b""
    hub = MonitorHub(settings, redis, metrics, key)
    performance = PerformanceMonitor(settings.model.task, settings.monitoring, settings.model.name)
    health = Health(metrics)
    worker = Worker(app, settings, redis, metrics, holder, trainer, hub, performance, health)
    _agents(worker)
    lag.install(worker.app, worker.metrics)
    return worker


def _agents(w: Worker) -> None:
    app, settings = w.app, w.settings
    topics = settings.topics
    events = app.topic(topics.events, key_type=bytes, value_type=bytes)
    labels = app.topic(topics.labels, key_type=bytes, value_type=bytes)
    train = app.topic(train_topic_name(settings), key_type=bytes, value_type=bytes, partitions=1)
    monitor = app.topic(topics.monitor, key_type=bytes, value_type=bytes)
    steps = Steps(w, train.get_topic_name())

    def consume(name: str, step: Step) -> Callable[[faust.StreamT[bytes]], Awaitable[None]]:
        async def agent(stream: faust.StreamT[bytes]) -> None:
            batches = cast(faust.Stream[bytes], stream).take_events(
                settings.worker.batch_size, settings.worker.batch_max_latency_s
            )
            async for evs in batches:
                await run_step(name, step, evs, w.health)

        return agent

    app.agent(events, name="driftwatch.score")(consume("score", steps.score))
    app.agent(monitor, name="driftwatch.monitor")(consume("monitor", steps.watch))
    app.agent(labels, name="driftwatch.join")(consume("join", steps.join))
    app.agent(train, name="driftwatch.train")(consume("train", steps.learn))

    @app.task
    async def refresh_model() -> None:
        while True:
            await guarded("model_refresh", steps.refresh_model, w.health)
            await asyncio.sleep(settings.model.poll_interval_s)

    @app.timer(30.0)
    async def sweep_expired() -> None:
        await guarded("sweep_expired", steps.sweep_expired, w.health)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types async receivers loosely
    async def on_revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        try:
            await w.hub.save(force=True)
        except Exception as exc:  # the periodic save (every checkpoint_interval) still holds
            log.warning("monitor state not saved at revocation: %s", describe(exc))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode types async receivers loosely
    async def on_assigned(
        sender: Any, assigned: set[Any], *args: Any, signal: Any, **kwargs: Any
    ) -> None:
        # partitions may have been worked on elsewhere meanwhile: re-read the saved state
        w.trainer.forget()
        w.hub.keep_only({tp.partition for tp in assigned if tp.topic == topics.monitor})


async def run_step(name: str, step: Step, events: Sequence[EventT[Any]], health: Health) -> None:
    """Run ``step`` on a batch until it succeeds; nothing escapes to ``take_events``.

    A step retries outages and isolates poison itself, so what reaches this loop is a
    failure outside those guards: the batch is tried again after a pause (delayed, never
    acked unprocessed). Cancelled (the worker stops) with the batch unfinished, its offsets
    are kept from the commit, so it is redelivered.
    """
    try:
        await _until_done(name, step, events, health)
    except asyncio.CancelledError:  # also while waiting between two tries
        abandon(events)
        raise


async def _until_done(name: str, step: Step, events: Sequence[EventT[Any]], health: Health) -> None:
    attempt = 0
    failing: set[Dependency] = set()
    while True:
        try:
            await step(events)
            health.recovered(failing)
            return
        except Exception as exc:
            dependency = dependency_of(exc)
            if dependency is not None:
                failing.add(dependency)
                health.failed(dependency, name, exc)
            else:
                health.metrics.task_errors.labels(name).inc()
                if attempt % 100 == 0:  # one traceback per hundred tries, not per try
                    log.exception("%s: batch of %d failed (%s); trying it again",
                                  name, len(events), describe(exc))  # fmt: skip
        await asyncio.sleep(health.backoff_s(attempt))
        attempt += 1


class Steps:
    """What the agents, the timer and the background task do with each batch or tick."""

    def __init__(self, w: Worker, train_topic: str) -> None:
        self.w = w
        self.settings = w.settings
        self.train_topic = train_topic
        self.train_key = w.settings.model.name.encode()
        self.scorer = EventProcessor(w.settings, w.redis, lambda: w.holder.model, w.metrics)
        self.joiner = LabelProcessor(w.settings, w.redis, w.metrics)
        self.monitoring = w.settings.monitoring.enabled
        self.kinds = {name: kind for name, (kind, _) in monitored_subjects(w.settings).items()}

    async def score(self, events: Sequence[EventT[Any]]) -> None:
        """Events → predictions, dead letters, training examples and monitor batches."""
        w = self.w
        await w.health.retry("model", w.holder.ready)
        incoming = [_incoming(e) for e in events]
        poisoned: list[Poisoned] = []

        async def process(part: Sequence[Incoming]) -> BatchResult:
            return await w.health.retry("score", lambda: self.scorer.process(part))

        result = BatchResult.merge(await isolate(incoming, process, poisoned))
        result.outgoing += self._poisoned(poisoned, "process")
        result.rejected += len(poisoned)
        out = [*result.outgoing, *self._examples(result.examples)]
        if self.monitoring:
            msgs = monitor_messages(self.settings, result, self.kinds)
            out += [Outgoing(self.settings.topics.monitor, k, v) for k, v in msgs]
        await self.publish(out)
        w.metrics.events_received.inc(len(events))
        w.metrics.batch_size.observe(len(events))
        _observe_latency(w, result.scored)

    async def watch(self, events: Sequence[EventT[Any]]) -> None:
        """Monitor batches → drift and data-quality alerts."""
        hub = self.w.hub
        items = [(e.message.partition, e.message.offset, e.value) for e in events]
        alerts, poisoned = await self.w.health.retry("monitor", lambda: hub.apply(items))
        await self.w.health.retry("monitor_save", lambda: hub.save(force=bool(alerts)))
        dlq = [
            self._dead_letter(p, "monitor", Incoming(self.settings.topics.monitor, part, off,
                                                     None, _bytes(value)))
            for p in poisoned
            for part, off, value in [p.item]
        ]  # fmt: skip
        await self.publish_alerts(alerts, dlq)

    async def join(self, events: Sequence[EventT[Any]]) -> None:
        """Labels → training examples (joined to their stored predictions)."""
        incoming = [_incoming(e) for e in events]
        poisoned: list[Poisoned] = []

        async def process(
            part: Sequence[Incoming],
        ) -> tuple[list[TrainingExample], list[Outgoing]]:
            return await self.w.health.retry("join", lambda: self.joiner.process(part))

        parts = await isolate(incoming, process, poisoned)
        examples = [x for part_examples, _ in parts for x in part_examples]
        dlq = [m for _, part_dlq in parts for m in part_dlq]
        await self.publish([*self._examples(examples), *dlq, *self._poisoned(poisoned, "join")])
        self.w.metrics.labels_received.inc(len(events))

    async def learn(self, events: Sequence[EventT[Any]]) -> None:
        """Training examples → a learned, checkpointed and (when due) published model."""
        w = self.w
        items: list[tuple[int, TrainingExample]] = []
        dlq: list[Outgoing] = []
        for e in events:
            try:
                items.append((e.message.offset, TrainingExample.decode(e.value)))
            except Exception as exc:  # not an example this version can read: its own fault
                dlq.append(self._dead_letter(Poisoned(e, describe(exc)), "learn", _incoming(e)))
        unlearned = await w.health.retry("train", lambda: w.trainer.unlearned(items))
        alerts = self._judge_performance(unlearned)
        outcome = w.trainer.learn_batch(unlearned)
        version = await w.health.retry("train", w.trainer.save)
        alerts += w.trainer.take_alerts()
        for skipped in outcome.skipped:
            source = Incoming(self.train_topic, 0, skipped.offset, self.train_key,
                              skipped.example.encode())  # fmt: skip
            why = RejectedInput(skipped.reason, stage="learn", code=skipped.code)
            dlq.append(reject(self.settings, w.metrics, source, why))
        await self.publish_alerts(alerts, dlq)
        if version is not None:
            await w.health.retry("model", w.holder.refresh)

    def _judge_performance(
        self, unlearned: Sequence[tuple[int, TrainingExample]]
    ) -> list[dict[str, Any]]:
        # performance is judged on published models: version 0 is the untrained one
        fresh = [x for _, x in unlearned if x.model_version > 0]
        if not (self.monitoring and fresh):
            return []
        w = self.w
        try:
            alerts = w.performance.update(fresh, now_ms())
        except Exception as exc:  # judging must never stop learning
            w.metrics.task_errors.labels("performance").inc()
            log.exception("performance monitor skipped a batch: %s", describe(exc))
            return []
        for metric, value in w.performance.metrics().items():
            w.metrics.model_metric.labels(self.settings.model.name, metric).set(value)
        return alerts

    async def refresh_model(self) -> None:
        """Serve the current model version; publish the alerts of refused versions."""
        w = self.w
        if await w.holder.refresh():
            log.info("serving %s version %d", w.holder.model.name, w.holder.model.version)
        alerts = w.holder.take_alerts()
        await self.publish_alerts(alerts, [])

    async def sweep_expired(self) -> None:
        """Count the predictions whose label never came and the labels that never joined."""
        predictions = self.scorer.predictions
        expired, unmatched = await predictions.sweep_expired(now_ms())
        self.w.metrics.predictions_expired.inc(expired)
        self.w.metrics.labels_unmatched.inc(unmatched)

    def _examples(self, examples: Sequence[TrainingExample]) -> list[Outgoing]:
        return [Outgoing(self.train_topic, self.train_key, x.encode()) for x in examples]

    def _poisoned(self, poisoned: Sequence[Poisoned], stage: str) -> list[Outgoing]:
        return [self._dead_letter(p, stage, p.item) for p in poisoned]

    def _dead_letter(self, p: Poisoned, stage: str, source: Incoming) -> Outgoing:
        exc = RejectedInput(p.error, stage=stage, code="exception")
        return reject(self.settings, self.w.metrics, source, exc)

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish with retries; a message the broker refuses for itself is dead-lettered."""
        health = self.w.health
        refused = await health.retry(
            "publish", lambda: health.patient("kafka", "publish", publish(self.w.app, messages))
        )
        if refused:
            letters = [self._undeliverable(m, error) for m, error in refused]
            still = await self.w.health.retry("publish", lambda: publish(self.w.app, letters))
            for m, error in still:
                log.error("dead letter for %s not published either: %s", m.topic, error)

    def _undeliverable(self, m: Outgoing, error: str) -> Outgoing:
        self.w.metrics.events_rejected.labels(m.topic, "publish", "refused").inc()
        log.error("output to %s refused by the broker: %s; dead-lettered", m.topic, error)
        value = dead_letter(error, "publish", m.topic, None, None, m.key, m.value, now_ms())
        return Outgoing(self.settings.topics.dlq, dead_letter_key(m.key), value)

    async def publish_alerts(
        self, alerts: Sequence[dict[str, Any]], also: Sequence[Outgoing]
    ) -> None:
        """Publish alerts keyed by kind and subject (with ``also``), and count them."""
        topic = self.settings.topics.alerts
        out = [Outgoing(topic, alert_key(a), encode_alert(a)) for a in alerts]
        if out or also:
            await self.publish([*out, *also])
        for a in alerts:
            self.w.metrics.alerts.labels(a["kind"], a["status"]).inc()
            log.warning(
                "alert %s %s %s/%s: %s",
                a["status"], a["kind"], a["subject"], a["detector"], a["message"],
            )  # fmt: skip


def _incoming(event: EventT[Any]) -> Incoming:
    msg = event.message
    return Incoming(msg.topic, msg.partition, msg.offset, msg.key, msg.value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else repr(value).encode()


async def publish(app: faust.App, messages: Sequence[Outgoing]) -> list[tuple[Outgoing, str]]:
    """Send ``messages`` and wait until the broker acknowledged every one of them.

    A transient error raises (the caller retries the whole list; duplicates are allowed,
    losses are not). A message refused for itself (too large, invalid) is returned with
    the reason, for the caller to dead-letter.
    """
    producer = app.producer
    refused: list[tuple[Outgoing, str]] = []
    sent: list[tuple[Outgoing, Any]] = []
    for m in messages:
        try:
            sent.append((m, await producer.send(m.topic, m.key, m.value, None, None, None)))
        except Exception as exc:
            if dependency_of(exc) is not None:
                raise
            refused.append((m, describe(exc)))
    outcomes = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
    for (m, _), outcome in zip(sent, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if dependency_of(outcome) is not None or not isinstance(outcome, Exception):
                raise outcome
            refused.append((m, describe(outcome)))
    return refused


def encode_alert(alert: dict[str, Any]) -> bytes:
    """Alert JSON; numpy scalars in the evidence become plain numbers."""
    return orjson.dumps(alert, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _observe_latency(w: Worker, scored: Sequence[Any]) -> None:
    now = now_ms()
    hist = w.metrics.event_latency
    model = w.holder.model
    w.metrics.model_version.labels(model.name).set(model.version)
    w.metrics.model_info.info(
        {"model": model.name, "task": model.task, "pipeline": model.pipeline,
         "version": str(model.version)}
    )  # fmt: skip
    score = w.metrics.score.labels(model.name)  # label lookups once per batch, not per event
    for s in scored:
        hist.observe(max(0.0, (now - s.event.ts_ms) / 1000.0))
        score.observe(s.score)
    counts = Counter(w.metrics.prediction_label(model.task, s.prediction) for s in scored)
    for prediction, n in counts.items():
        w.metrics.predictions.labels(model.name, prediction).inc(n)
