"""Drift, performance and quality alerts from real workers on the real broker."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson
import pytest

from stream.service.batches import consumer_group
from stream.service.config import Settings, load_settings
from stream.service.topics import train_topic_name
from stream.tools.synthetic import CardStream, Drift
from tests.integration.kafka_io import consume, produce, wait_consumed

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
START_MS = 1_763_800_000_000
STEP_MS = 50


def with_monitoring(settings: Settings, **monitoring: object) -> Settings:
    sample = load_settings(REPO / "driftwatch.toml")
    return settings.model_copy(
        update={
            "features": sample.features,
            "windows": sample.windows,
            "model": sample.model,
            "monitoring": sample.monitoring.model_copy(update=monitoring),
        }
    )


def card_records(
    n: int, drifts: tuple[Drift, ...] = (), seed: int = 21
) -> list[tuple[bytes, bytes]]:
    cards = CardStream(seed=seed, drifts=drifts, run_id="m", start_ms=START_MS, step_ms=STEP_MS)
    return [(e["entity_id"].encode(), orjson.dumps(e)) for e, _ in cards.events(n)]


def alerts_of(records: list) -> list[dict]:
    return [orjson.loads(r.value) for r in records]


def monitored(s: Settings, timeout: float = 300) -> None:
    """Wait until the monitors applied everything the scorers sent them."""
    group = consumer_group(s, s.topics.monitor)
    asyncio.run(wait_consumed(s.kafka.bootstrap, group, s.topics.monitor, timeout))


def index_of(ts: int) -> int:
    return (ts - START_MS) // STEP_MS


RAW = ("amount", "hour", "merchant_category")


def produce_paced(s: Settings, records: list[tuple[bytes, bytes]], rate: float = 2000.0) -> None:
    """Produce like a live source (~rate events/s), so the partitions advance together and
    a detection delay in events means something."""

    async def go() -> None:
        for i in range(0, len(records), 200):
            await produce(s.kafka.bootstrap, s.topics.events, records[i : i + 200])
            await asyncio.sleep(200 / rate)

    asyncio.run(go())


def test_injected_drift_fires_once_per_detector_and_resolves(
    settings: Settings, worker_factory
) -> None:
    s = with_monitoring(settings, subjects=RAW)
    drift = Drift("mean_shift", 4000, 7000)
    worker_factory(s)
    produce_paced(s, card_records(11_000, (drift,)))
    asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, 11_000, 180))
    monitored(s)
    # 3 numeric detectors fire and resolve on amount: 6 alerts
    alerts = alerts_of(asyncio.run(consume(s.kafka.bootstrap, s.topics.alerts, 6, 240, settle=5)))

    drift_alerts = [a for a in alerts if a["kind"] == "data_drift"]
    by = Counter((a["subject"], a["detector"], a["status"]) for a in drift_alerts)
    assert by == Counter(
        {
            ("amount", d, status): 1
            for d in ("ks", "psi", "wasserstein")
            for status in ("firing", "resolved")
        }
    ), by
    for a in drift_alerts:
        if a["status"] == "firing":
            caught = index_of(a["window"]["to_ts"])
            print(f"{a['detector']}: injected at 4000, firing at event {caught} (+{caught - 4000})")
            assert 4000 <= caught <= 4000 + 1000, a  # delays measured: README
            assert a["statistic"] > a["threshold"] and a["reference"]["n"] == 2000
        else:
            assert index_of(a["window"]["to_ts"]) >= 7000
    firing = {a["detector"]: a["alert_id"] for a in drift_alerts if a["status"] == "firing"}
    resolved = {a["detector"]: a["alert_id"] for a in drift_alerts if a["status"] == "resolved"}
    assert firing == resolved


def test_two_workers_still_raise_one_alert_per_episode(settings: Settings, worker_factory) -> None:
    s = with_monitoring(settings, subjects=RAW, reference_size=2000, window=500)
    drift = Drift("category_mix", 4000)
    worker_factory(s, name="a")
    worker_factory(s, name="b")
    # the two workers score concurrently, both feed the one merchant_category monitor
    produce_paced(s, card_records(8000, (drift,)))
    asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, 8000, 180))
    monitored(s)
    alerts = alerts_of(asyncio.run(consume(s.kafka.bootstrap, s.topics.alerts, 1, 120, settle=8)))

    by = Counter(
        (a["subject"], a["detector"], a["status"]) for a in alerts if a["kind"] == "data_drift"
    )
    assert by == Counter({("merchant_category", "chi2", "firing"): 1}), by


def test_concept_change_raises_a_performance_alert(settings: Settings, worker_factory) -> None:
    s = with_monitoring(
        settings, subjects=("amount",), performance_window=400, performance_reference=1500
    )
    cards = CardStream(seed=4, drifts=(Drift("concept", 5000),), run_id="c", start_ms=START_MS)
    pairs = list(cards.events(9000))
    worker_factory(s)
    events = [(e["entity_id"].encode(), orjson.dumps(e)) for e, _ in pairs]
    labels = [
        (e["event_id"].encode(), orjson.dumps({"event_id": e["event_id"], "label": y}))
        for e, y in pairs
    ]
    for i in range(0, 9000, 500):  # labels follow their events
        asyncio.run(produce(s.kafka.bootstrap, s.topics.events, events[i : i + 500]))
        asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, i + 500, 60))
        asyncio.run(produce(s.kafka.bootstrap, s.topics.labels, labels[i : i + 500]))
    asyncio.run(
        wait_consumed(s.kafka.bootstrap, consumer_group(s, s.topics.labels), s.topics.labels, 120)
    )
    # and learned: the alerts come from the trainer, which may run behind the join
    asyncio.run(
        wait_consumed(
            s.kafka.bootstrap, consumer_group(s, train_topic_name(s)), train_topic_name(s), 120
        )
    )
    alerts = alerts_of(asyncio.run(consume(s.kafka.bootstrap, s.topics.alerts, 1, 120, settle=5)))

    perf = [a for a in alerts if a["kind"] == "performance" and a["status"] == "firing"]
    assert perf, [(a["kind"], a["subject"]) for a in alerts]
    assert any(a["subject"] in a["message"] for a in perf)
    assert {a["kind"] for a in alerts} >= {"performance", "concept_drift"}, [
        (a["kind"], a["subject"], a["status"], index_of(a["ts"]), a.get("evidence")) for a in alerts
    ]


def test_stationary_stream_raises_no_alert_at_the_defaults(
    settings: Settings, worker_factory
) -> None:
    s = with_monitoring(settings)
    n = 100_000
    worker_factory(s)
    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, card_records(n, seed=99)))
    asyncio.run(consume(s.kafka.bootstrap, s.topics.predictions, n, 600))
    monitored(s, 600)
    alerts = alerts_of(asyncio.run(consume(s.kafka.bootstrap, s.topics.alerts, 1, 5, settle=0)))
    assert alerts == []
