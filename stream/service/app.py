"""The Faust application: the worker's lifecycle, its consumers and background tasks.

Every topic a worker reads is consumed in batches by a plain aiokafka consumer, a task of
the worker (:mod:`stream.service.batches`): events and labels by the ingest consumer,
training examples by the learn consumer, monitor batches by the monitor consumer. Each is
thin: the batch's records → the topic's step (:mod:`stream.service.steps`) → publish what
it returns (:mod:`stream.service.publish`) → commit. Faust runs no agent (its per-message
path costs more than a worker's whole work on an event); it gives the worker its process
lifecycle, its timers and its topics' creation.

A step retries outages and dead-letters poison itself; whatever still escapes is retried
after a pause (:func:`stream.service.resilience.until_done`), and a batch left unprocessed
when the worker stops is never committed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import faust
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from stream.ingest.scoring import EventProcessor, LabelProcessor
from stream.labels.store import PredictionStore
from stream.model.lifecycle import Learners
from stream.model.served import ModelSet
from stream.monitoring.hub import MonitorHub
from stream.service.batches import LEARN, BatchConsumer, forever
from stream.service.config import Settings
from stream.service.kafka_security import broker_credentials, client_options
from stream.service.lag import INTERVAL_S, LagSampler
from stream.service.metrics import Metrics
from stream.service.monitor_process import MonitorProcess, monitor_consumer
from stream.service.publish import Publisher
from stream.service.redis_client import redis_client
from stream.service.resilience import Health, guarded
from stream.service.steps import JoinStep, LearnStep, ScoreStep, TrainingTopic
from stream.service.topics import train_topic_name
from stream.timestamps import now_ms

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """The app and the long-lived objects its agents share."""

    app: faust.App
    settings: Settings
    redis: aioredis.Redis
    metrics: Metrics
    holder: ModelSet
    learners: Learners
    hub: MonitorHub
    health: Health
    publisher: Publisher
    lag: LagSampler
    consumers: list[BatchConsumer] = field(default_factory=list)
    # the monitors' child process (monitoring.process = "child")
    monitors: MonitorProcess | None = None


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
    holder = ModelSet(settings, redis)
    learners = Learners(settings, redis, metrics)
    key = settings.snapshot_key.get_secret_value().encode() if settings.snapshot_key else b""
    hub = MonitorHub(settings, redis, metrics, key)
    health = Health(metrics)
    publisher = Publisher(settings, metrics, health)
    lag = LagSampler(metrics, lambda: AIOKafkaAdminClient(**client_options(settings)))
    worker = Worker(app, settings, redis, metrics, holder, learners, hub, health, publisher, lag)
    _agents(worker)
    _background(worker)
    return worker


def _agents(w: Worker) -> None:
    app, settings, m, h = w.app, w.settings, w.metrics, w.health
    topics = settings.topics
    train = TrainingTopic(train_topic_name(settings), settings.model.name)
    scorer = EventProcessor(
        settings,
        w.redis,
        lambda: w.holder.model,
        m,
        shadows=lambda: w.holder.shadows,
        arms=lambda: w.holder.arms,
    )
    joiner = LabelProcessor(settings, w.redis, m)
    n = topics.partitions
    ingest = BatchConsumer(
        settings,
        {
            topics.events: ScoreStep(
                settings, m, h, scorer, w.holder, train, w.publisher.partitions
            ),
            topics.labels: JoinStep(settings, m, h, joiner, train),
        },
        w.publisher,
        h,
        w.lag,
    )
    learn = BatchConsumer(
        settings,
        {train.name: LearnStep(settings, m, h, w.learners, w.holder, w.publisher)},
        w.publisher,
        h,
        w.lag,
        name=LEARN,
        # the partition may have been learned from elsewhere meanwhile: resume from the
        # saved checkpoint
        on_assigned=lambda assigned: w.learners.forget(),
    )
    # declared so that Faust creates them with its own at start-up
    declared = [(topics.events, n), (topics.labels, n), (topics.monitor, n), (train.name, 1)]
    if settings.challenged:
        declared.append((topics.shadow, n))
    for topic_name, partitions in declared:
        app.topic(topic_name, key_type=bytes, value_type=bytes, partitions=partitions)
    consumers = [ingest, learn]
    # with monitoring off the scorers send no monitor batches: nothing to consume
    monitoring = settings.monitoring
    if monitoring.enabled and monitoring.process == "worker":
        consumers.append(monitor_consumer(settings, m, h, w.hub, w.publisher, w.lag))
    elif monitoring.enabled:
        monitors = w.monitors = MonitorProcess(settings)

        async def supervise_monitors() -> None:
            await monitors.supervise(h)

        app.task(supervise_monitors)
    for consumer in consumers:
        w.consumers.append(consumer)
        app.task(forever(consumer, h))


def _background(w: Worker) -> None:
    """The model refresh task, the expiry sweep, the lag sampler and the shutdown hook."""
    app, settings = w.app, w.settings
    lag = w.lag
    predictions = PredictionStore(w.redis, settings.redis.prefix, settings.labels.horizon_s)

    poll_s = settings.model.poll_interval_s

    async def refresh_model() -> None:
        holder, m = w.holder, w.metrics
        if await holder.refresh():
            log.debug("serving %s version %d", holder.model.name, holder.model.version)
        await w.publisher.publish(w.publisher.alerts(holder.take_alerts()))
        for model in holder.models:
            m.model_version.labels(model.name).set(model.version)
        name = holder.model.name
        lag = await holder.lag(now_ms())
        m.lag_examples.labels(name).set(lag.examples)
        if lag.age_s is not None:
            m.served_age.labels(name).set(lag.age_s)
        # the trainer (if this worker is it) publishes what waited publish_interval
        if await w.learners.publish_due():
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
        stopping = [consumer.stop() for consumer in w.consumers]
        if w.monitors is not None:
            stopping.append(w.monitors.stop())
        await asyncio.gather(*stopping)
        await w.publisher.close()
