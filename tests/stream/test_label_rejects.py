"""A malformed label goes to the dead-letter topic with its reason, like a bad event."""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio as aioredis

from stream.ingest.scoring import LabelProcessor
from stream.records import Incoming
from stream.service.config import Settings
from stream.service.metrics import Metrics


def test_bad_labels_are_dead_lettered_without_touching_redis() -> None:
    settings = Settings()
    client = aioredis.Redis(port=1)  # never connected: no valid label, no Redis call
    joiner = LabelProcessor(settings, client, Metrics())
    batch = [
        Incoming("labels", 0, 5, b"e1", b"{oops"),
        Incoming("labels", 1, 9, None, b'{"event_id": "e2"}'),
    ]
    examples, dlq = asyncio.run(joiner.process(batch))
    letters = [orjson.loads(m.value) for m in dlq]
    assert examples == []
    assert [(d["stage"], d["offset"], d["error"].split(":")[0]) for d in letters] == [
        ("decode", 5, "not JSON"),
        ("validate", 9, "label"),
    ]
    assert all(m.topic == settings.topics.dlq for m in dlq)
