"""Delayed labels teach the model; a SIGKILLed worker loses no event."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import orjson
import pytest
import redis.asyncio as aioredis

from stream.model.snapshots import SnapshotStore
from stream.service.config import Settings
from stream.tools.synthetic import CardStream
from tests.integration.kafka_io import consume, produce
from tests.integration.test_pipeline import as_records, demo_settings  # noqa: F401 - fixture

pytestmark = pytest.mark.integration
KEY = "integration-test-key"


def labelled(n: int, seed: int) -> tuple[list[dict], list[int]]:
    cards = CardStream(seed=seed, n_cards=200, run_id=f"s{seed}")
    pairs = list(cards.events(n))
    return [e for e, _ in pairs], [y for _, y in pairs]


async def _latest(s: Settings, wait_for_learned: int, timeout: float) -> tuple[object, int]:
    client = aioredis.Redis.from_url(s.redis.url)
    store = SnapshotStore(client, s.redis.prefix, s.model.name, KEY.encode())
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            checkpoint = await store.load_checkpoint()
            if checkpoint is not None and checkpoint[0].n_learned >= wait_for_learned:
                return checkpoint[0], len(await store.versions())
            await asyncio.sleep(0.5)
        raise TimeoutError(f"trainer did not learn {wait_for_learned} examples in {timeout}s")
    finally:
        await client.aclose()


def test_labels_are_joined_and_the_model_beats_the_baseline(
    demo_settings: Settings,  # noqa: F811
    worker_factory,
) -> None:
    s = demo_settings
    n = 6000
    stream, stream_ys = labelled(n + 3000, seed=11)
    events, ys = stream[:n], stream_ys[:n]
    worker_factory(s)
    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, as_records(events)))
    asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, n, 120))
    labels = [
        (e["event_id"].encode(), orjson.dumps({"event_id": e["event_id"], "label": y}))
        for e, y in zip(events, ys, strict=True)
    ]
    labels.append((b"x", orjson.dumps({"event_id": "never-scored", "label": 1})))
    asyncio.run(produce(s.kafka.bootstrap, s.topics.labels, labels))

    model, n_versions = asyncio.run(_latest(s, n, 120))
    assert model.n_learned == n  # every label joined once; the unknown one did not
    assert n_versions >= 2

    # judge the learned model on what comes next, with the features the worker computed
    fresh, fresh_ys = stream[n:], stream_ys[n:]
    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, as_records(fresh)))
    out = asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, n + 3000, 120))
    scored = {p["event_id"]: p for p in (orjson.loads(r.value) for r in out)}
    truth = dict(zip((e["event_id"] for e in fresh), fresh_ys, strict=True))
    hits = sum(model.predict(scored[e]["features"]).prediction == y for e, y in truth.items())
    majority = Counter(ys).most_common(1)[0][0]
    baseline = sum(y == majority for y in truth.values())
    # the learned model depends on the order the labels were joined in (batches fetched as
    # they come; SGD at a constant learning rate ends anywhere in its wander): 0.726-0.786
    # accuracy here against a 0.715 majority baseline, which an unlearned model only ties
    assert hits > baseline, (hits, baseline)


def test_labels_that_come_before_their_events_are_learned_once(
    demo_settings: Settings,  # noqa: F811
    worker_factory,
) -> None:
    """Every label is parked, then claimed by its event's prediction store: the claims are
    read after the batch's predictions are published, and learned before it is committed."""
    s = demo_settings
    n = 1500
    events, ys = labelled(n, seed=13)
    worker_factory(s)
    labels = [
        (e["event_id"].encode(), orjson.dumps({"event_id": e["event_id"], "label": y}))
        for e, y in zip(events, ys, strict=True)
    ]
    asyncio.run(produce(s.kafka.bootstrap, s.topics.labels, labels))

    async def parked() -> int:
        client = aioredis.Redis.from_url(s.redis.url)
        try:
            return int(await client.zcard(f"{s.redis.prefix}:parked"))
        finally:
            await client.aclose()

    deadline = time.monotonic() + 120
    while asyncio.run(parked()) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    assert asyncio.run(parked()) == n, "the labels were not all parked"
    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, as_records(events)))
    asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, n, 120))
    model, _ = asyncio.run(_latest(s, n, 120))
    assert model.n_learned == n  # each claimed once
    assert asyncio.run(parked()) == 0


def test_sigkilled_worker_loses_no_event(
    demo_settings: Settings,  # noqa: F811
    worker_factory,
) -> None:
    s = demo_settings
    events, _ = labelled(4000, seed=5)
    worker = worker_factory(s)

    async def paced() -> None:  # 4000 events over ~8 s, so the kill lands mid-stream
        for i in range(0, 4000, 100):
            await produce(s.kafka.bootstrap, s.topics.events, as_records(events[i : i + 100]))
            await asyncio.sleep(0.2)

    producer = threading.Thread(target=asyncio.run, args=(paced(),))
    producer.start()
    seen_before = asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, 800, 60))
    worker.kill()
    assert len(seen_before) < 4000
    worker_factory(s, name="restarted")
    producer.join(60)

    out = asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, 4000, 120, settle=2))
    ids = Counter(orjson.loads(r.value)["event_id"] for r in out)
    assert set(ids) == {e["event_id"] for e in events}


def test_a_label_carried_on_the_event_is_learned_at_once(
    demo_settings: Settings,  # noqa: F811
    worker_factory,
) -> None:
    s = demo_settings
    events, ys = labelled(300, seed=8)
    for event, y in zip(events, ys, strict=True):
        event["label"] = y
    worker_factory(s)
    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, as_records(events)))

    model, _ = asyncio.run(_latest(s, 300, 60))
    assert model.n_learned == 300

    async def waiting() -> int:
        client = aioredis.Redis.from_url(s.redis.url)
        n = len([k async for k in client.scan_iter(f"{s.redis.prefix}:pred:*")])
        await client.aclose()
        return n

    assert asyncio.run(waiting()) == 0  # nothing waits for a label that already came
