"""The Faust application: topics and agents. Agents stay thin: decode, call logic, emit.

Delivery is at-least-once: an agent awaits the broker's acknowledgement of every output of
a batch before the batch's input events are acked (``take_events`` acks after the loop
body), and Faust commits only acked offsets, after flushing the producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
import orjson
import redis.asyncio as aioredis
from faust.types import EventT

from stream import lag
from stream.alerts import alert_key
from stream.config import Settings
from stream.exceptions import DriftwatchError
from stream.labels import TrainingExample
from stream.messages import now_ms
from stream.metrics import Metrics
from stream.monitor_hub import MonitorHub, monitor_messages
from stream.performance import PerformanceMonitor
from stream.pipeline import (
    EventProcessor,
    Incoming,
    LabelProcessor,
    Outgoing,
    train_topic_name,
)
from stream.redis_client import redis_client
from stream.snapshots import ModelHolder, SnapshotStore
from stream.subjects import monitored_subjects
from stream.trainer import Trainer

log = logging.getLogger(__name__)


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
    worker = Worker(app, settings, redis, metrics, holder, trainer, hub, performance)
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
    scorer = EventProcessor(settings, w.redis, lambda: w.holder.model, w.metrics)
    joiner = LabelProcessor(settings, w.redis, w.metrics)
    batch, within = settings.worker.batch_size, settings.worker.batch_max_latency_s
    train_name, train_key = train.get_topic_name(), settings.model.name.encode()

    monitoring = settings.monitoring.enabled
    kinds = {name: kind for name, (kind, _) in monitored_subjects(settings).items()}

    @app.agent(events, name="driftwatch.score")
    async def score(stream: faust.StreamT[bytes]) -> None:
        async for evs in cast(faust.Stream[bytes], stream).take_events(batch, within):
            result = await scorer.process([_incoming(e) for e in evs])
            out = [Outgoing(train_name, train_key, x.encode()) for x in result.examples]
            if monitoring:
                msgs = monitor_messages(settings, result, kinds)
                out += [Outgoing(topics.monitor, k, v) for k, v in msgs]
            await publish(app, [*result.outgoing, *out])
            _observe_latency(w, result.scored)

    @app.agent(monitor, name="driftwatch.monitor")
    async def watch(stream: faust.StreamT[bytes]) -> None:
        async for evs in cast(faust.Stream[bytes], stream).take_events(batch, within):
            items = [(e.message.partition, e.message.offset, e.value) for e in evs]
            alerts = await w.hub.apply(items)
            await w.hub.save(force=bool(alerts))
            await publish_alerts(w, alerts)

    @app.agent(labels, name="driftwatch.join")
    async def join(stream: faust.StreamT[bytes]) -> None:
        async for evs in cast(faust.Stream[bytes], stream).take_events(batch, within):
            examples, dlq = await joiner.process([_incoming(e) for e in evs])
            out = [Outgoing(train_name, train_key, x.encode()) for x in examples]
            await publish(app, [*out, *dlq])

    @app.agent(train, name="driftwatch.train")
    async def learn(stream: faust.StreamT[bytes]) -> None:
        async for evs in cast(faust.Stream[bytes], stream).take_events(batch, within):
            items = [(e.message.offset, TrainingExample.decode(e.value)) for e in evs]
            # performance is judged on published models: version 0 is the untrained one
            unlearned = await w.trainer.unlearned(items)
            fresh = [x for _, x in unlearned if x.model_version > 0]
            if monitoring and fresh:
                await publish_alerts(w, w.performance.update(fresh, now_ms()))
                for metric, value in w.performance.metrics().items():
                    w.metrics.model_metric.labels(settings.model.name, metric).set(value)
            if await w.trainer.learn(unlearned) is not None:
                with contextlib.suppress(DriftwatchError):  # holder.run logs refusals
                    await w.holder.refresh()

    @app.task
    async def refresh_model() -> None:
        await w.holder.run(settings.model.poll_interval_s)

    @app.timer(30.0)
    async def sweep_expired() -> None:
        w.metrics.predictions_expired.inc(await scorer.predictions.sweep_expired(now_ms()))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types async receivers loosely
    async def on_revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        with contextlib.suppress(Exception):  # best effort: the periodic save is the guarantee
            await w.hub.save(force=True)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode types async receivers loosely
    async def on_assigned(
        sender: Any, assigned: set[Any], *args: Any, signal: Any, **kwargs: Any
    ) -> None:
        # partitions may have been worked on elsewhere meanwhile: re-read the saved state
        w.trainer.forget()
        w.hub.keep_only({tp.partition for tp in assigned if tp.topic == topics.monitor})


def _incoming(event: EventT[Any]) -> Incoming:
    msg = event.message
    return Incoming(msg.topic, msg.partition, msg.offset, msg.key, msg.value)


async def publish(app: faust.App, messages: Sequence[Outgoing]) -> None:
    """Send ``messages`` and wait until the broker acknowledged every one of them."""
    producer = app.producer
    futures: Iterable[Any] = [
        await producer.send(m.topic, m.key, m.value, None, None, None) for m in messages
    ]
    await asyncio.gather(*futures)


def encode_alert(alert: dict[str, Any]) -> bytes:
    """Alert JSON; numpy scalars in the evidence become plain numbers."""
    return orjson.dumps(alert, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain)


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


async def publish_alerts(w: Worker, alerts: Sequence[dict[str, Any]]) -> None:
    """Publish alerts keyed by kind and subject, and count them."""
    if not alerts:
        return
    topic = w.settings.topics.alerts
    await publish(w.app, [Outgoing(topic, alert_key(a), encode_alert(a)) for a in alerts])
    for a in alerts:
        w.metrics.alerts.labels(a["kind"], a["status"]).inc()
        log.warning(
            "alert %s %s %s/%s: %s",
            a["status"],
            a["kind"],
            a["subject"],
            a["detector"],
            a["message"],
        )


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
    for prediction, n in Counter(str(s.prediction) for s in scored).items():
        w.metrics.predictions.labels(model.name, prediction).inc(n)
