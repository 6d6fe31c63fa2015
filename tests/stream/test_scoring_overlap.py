"""EventProcessor scores a batch while Redis writes its feature windows: the scores must be
those of the windows as finally written, also when another writer forced a re-read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from stream.features.store import Applied
from stream.features.windows import BatchUpdate, EventResult, FeatureInput
from stream.ingest.scoring import EventProcessor
from stream.model.online import create_model
from stream.records import Incoming
from stream.service.config import Settings
from stream.service.metrics import Metrics

T0 = 1_763_800_000_000


def result(event: FeatureInput, count: float) -> EventResult:
    enriched = {"amount_count_1h": count}
    return EventResult(event.event_id, event.entity_id, event.ts_ms, enriched, False, False)


class Windows:
    """A feature store whose first results (seen meanwhile) are replaced after a conflict."""

    def __init__(self, conflicts: int) -> None:
        self.conflicts = conflicts

    async def enrich(
        self, events: Sequence[FeatureInput], meanwhile: Callable[[Sequence[EventResult]], Any]
    ) -> Applied:
        meanwhile([result(e, 1.0) for e in events])  # before another writer's event
        final = [result(e, 2.0 if self.conflicts else 1.0) for e in events]
        return Applied(BatchUpdate(tuple(final), {}, {}, ()), self.conflicts)


class Stored:
    async def result(self) -> list[Any]:
        return []

    async def abandon(self) -> None:
        pass


class Predictions:
    async def send(self, preds: Any, claimants: Any = None) -> Stored:
        return Stored()


def scored_counts(conflicts: int) -> list[float]:
    s = Settings(features=[{"name": "amount", "windows": ["1h"], "aggregates": ["count"]}])
    model = create_model(s.model, s.features)
    processor = EventProcessor(s, aioredis.Redis(), lambda: model, Metrics())
    processor.features = Windows(conflicts)  # type: ignore[assignment]
    processor.predictions = Predictions()  # type: ignore[assignment]
    batch = [
        Incoming("events", 0, i, b"card-1", orjson.dumps(
            {"event_id": f"e{i}", "entity_id": "card-1", "ts": T0 + i, "features": {"amount": 1}}
        ))
        for i in range(3)
    ]  # fmt: skip
    out = asyncio.run(processor.process(batch))
    predictions = [orjson.loads(m.value) for m in out.outgoing if m.topic == s.topics.predictions]
    assert [p["features"]["amount_count_1h"] for p in predictions] == [
        s.x["amount_count_1h"] for s in out.scored
    ]
    return [s.x["amount_count_1h"] for s in out.scored]


def test_a_batch_is_scored_on_the_windows_as_written() -> None:
    assert scored_counts(conflicts=0) == [1.0, 1.0, 1.0]


def test_a_batch_whose_entity_conflicted_is_scored_again_on_the_windows_reapplied() -> None:
    assert scored_counts(conflicts=1) == [2.0, 2.0, 2.0]
