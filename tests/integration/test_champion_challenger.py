"""Champion and challengers on the real broker: a concept change starts a challenger, which
overtakes the champion on delayed labels and is promoted; an operator rolls back.

Two workers score card events; labels follow their events 200 events later. The fraud rule
changes at event 4,000. The champion's concept-drift (or performance) alert starts a fresh
challenger of the same pipeline, learning from the alert's event time on; it is compared
with the champion on the same labelled events and promoted automatically once it is
significantly better (a false alarm before the change may start another challenger first:
the test follows the one learning from at most a label delay before the change on). Events
after the promotion are served by it. Every step is a ``model_lifecycle`` alert and a line
of the lineup's history. ``driftwatch model promote --challenger`` (the real CLI, in a
subprocess) then makes the champion before the promotion serve again, on both workers
within seconds, and the policy does not undo that. No event is lost: each has one served
prediction naming the model and version that made it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from stream.model.lineup import Lineup
from stream.service.config import Settings
from stream.tools.synthetic import CardStream, Drift
from tests.integration.kafka_io import consume_until
from tests.integration.test_monitoring import START_MS, STEP_MS, with_monitoring
from tests.integration.worker_process import settings_env

pytestmark = pytest.mark.integration
CHANGE = 4_000
N = 12_000
DELAY = 200
MIDDLE = 300  # events after the promotion
EXTRA = 300  # events after the rollback


def lifecycle_settings(settings: Settings) -> Settings:
    s = with_monitoring(settings, subjects=("amount",))
    # at the sample's learning rate (0.05) the champion unlearns the old rule within about
    # 1,000 events, as fast as a fresh model learns the new one: a challenger's lead is then
    # a matter of luck. At 0.02 a fresh model leads clearly for the first 1,000 labels or so.
    return s.model_copy(
        update={
            "model": s.model.model_copy(update={"learning_rate": 0.02}),
            "lifecycle": s.lifecycle.model_copy(
                update={
                    "auto_promote": True,
                    "retrain_on": ("concept_drift", "performance"),
                    "min_labels": 300,
                    "compare_window": 1000,
                }
            ),
        }
    )


async def produce_with_delayed_labels(
    s: Settings, events: list[tuple[dict, int]], rate: float
) -> None:
    """Each event, then the label of the event ``DELAY`` before it, at ``rate`` events/s."""
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        t0 = time.monotonic()
        for i, (event, _) in enumerate(events):
            await producer.send(
                s.topics.events, orjson.dumps(event), key=event["entity_id"].encode()
            )
            if i >= DELAY:
                old, y = events[i - DELAY]
                label = {"event_id": old["event_id"], "label": y, "ts": event["ts"]}
                await producer.send(
                    s.topics.labels, orjson.dumps(label), key=old["entity_id"].encode()
                )
            if i % 200 == 199:
                await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
        for old, y in events[-DELAY:]:
            label = {"event_id": old["event_id"], "label": y}
            await producer.send(s.topics.labels, orjson.dumps(label), key=old["entity_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def last_versions(s: Settings, models: list[str]) -> dict[str, int]:
    """The last version number handed out per model (its ``seq``)."""
    redis = aioredis.from_url(s.redis.url)
    try:
        return {m: int(await redis.get(f"{s.redis.prefix}:model:{m}:seq") or 0) for m in models}
    finally:
        await redis.aclose()


async def history(s: Settings) -> tuple[list[dict[str, Any]], str | None]:
    redis = aioredis.from_url(s.redis.url)
    try:
        lineup = Lineup(redis, s.redis.prefix)
        entries = await lineup.entries()
        champion = next((n for n, e in entries.items() if e.role == "champion"), None)
        return await lineup.history(), champion
    finally:
        await redis.aclose()


def read(s: Settings, topics: list[str], done: Any, timeout: float) -> list[dict[str, Any]]:
    records = asyncio.run(consume_until(s.kafka.bootstrap, topics, done, timeout))
    return [{**orjson.loads(r.value), "_topic": r.topic} for r in records]


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_drift_triggered_challenger_is_promoted_and_rolled_back(
    settings: Settings, worker_factory
) -> None:
    s = lifecycle_settings(settings)
    champion = s.model.name
    cards = CardStream(
        seed=21, drifts=(Drift("concept", CHANGE),), run_id="cc", start_ms=START_MS, step_ms=STEP_MS
    )
    events = list(cards.events(N + MIDDLE + EXTRA))
    worker_factory(s, name="a")
    worker_factory(s, name="b")
    asyncio.run(produce_with_delayed_labels(s, events[:N], rate=1500.0))

    def promoted() -> dict[str, Any] | None:
        """The first promotion by the policy of a challenger that learns the new rule: one
        learning from at most a label delay before the change on (a false alarm before it
        may have started, even promoted, another one first; one whose window happened to
        end just before the change learns the new rule all the same)."""
        steps, _ = asyncio.run(history(s))
        starts = {a["subject"]: a for a in steps if a["detector"] == "started"}
        return next(
            (a for a in steps if a["detector"] == "promoted" and a["subject"] in starts
             and index_of(starts[a["subject"]]["evidence"]["learns_from_ts"]) >= CHANGE - DELAY
             and index_of(a["ts"]) > CHANGE),
            None,
        )  # fmt: skip

    try:
        promotion = wait_for(promoted, 180, "an automatic promotion")
    except AssertionError:
        steps, _ = asyncio.run(history(s))
        raise AssertionError(
            "no automatic promotion; lineup history: "
            + repr([(a["detector"], a["subject"], index_of(a["ts"]), a["evidence"]) for a in steps])
        ) from None
    steps, _ = asyncio.run(history(s))
    challenger = promotion["subject"]
    start = next(a for a in steps if a["detector"] == "started" and a["subject"] == challenger)
    assert start["evidence"]["trigger_kind"] in ("concept_drift", "performance")
    ev = promotion["evidence"]
    assert ev["by"] == "policy"
    assert ev["labels"] >= 300 and ev["p_value"] < 0.01 and ev["margin"] >= 0.02
    assert ev["challenger_metric"] > ev["champion_metric"]
    promoted_at = index_of(promotion["ts"])
    print(f"challenger {challenger} started at event {index_of(start['ts'])} "
          f"(+{index_of(start['ts']) - CHANGE}), promoted at {promoted_at} "
          f"(+{promoted_at - CHANGE}): {ev}; lineup history "
          f"{[(a['detector'], a['subject'], index_of(a['ts'])) for a in steps]}")  # fmt: skip

    # the same steps reached the alerts topic, as model_lifecycle alerts
    def lifecycle_alerts(records: list[Any]) -> bool:
        alerts = [orjson.loads(r.value) for r in records]
        return {("started", challenger), ("promoted", challenger)} <= {
            (a["detector"], a["subject"]) for a in alerts if a["kind"] == "model_lifecycle"
        }

    read(s, [s.topics.alerts], lifecycle_alerts, 60)
    assert {("started", challenger), ("promoted", challenger)} <= {
        (a["detector"], a["subject"]) for a in steps
    }

    # events after the promotion are served by the promoted model (or by one the policy
    # promoted after it: a slow learner may still be deciding), on both workers
    middle = events[N : N + MIDDLE]
    asyncio.run(produce_with_delayed_labels(s, middle, rate=1500.0))
    ids = {e["event_id"] for e, _ in middle}
    got = read(s, [s.topics.predictions], lambda r: served_all(r, ids, s.topics.predictions), 120)
    steps, _ = asyncio.run(history(s))
    promoted_since = {a["subject"] for a in steps[steps.index(promotion) :]
                      if a["detector"] == "promoted"}  # fmt: skip
    assert {p["model"] for p in got if p["event_id"] in ids} <= promoted_since

    # the operator rolls back to the champion before the last promotion: it serves again on
    # both workers within seconds, and the policy promotes none of the models now there
    old = [a for a in steps if a["detector"] == "promoted"][-1]["evidence"]["previous_champion"]
    cli = subprocess.run(
        [sys.executable, "-m", "stream.service.cli", "model", "promote", "--challenger", old],
        env=settings_env(s), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert f"model {old!r} promoted to champion over " in cli.stdout
    steps, now_serving = asyncio.run(history(s))
    assert now_serving == old
    assert (steps[-1]["detector"], steps[-1]["subject"]) == ("promoted", old)
    assert steps[-1]["evidence"]["by"] == "operator"
    lineup = [a["subject"] for a in steps if a["detector"] == "started"] + [champion]
    time.sleep(3.0)
    asyncio.run(produce_with_delayed_labels(s, events[N + MIDDLE :], rate=1500.0))

    want = {e["event_id"] for e, _ in events}
    outputs = read(
        s, [s.topics.predictions, s.topics.shadow],
        lambda r: served_all(r, want, s.topics.predictions), 120,
    )  # fmt: skip
    served = [p for p in outputs if p["_topic"] == s.topics.predictions]
    shadow = [p for p in outputs if p["_topic"] == s.topics.shadow]
    # nothing lost, nothing served twice (a redelivery would repeat the same prediction)
    assert {p["event_id"] for p in served} == want
    by_event = {p["event_id"]: p for p in served}
    assert max(Counter((p["event_id"], p["model"]) for p in served).values()) <= 2
    models = Counter(p["model"] for p in served)
    assert {champion, challenger, old} <= set(models) <= set(lineup), models
    # each prediction names the model and a version of that model (not another's)
    last = asyncio.run(last_versions(s, list(models)))
    for model in models:
        versions = [p["model_version"] for p in outputs if p["model"] == model]
        assert min(versions) >= 0 and max(versions) <= last[model], (model, max(versions), last)
    # after the rollback every event is served by the model rolled back to, and it stays
    after = [by_event[e["event_id"]] for e, _ in events[N + MIDDLE :]]
    assert {p["model"] for p in after} == {old}, Counter(p["model"] for p in after)
    steps, now_serving = asyncio.run(history(s))
    last_promotion = [a for a in steps if a["detector"] == "promoted"][-1]
    assert now_serving == old and last_promotion["evidence"]["by"] == "operator", last_promotion
    # the other models were scored in shadow while they were not served
    assert {p["model"] for p in shadow} >= {champion, challenger}
    assert {p["event_id"] for p in shadow if p["model"] != old} >= {
        e["event_id"] for e, _ in events[N + MIDDLE :]
    }


def served_all(records: list[Any], ids: set[str], topic: str) -> bool:
    return {orjson.loads(r.value)["event_id"] for r in records if r.topic == topic} >= ids


def index_of(ts: int) -> int:
    return (int(ts) - START_MS) // STEP_MS
