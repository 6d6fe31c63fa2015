"""The worker moves events from the input topic to the output topic on a real broker."""

from __future__ import annotations

import asyncio

import orjson

from stream.service.config import Settings
from tests.integration.kafka_io import consume, produce


def test_worker_passes_every_event_through(settings: Settings, worker_factory) -> None:
    n = 200
    worker_factory()
    events = [
        {
            "event_id": f"e-{i}",
            "entity_id": f"card-{i % 17}",
            "ts": 1_763_800_000_000 + i,
            "features": {"amount": i * 1.5},
        }
        for i in range(n)
    ]
    records = [(e["entity_id"].encode(), orjson.dumps(e)) for e in events]
    asyncio.run(produce(settings.kafka.bootstrap, settings.topics.events, records))

    out = asyncio.run(
        consume(settings.kafka.bootstrap, settings.topics.predictions, n, 60, settle=1)
    )

    ids = [orjson.loads(r.value)["event_id"] for r in out]
    assert sorted(ids) == sorted(e["event_id"] for e in events)
    assert all(r.key == orjson.loads(r.value)["entity_id"].encode() for r in out)
