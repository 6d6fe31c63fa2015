"""``driftwatch reference pin --range``: the predictions of an event-time range, read from the
real broker."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from stream.exceptions import DriftwatchError
from stream.monitoring import reference
from stream.service.config import Settings
from tests.integration.kafka_io import produce

pytestmark = pytest.mark.integration


def test_the_predictions_of_a_range_are_read_from_every_partition(settings: Settings) -> None:
    s = settings
    rows = [{"event_id": f"e{i}", "entity_id": f"c{i % 7}", "ts": 1_000_000 + i, "score": 0.5}
            for i in range(300)]  # fmt: skip
    records = [(r["entity_id"].encode(), orjson.dumps(r)) for r in rows]
    asyncio.run(produce(s.kafka.bootstrap, s.topics.predictions, records))
    got = asyncio.run(reference.read_topic(s, "1000100", "1000199"))
    assert sorted(r["event_id"] for r in got) == sorted(f"e{i}" for i in range(100, 200))
    topics = s.topics.model_copy(update={"predictions": f"{s.topics.predictions}-missing"})
    missing = s.model_copy(update={"topics": topics})
    with pytest.raises(DriftwatchError, match="do not exist"):
        asyncio.run(reference.read_topic(missing, "1000100", "1000199"))
