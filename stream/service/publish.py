"""Publishing a batch's outputs: every message acknowledged by the broker, or dead-lettered.

An agent awaits the broker's acknowledgement of every output of a batch before the batch's
input events are acked (``take_events`` acks after the loop body), and Faust commits only
acked offsets, after flushing the producer: delivery is at-least-once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import faust
import orjson

from stream.messages import dead_letter, dead_letter_key
from stream.monitoring.alerts import alert_key
from stream.records import Outgoing
from stream.service.config import Settings
from stream.service.metrics import Metrics
from stream.service.resilience import Health, dependency_of, describe
from stream.timestamps import now_ms

log = logging.getLogger(__name__)


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


class Publisher:
    """Publishes with retries through outages; dead-letters what the broker refuses."""

    def __init__(self, app: faust.App, settings: Settings, metrics: Metrics, health: Health):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.health = health

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish ``messages``; a message the broker refuses for itself is dead-lettered."""
        if not messages:
            return
        health = self.health
        refused = await health.retry(
            "publish", lambda: health.patient("kafka", "publish", publish(self.app, messages))
        )
        if refused:
            letters = [self._undeliverable(m, error) for m, error in refused]
            still = await self.health.retry("publish", lambda: publish(self.app, letters))
            for m, error in still:
                log.error("dead letter for %s not published either: %s", m.topic, error)

    def _undeliverable(self, m: Outgoing, error: str) -> Outgoing:
        self.metrics.events_rejected.labels(m.topic, "publish", "refused").inc()
        log.error("output to %s refused by the broker: %s; dead-lettered", m.topic, error)
        value = dead_letter(error, "publish", m.topic, None, None, m.key, m.value, now_ms())
        return Outgoing(self.settings.topics.dlq, dead_letter_key(m.key), value)

    def alerts(self, alerts: Sequence[dict[str, Any]]) -> list[Outgoing]:
        """Alert messages keyed by kind and subject; each is counted and logged once."""
        topic = self.settings.topics.alerts
        for a in alerts:
            self.metrics.alerts.labels(a["kind"], a["status"]).inc()
            log.warning(
                "alert %s %s %s/%s: %s",
                a["status"], a["kind"], a["subject"], a["detector"], a["message"],
            )  # fmt: skip
        return [Outgoing(topic, alert_key(a), encode_alert(a)) for a in alerts]
