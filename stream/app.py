"""The Faust application: topics and agents. Agents stay thin: decode, call logic, emit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, cast

import faust
from faust.types import EventT

from stream.config import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app for ``settings``: raw-bytes topics, at-least-once delivery."""
    app = faust.App(
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
        broker_commit_every=settings.worker.batch_size,
    )
    events = app.topic(settings.topics.events, key_type=bytes, value_type=bytes)
    predictions = app.topic(settings.topics.predictions, key_type=bytes, value_type=bytes)

    @app.agent(events, name="driftwatch.echo")
    async def echo(stream: faust.StreamT[bytes]) -> None:
        async for batch in cast(faust.Stream[bytes], stream).take_events(
            settings.worker.batch_size, within=settings.worker.batch_max_latency_s
        ):
            await _publish_all(predictions, batch)

    return app


async def _publish_all(topic: faust.TopicT, batch: Sequence[EventT[Any]]) -> None:
    """Send every event's value and wait until the broker acknowledged all of them.

    The events of the batch are acked (and so become committable) only after this returns,
    which gives at-least-once delivery.
    """
    futures = [await topic.send(key=ev.key, value=ev.value) for ev in batch]
    await asyncio.gather(*futures)
