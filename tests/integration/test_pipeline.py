"""The core pipeline on the real broker and Redis: predictions, DLQ, windows, labels, crashes."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis

from stream.features.offline import recompute_offline
from stream.features.windows import FeatureInput
from stream.service.config import Settings, load_settings
from stream.tools.synthetic import CardStream, bad_event
from tests.integration.kafka_io import consume, produce

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture
def demo_settings(settings: Settings) -> Settings:
    sample = load_settings(REPO / "driftwatch.toml")
    return settings.model_copy(
        update={
            "features": sample.features,
            "windows": sample.windows,
            "model": sample.model.model_copy(update={"publish_every": 200}),
        }
    )


def stream_records(n: int, seed: int = 3, start: int = 0) -> tuple[list[dict], list[int]]:
    cards = CardStream(seed=seed, n_cards=40, run_id="ev")
    pairs = [cards.event(i) for i in range(start + n)][start:]
    return [e for e, _ in pairs], [y for _, y in pairs]


def as_records(events: list[dict]) -> list[tuple[bytes, bytes]]:
    return [(e["entity_id"].encode(), orjson.dumps(e)) for e in events]


def predictions_by_id(records: list) -> dict[str, dict]:
    return {p["event_id"]: p for p in (orjson.loads(r.value) for r in records)}


def test_every_event_gets_one_prediction_with_exact_window_features(
    demo_settings: Settings, worker_factory
) -> None:
    s = demo_settings
    events, _ = stream_records(600)
    worker_factory(s)
    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, as_records(events)))
    out = asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, len(events), 90, settle=1))

    ids = Counter(orjson.loads(r.value)["event_id"] for r in out)
    assert set(ids) == {e["event_id"] for e in events}
    assert max(ids.values()) == 1
    preds = predictions_by_id(out)
    inputs = [
        FeatureInput(e["event_id"], e["entity_id"], e["ts"], {"amount": e["features"]["amount"]})
        for e in events
    ]
    expected = recompute_offline(inputs, [f for f in s.features if f.windows], s.windows)
    for ev, want in zip(events, expected, strict=True):
        got = preds[ev["event_id"]]
        assert got["model"] == s.model.name and got["entity_id"] == ev["entity_id"]
        assert set(got["proba"]) == {"0", "1"}
        for name, value in want.enriched.items():
            assert got["features"][name] == pytest.approx(value, rel=1e-9, abs=1e-9), name


def test_bad_events_go_to_the_dlq_and_good_ones_are_unaffected(
    demo_settings: Settings, worker_factory
) -> None:
    s = demo_settings
    events, _ = stream_records(100)
    bad = [(b"bad", bad_event(i)) for i in range(10)]
    mixed = as_records(events)
    records = mixed[:50] + bad[:5] + mixed[50:] + bad[5:]
    worker_factory(s)
    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, records))
    preds = asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, 100, 90, settle=1))
    dlq = asyncio.run(consume(s.kafka.bootstrap, s.topics.dlq, 10, 30, settle=1))

    assert sorted(predictions_by_id(preds)) == sorted(e["event_id"] for e in events)
    letters = [orjson.loads(r.value) for r in dlq]
    assert len(letters) == 10
    reasons = Counter(d["error"].split(":")[0] for d in letters)
    assert reasons == Counter(
        {"not JSON": 2, "event_id": 2, "features.amount": 2, "entity_id": 2, "not a JSON object": 2}
    )
    for d in letters:
        assert d["stage"] in {"decode", "validate"} and d["topic"] == s.topics.events
        assert d["offset"] is not None and d["payload"]


def test_replayed_events_leave_windows_unchanged(demo_settings: Settings, worker_factory) -> None:
    s = demo_settings
    events, _ = stream_records(200)
    worker_factory(s)
    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, as_records(events)))
    asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, 200, 90, settle=1))
    client = redis.Redis.from_url(s.redis.url)
    state_keys = sorted(client.scan_iter(f"{s.redis.prefix}:fw:*"))
    before = [client.get(k) for k in state_keys]

    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, as_records(events[50:150])))
    both = asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, 300, 90, settle=1))

    assert [client.get(k) for k in state_keys] == before
    assert sorted(client.scan_iter(f"{s.redis.prefix}:fw:*")) == state_keys
    assert len(both) == 300
    twice: dict[str, list[dict]] = {}
    for r in both:
        p = orjson.loads(r.value)
        twice.setdefault(p["event_id"], []).append(p)
    assert sorted(k for k, v in twice.items() if len(v) == 2) == sorted(
        e["event_id"] for e in events[50:150]
    )
    last_of_entity = {e["entity_id"]: e["event_id"] for e in sorted(events, key=lambda e: e["ts"])}
    checked = 0
    for event_id in last_of_entity.values():
        if len(twice[event_id]) == 2:  # its windows cannot have moved on since
            first, again = (p["features"] for p in twice[event_id])
            # every window aggregate is the same, and seconds_since_last is the one the event
            # had the first time (its dedupe marker remembers it)
            assert first == again
            checked += 1
    assert checked > 0
    client.close()
