"""The Faust application: topics, agents, the background tasks and the rebalance listener.

Events and labels, which arrive at the event rate, are consumed in batches by the ingest
consumer (:mod:`stream.service.batches`), a task of the worker; the internal topics (monitor
batches, training examples) by Faust agents. Both are thin: the batch's records → the
topic's step (:mod:`stream.service.steps`) → publish what it returns
(:mod:`stream.service.publish`) → commit.

Nothing may leave an agent body (Faust would ack the batch, see
:mod:`stream.service.resilience`): a step retries outages and dead-letters poison itself;
whatever still escapes is retried after a pause, and a batch left unprocessed when the
worker stops is never committed (:func:`stream.service.resilience.abandon`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from faust.types import EventT

from stream.ingest.scoring import EventProcessor, LabelProcessor
from stream.labels.store import PredictionStore
from stream.model.holder import ModelHolder
from stream.model.snapshots import SnapshotStore
from stream.model.trainer import Trainer
from stream.monitoring.hub import MonitorHub
from stream.monitoring.performance import PerformanceMonitor
from stream.records import Incoming
from stream.service.batches import LEARN, BatchConsumer, Step
from stream.service.config import Settings
from stream.service.kafka_security import broker_credentials, client_options
from stream.service.lag import INTERVAL_S, LagSampler, faust_source
from stream.service.metrics import Metrics
from stream.service.publish import Publisher
from stream.service.redis_client import redis_client
from stream.service.resilience import Health, abandon, describe, guarded, until_done
from stream.service.steps import JoinStep, LearnStep, ScoreStep, TrainingTopic, WatchStep
from stream.service.topics import train_topic_name
from stream.timestamps import now_ms

log = logging.getLogger(__name__)


Batch = Callable[[Sequence[EventT[Any]]], Awaitable[None]]


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
    publisher: Publisher
    lag: LagSampler
    consumers: list[BatchConsumer] = field(default_factory=list)


def faust_app(settings: Settings) -> faust.App:
    """The Faust app of a worker: raw-bytes topics, at-least-once delivery, no agents yet."""
    return faust.App(
        settings.worker.app_id,
        broker=settings.kafka.url,
        broker_credentials=broker_credentials(settings),
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
    publisher = Publisher(settings, metrics, health)
    lag = LagSampler(metrics, lambda: AIOKafkaAdminClient(**client_options(settings)))
    worker = Worker(
        app, settings, redis, metrics, holder, trainer, hub, performance, health, publisher, lag
    )
    _agents(worker)
    _background(worker)
    return worker


def _agents(w: Worker) -> None:
    app, settings, m, h = w.app, w.settings, w.metrics, w.health
    topics = settings.topics
    train = TrainingTopic(train_topic_name(settings), settings.model.name)
    scorer = EventProcessor(settings, w.redis, lambda: w.holder.model, m)
    joiner = LabelProcessor(settings, w.redis, m)
    n = topics.partitions
    ingest = BatchConsumer(
        settings,
        {
            topics.events: ScoreStep(settings, m, h, scorer, w.holder, train),
            topics.labels: JoinStep(settings, m, h, joiner, train),
        },
        w.publisher,
        h,
        w.lag,
    )
    learn = BatchConsumer(
        settings,
        {train.name: LearnStep(settings, m, h, w.trainer, w.performance, w.holder, w.publisher)},
        w.publisher,
        h,
        w.lag,
        name=LEARN,
        # the partition may have been learned from elsewhere meanwhile: resume from the
        # saved checkpoint
        on_assigned=lambda assigned: w.trainer.forget(),
    )
    watch = WatchStep(settings, m, h, w.hub, w.publisher)
    monitor = app.topic(topics.monitor, key_type=bytes, value_type=bytes, partitions=n)
    app.agent(monitor, name="driftwatch.monitor")(_consume(w, "monitor", watch))
    # declared so that Faust creates them with its own at start-up
    for topic_name, partitions in ((topics.events, n), (topics.labels, n), (train.name, 1)):
        app.topic(topic_name, key_type=bytes, value_type=bytes, partitions=partitions)
    for consumer in (ingest, learn):
        w.consumers.append(consumer)
        app.task(_forever(consumer, h))


def _forever(consumer: BatchConsumer, health: Health) -> Callable[[], Awaitable[None]]:
    """A worker task that runs ``consumer``, and a new one if it ever fails."""

    async def consume() -> None:
        attempt = 0
        while not consumer.stopping:
            try:
                await consumer.run()
            except Exception as exc:  # the consumer itself failed: a new one after a pause
                health.metrics.task_errors.labels(consumer.name).inc()
                log.exception("%s consumer stopped (%s); starting a new one",
                              consumer.name, describe(exc))  # fmt: skip
            await asyncio.sleep(health.backoff_s(attempt))
            attempt += 1

    consume.__name__ = consume.__qualname__ = f"consume_{consumer.name}"
    return consume


def _consume(w: Worker, name: str, step: Step) -> Callable[[faust.StreamT[bytes]], Awaitable[None]]:
    size, within = w.settings.worker.batch_size, w.settings.worker.batch_max_latency_s

    async def publish_outputs(events: Sequence[EventT[Any]]) -> None:
        await w.publisher.publish(await step.process([_incoming(e) for e in events]))

    async def agent(stream: faust.StreamT[bytes]) -> None:
        async for events in cast(faust.Stream[bytes], stream).take_events(size, within):
            await run_step(name, publish_outputs, events, w.health)

    return agent


def _background(w: Worker) -> None:
    """The model refresh task, the expiry sweep, the lag sampler and the rebalance listener."""
    app, settings = w.app, w.settings
    lag = w.lag
    lag.watch(settings.worker.app_id, faust_source(app))
    predictions = PredictionStore(w.redis, settings.redis.prefix, settings.labels.horizon_s)

    poll_s = settings.model.poll_interval_s

    async def refresh_model() -> None:
        holder, m = w.holder, w.metrics
        if await holder.refresh():
            log.debug("serving %s version %d", holder.model.name, holder.model.version)
        await w.publisher.publish(w.publisher.alerts(holder.take_alerts()))
        name = holder.model.name
        m.model_version.labels(name).set(holder.model.version)
        lag = await holder.lag(now_ms())
        m.lag_examples.labels(name).set(lag.examples)
        if lag.age_s is not None:
            m.served_age.labels(name).set(lag.age_s)
        # the trainer (if this worker is it) publishes what waited publish_interval
        if await w.trainer.publish_due() is not None:
            await holder.refresh()

    async def wait_for_model() -> None:
        try:
            await w.holder.wait_for_change(poll_s)  # returns early when a version is announced
        except Exception:
            await asyncio.sleep(poll_s)  # Redis away: poll at the poll interval meanwhile
            raise

    async def sweep_expired() -> None:
        """Count predictions whose label never came and labels that never joined."""
        expired, unmatched = await predictions.sweep_expired(now_ms())
        w.metrics.predictions_expired.inc(expired)
        w.metrics.labels_unmatched.inc(unmatched)

    @app.task
    async def poll_model() -> None:
        while True:
            await guarded("model_refresh", refresh_model, w.health)
            await guarded("model_refresh", wait_for_model, w.health)

    @app.timer(30.0)
    async def sweep() -> None:
        await guarded("sweep_expired", sweep_expired, w.health)

    @app.timer(INTERVAL_S)
    async def sample_consumer_lag() -> None:
        await guarded("consumer_lag", lag.sample, w.health)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode types async receivers loosely
    async def on_shutdown(sender: Any, **kwargs: Any) -> None:
        # the batch consumers commit what they published and leave their groups first, then
        # the producer flushes and stops (Faust's consumer has stopped already)
        await asyncio.gather(*(consumer.stop() for consumer in w.consumers))
        await w.publisher.close()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types async receivers loosely
    async def on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        lag.revoked(revoked)
        try:
            await w.hub.save(force=True)
        except Exception as exc:  # the periodic save (every checkpoint_interval) still holds
            log.warning("monitor state not saved at revocation: %s", describe(exc))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode types async receivers loosely
    async def on_assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        lag.assigned(assigned, settings.worker.app_id)
        # partitions may have been worked on elsewhere meanwhile: re-read the saved state
        w.hub.keep_only({tp.partition for tp in assigned if tp.topic == settings.topics.monitor})


async def run_step(name: str, step: Batch, events: Sequence[EventT[Any]], health: Health) -> None:
    """Run ``step`` on a batch until it succeeds; nothing escapes to ``take_events``.

    Cancelled (the worker stops) with the batch unfinished, its offsets are kept from the
    commit, so it is redelivered.
    """
    try:
        await until_done(name, lambda: step(events), len(events), health)
    except asyncio.CancelledError:  # also while waiting between two tries
        abandon(events)
        raise


def _incoming(event: EventT[Any]) -> Incoming:
    msg = event.message
    return Incoming(msg.topic, msg.partition, msg.offset, msg.key, msg.value)
