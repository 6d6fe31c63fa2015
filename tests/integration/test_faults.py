"""The worker under faults: hostile input, Redis and Kafka outages, kills, pauses, tampering.

The central assertion of every test: 0 lost events (every produced event has a prediction,
matched by event_id, or a dead letter, matched by the (partition, offset) the broker gave
it) and the worker still alive. Duplicates are allowed (at-least-once).

Everything runs against the session's real Kafka broker and Redis on 127.0.0.1; the outage
tests stop and start them through ``scripts/services.py`` (as the fixtures do) and make
sure they run again afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from stream.model.snapshots import SnapshotStore
from stream.service.batches import ingest_group
from stream.service.config import FeatureSpec, RedisSettings, Settings, WorkerSettings
from stream.tools.synthetic import CardStream
from tests.integration.faults import (
    DAY_MS,
    Y2000_MS,
    Outbound,
    Outputs,
    PacedProducer,
    Sent,
    card_events,
    error_lines,
    finite,
    good,
    hold,
    lines_with,
    mix,
    pause_at_write,
    pause_mid_batch,
    poison_messages,
    read_outputs,
    running,
    services,
    stopped,
)
from tests.integration.kafka_io import (
    Collector,
    committed_offsets,
    consume_until,
    produce_with_offsets,
)
from tests.integration.test_pipeline import demo_settings  # noqa: F401 - fixture
from tests.integration.worker_process import ASSIGNED_LINE, WorkerProcess, settings_env

pytestmark = pytest.mark.integration
KEY = "integration-test-key"
LOCAL_SERVICES = not (
    os.environ.get("DRIFTWATCH_TEST_KAFKA") or os.environ.get("DRIFTWATCH_TEST_REDIS")
)
needs_local_services = pytest.mark.skipif(
    not LOCAL_SERVICES, reason="stops and starts Kafka/Redis through scripts/services.py"
)
MAX_OUTAGE_LINES = 5  # "unavailable" warnings per dependency per outage, across agents


# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def fault_settings(demo_settings: Settings) -> Settings:  # noqa: F811
    """The demo's features, windows and model; monitoring off (its calibration is CPU-heavy)."""
    return demo_settings.model_copy(
        update={"monitoring": demo_settings.monitoring.model_copy(update={"enabled": False})}
    )


def with_session_timeout(s: Settings, timeout: str) -> Settings:
    return s.model_copy(update={"worker": s.worker.model_copy(update={"session_timeout": timeout})})


@pytest.fixture(autouse=True)
def services_running_afterwards(kafka_bootstrap: str, redis_url: str) -> Iterator[None]:
    """Whatever a test did, Kafka and Redis run again when it ends."""
    yield
    if LOCAL_SERVICES:
        for name in ("redis", "kafka"):
            if not running(name):
                services("start", name)


def outputs_for(
    s: Settings, sent: list[Sent], timeout: float = 120.0, *workers: WorkerProcess
) -> Outputs:
    """Every output for ``sent``; stops waiting early if all ``workers`` died."""
    t = s.topics
    alive = (lambda: any(w.alive() for w in workers)) if workers else None
    return read_outputs(
        s.kafka.bootstrap, t.events, t.predictions, t.dlq, sent, timeout, 1.0, alive
    )


def produce_all(
    s: Settings, messages: list[Outbound], max_request_size: int = 1_048_576
) -> list[Sent]:
    records = [(m.key, m.value) for m in messages]
    positions = asyncio.run(
        produce_with_offsets(s.kafka.bootstrap, s.topics.events, records, max_request_size)
    )
    return [Sent(m, p, o) for m, (p, o) in zip(messages, positions, strict=True)]


def assert_no_loss(out: Outputs, sent: list[Sent], *workers: WorkerProcess) -> None:
    acc = out.account(sent)
    assert not acc.lost, f"{acc.summary()}\n{out.describe_lost(acc.lost)}"
    for w in workers:
        assert w.alive(), f"worker died:\n{w.tail()}"


def assert_finite_predictions(predictions: list[dict[str, Any]]) -> None:
    bad = [
        p
        for p in predictions
        if not finite(p.get("score"))
        or not isinstance(p.get("proba"), dict)
        or not all(finite(v) for v in p["proba"].values())
    ]
    assert not bad, f"{len(bad)} predictions with a non-finite score or proba, e.g. {bad[:3]}"


def assert_outage_logged(log: str, dependency: str) -> None:
    """One outage: a few "unavailable" warnings (one per agent at most), then recovery."""
    down = lines_with(log, f"{dependency} unavailable")
    up = lines_with(log, f"{dependency} available again")
    assert 1 <= len(down) <= MAX_OUTAGE_LINES, (
        f"{len(down)} '{dependency} unavailable' lines during the outage, want 1 to "
        f"{MAX_OUTAGE_LINES}: {down[:6]}"
    )
    assert up, f"no '{dependency} available again' line after the outage"


def letter_at(out: Outputs, s: Sent) -> dict[str, Any]:
    letters = out.letters.get((s.partition, s.offset))
    preds = out.predictions.get(s.message.event_id or "")
    assert letters, (
        f"{s.message.kind} {s.message.value!r:.200} not dead-lettered (predicted: {preds})"
    )
    return letters[0]


def log_since(w: WorkerProcess, mark: int) -> str:
    return w.log_text()[mark:]


def event_bytes(event: dict[str, Any], **raw: str) -> bytes:
    """``event`` as JSON, with the string placeholders in ``raw`` replaced by raw JSON."""
    out = orjson.dumps(event)
    for placeholder, text in raw.items():
        out = out.replace(f'"{placeholder}"'.encode(), text.encode())
    return out


def labelled(n: int, seed: int, n_cards: int, run_id: str) -> list[dict[str, Any]]:
    """Events that carry their label (learned right after scoring)."""
    cards = CardStream(seed=seed, n_cards=n_cards, run_id=run_id)
    events = []
    for event, y in cards.events(n):
        event["label"] = y
        events.append(event)
    return events


async def snapshot_state(s: Settings) -> tuple[int | None, list[Any], int | None]:
    """(current version, stored versions, checkpoint's n_learned)."""
    client = aioredis.Redis.from_url(s.redis.url)
    store = SnapshotStore(client, s.redis.prefix, s.model.name, KEY.encode())
    try:
        checkpoint = None
        try:
            loaded = await store.load_checkpoint()
            checkpoint = loaded[0].n_learned if loaded else None
        except Exception:  # a tampered checkpoint: not our question here
            checkpoint = None
        return await store.current_version(), await store.versions(), checkpoint
    finally:
        await client.aclose()


def wait_snapshots(s: Settings, check: Any, timeout: float, what: str) -> tuple[Any, ...]:
    deadline = time.monotonic() + timeout
    state = asyncio.run(snapshot_state(s))
    while not check(*state):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no {what} within {timeout}s: current={state[0]}, "
                f"versions={[(v.version, v.valid, v.n_learned) for v in state[1]]}, "
                f"checkpoint n_learned={state[2]}"
            )
        time.sleep(0.5)
        state = asyncio.run(snapshot_state(s))
    return state


def wait_alert(s: Settings, kind: str, status: str, timeout: float) -> list[dict[str, Any]]:
    def found(records: list[Any]) -> bool:
        return any(
            (a := orjson.loads(r.value)).get("kind") == kind and a.get("status") == status
            for r in records
        )

    records = asyncio.run(consume_until(s.kafka.bootstrap, [s.topics.alerts], found, timeout))
    return [orjson.loads(r.value) for r in records]


# --- input hardening ---------------------------------------------------------------------


def test_timestamps_out_of_range_are_dead_lettered(
    fault_settings: Settings, worker_factory
) -> None:
    s = fault_settings
    events = card_events(600, seed=21, n_cards=10, run_id="ts")
    now = int(time.time() * 1000)
    in_3_days = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000 + 3 * 86400))
    cases = {  # raw JSON of the ts field
        "1e300": "1e300",
        "2^64": "18446744073709551616",
        "epoch 0": "0",
        "1999-12-31": str(Y2000_MS - 1000),
        "1999 ISO": '"1999-06-01T00:00:00Z"',
        "+2 days": str(now + 2 * DAY_MS),
        "+3 days ISO": f'"{in_3_days}"',
    }
    bad = []
    for i, (name, ts) in enumerate(cases.items()):
        e = events[i * 40]  # an entity with good events before and after
        body = {**e, "event_id": f"bad-ts-{i}", "ts": "X"}
        bad.append(
            Outbound(
                e["entity_id"].encode(), event_bytes(body, X=ts), body["event_id"], False, name
            )
        )
    w = worker_factory(s)
    sent = produce_all(s, good(events[:300]))
    sent += produce_all(s, bad)
    sent += produce_all(s, good(events[300:]))
    out = outputs_for(s, sent, 120, w)

    assert_no_loss(out, sent, w)
    for item in sent[300 : 300 + len(bad)]:
        letter = letter_at(out, item)
        assert letter["stage"] == "validate", (item.message.kind, letter)
        assert "ts" in letter["error"], (item.message.kind, letter["error"])
        assert item.message.event_id not in out.predictions, item.message.kind
    assert_finite_predictions(out.all_predictions())


def test_numbers_beyond_1e15_are_dead_lettered(fault_settings: Settings, worker_factory) -> None:
    s = fault_settings
    events = card_events(600, seed=22, n_cards=10, run_id="num")
    cases = [
        ("amount", "1e308"),
        ("amount", "-1e308"),
        ("amount", "1.797e308"),
        ("amount", "1.5e15"),
        ("amount", "-2e15"),
        ("amount", "1e16"),
        ("hour", "1e300"),
        ("amount", "18446744073709551616"),
    ]
    bad = []
    for i, (name, number) in enumerate(cases):
        e = events[i * 40]  # the same entity gets good events before and after
        feats = {**e["features"], name: "X"}
        body = {**e, "event_id": f"bad-num-{i}", "features": feats}
        bad.append(
            Outbound(
                e["entity_id"].encode(),
                event_bytes(body, X=number),
                body["event_id"],
                False,
                f"{name}={number}",
            )
        )
    w = worker_factory(s)
    sent = produce_all(s, good(events[:300]))
    sent += produce_all(s, bad)
    sent += produce_all(s, good(events[300:]))
    out = outputs_for(s, sent, 120, w)

    assert_no_loss(out, sent, w)
    for item in sent[300 : 300 + len(bad)]:
        letter = letter_at(out, item)
        name = item.message.kind.split("=")[0]
        assert name in letter["error"], (item.message.kind, letter["error"])
        assert item.message.event_id not in out.predictions, item.message.kind
    assert_finite_predictions(out.all_predictions())
    for p in out.all_predictions():  # no window of a good event holds an extreme value
        assert all(finite(v) or isinstance(v, str) for v in p["features"].values()), p


def test_extreme_labelled_events_do_not_poison_learning(
    fault_settings: Settings, worker_factory
) -> None:
    s = fault_settings
    events = labelled(800, seed=31, n_cards=50, run_id="lx")
    first, second, third = events[:200], events[200:600], events[600:]
    for e in third:
        del e["label"]
    w = worker_factory(s)
    sent = produce_all(s, good(first))
    wait_snapshots(s, lambda cur, vs, n: n is not None and n >= 200, 90, "200 examples learned")

    extremes = []
    for i, (name, number, label) in enumerate(
        [
            ("amount", "1.797e308", 1),
            ("amount", "-1.797e308", 0),
            ("hour", "1.797e308", 1),
            ("amount", "1e308", None),
        ]
    ):
        e = first[i * 10]
        body = {**e, "event_id": f"extreme-{i}", "features": {**e["features"], name: "X"}}
        body["label"] = label
        extremes.append(
            Outbound(
                e["entity_id"].encode(),
                event_bytes(body, X=number),
                body["event_id"],
                False,
                f"{name}={number}",
            )
        )
    sent += produce_all(s, extremes) + produce_all(s, good(second))
    # every good example learned, and a version published that learned later good ones
    wait_snapshots(
        s,
        lambda cur, vs, n: (
            n is not None and n >= 600 and any(v.valid and v.n_learned >= 400 for v in vs)
        ),
        120,
        "600 good examples learned and a version with the later ones",
    )
    sent += produce_all(s, good(third))
    out = outputs_for(s, sent, 120, w)

    assert_no_loss(out, sent, w)
    for item in sent[200:204]:
        letter = letter_at(out, item)
        assert item.message.kind.split("=")[0] in letter["error"], letter["error"]
    after = [p for e in second + third for p in out.predictions[e["event_id"]]]
    assert_finite_predictions(after)
    served = {p["model_version"] for e in third for p in out.predictions[e["event_id"]]}
    assert max(served) >= 1, served


def test_a_megabyte_payload_is_dead_lettered_with_its_digest(
    fault_settings: Settings, worker_factory
) -> None:
    s = fault_settings
    events = card_events(400, seed=23, n_cards=10, run_id="big")
    e = events[0]
    size = 1_000_000
    body = {**e, "event_id": "big-1", "features": {**e["features"], "note": "N"}}
    filler = size - len(orjson.dumps(body)) + 1
    value = event_bytes(body, N=f'"{"x" * filler}"')
    assert len(value) == size
    w = worker_factory(s)
    sent = produce_all(s, good(events[:200]))
    # the broker must accept it (Kafka 3.9: message.max.bytes 1,048,588)
    sent += produce_all(
        s,
        [Outbound(e["entity_id"].encode(), value, "big-1", False, "1 MB")],
        max_request_size=2_000_000,
    )
    sent += produce_all(s, good(events[200:]))
    out = outputs_for(s, sent, 120, w)

    assert_no_loss(out, sent, w)
    letter = letter_at(out, sent[200])
    assert letter["error"]
    assert letter["payload_bytes"] == size
    assert letter["payload_sha256"] == hashlib.sha256(value).hexdigest()
    assert letter["payload_truncated"] is True
    assert len(letter["payload"]) < size
    assert "big-1" not in out.predictions
    assert_finite_predictions(out.all_predictions())


def test_seeded_fuzz_poison_is_dead_lettered_and_good_events_flow(
    fault_settings: Settings, worker_factory
) -> None:
    s = fault_settings
    rng = random.Random(1234)
    events = card_events(2000, seed=41, n_cards=100, run_id="fz-good")
    entities = sorted({e["entity_id"] for e in events})
    bad = poison_messages(rng, 2000, entities, events[0]["ts"])
    messages = mix(rng, good(events), bad)
    w = worker_factory(s)
    sent: list[Sent] = []
    for i in range(0, len(messages), 250):
        sent += produce_all(s, messages[i : i + 250])
    out = outputs_for(s, sent, 180, w)

    assert_no_loss(out, sent, w)
    for item in sent:
        m = item.message
        if not m.good and not (m.event_id is not None and m.event_id in out.predictions):
            assert out.letters[(item.partition, item.offset)][0].get("error"), m.kind
    assert_finite_predictions(out.all_predictions())


# --- infrastructure outages --------------------------------------------------------------


@needs_local_services
@pytest.mark.parametrize("outage_s", [15, 40], ids=["15s", "40s-past-the-expiry-sweep"])
def test_redis_outage_mid_stream_loses_no_event(
    fault_settings: Settings, worker_factory, outage_s: int
) -> None:
    s = fault_settings
    events = card_events(3000, seed=61, n_cards=200, run_id=f"ro{outage_s}")
    w = worker_factory(s)
    with Collector(s.kafka.bootstrap, [s.topics.predictions]) as seen:
        producer = PacedProducer(s.kafka.bootstrap, s.topics.events, good(events), rate=100).start()
        try:
            seen.wait_for(
                lambda c: c.count(s.topics.predictions) >= 900, 60, "30% predicted", alive=w.alive
            )
            mark = len(w.log_text())
            with stopped("redis"):
                hold(outage_s, [w])
            assert producer.join(120), "producer did not finish"
        finally:
            producer.stop()
    assert producer.error is None, producer.error
    out = outputs_for(s, producer.produced(), 180, w)

    assert_no_loss(out, producer.produced(), w)
    log = log_since(w, mark)
    assert_outage_logged(log, "redis")


@needs_local_services
def test_kafka_outage_mid_stream_loses_no_event(
    fault_settings: Settings, worker_factory, caplog: pytest.LogCaptureFixture
) -> None:
    """Kafka goes away while the worker has a batch in hand: it must retry, not ack, and
    log the outage in a few lines (not one per failed request)."""
    caplog.set_level(logging.CRITICAL, logger="aiokafka")  # this process's clients complain too
    s = fault_settings
    events = card_events(3000, seed=62, n_cards=200, run_id="ko")
    w = worker_factory(s)
    with Collector(s.kafka.bootstrap, [s.topics.predictions]) as seen:
        producer = PacedProducer(s.kafka.bootstrap, s.topics.events, good(events), rate=100).start()
        try:
            seen.wait_for(
                lambda c: c.count(s.topics.predictions) >= 900, 60, "30% predicted", alive=w.alive
            )
            assert producer.pause(30), "producer did not pause"
            mark = len(w.log_text())
            # a backlog the worker has fetched but not yet published when the broker goes:
            # freeze it with one of the burst's batches in hand, stop Kafka, let it run on.
            # (Frozen right after the burst was acknowledged, it had once published the whole
            # burst already and had nothing to retry: no outage in its log. Frozen by polling
            # for the moment between a batch's read and write, it once missed all of a busy
            # machine's few batches of the burst.)
            burst = card_events(1500, seed=65, n_cards=200, run_id="ko-burst", start=1000)
            caught, burst_sent = pause_at_write(w, s.redis.url, lambda: produce_all(s, good(burst)))
            assert caught, "the worker was not frozen with a batch in hand"
            try:
                with stopped("kafka"):
                    w.resume()
                    hold(15, [w])
            finally:
                w.resume()
            producer.resume()
            assert producer.join(180), "producer did not finish"
        finally:
            producer.stop()
    assert producer.error is None, producer.error
    sent = producer.produced() + burst_sent
    out = outputs_for(s, sent, 180, w)

    assert_no_loss(out, sent, w)
    log = log_since(w, mark)
    errors = error_lines(log)
    assert len(errors) < 300, f"{len(errors)} ERROR lines, e.g. {errors[:5]}"
    assert_outage_logged(log, "kafka")


# --- process faults ----------------------------------------------------------------------


def test_repeated_sigkill_loses_no_event(fault_settings: Settings, worker_factory) -> None:
    s = with_session_timeout(fault_settings, "6s")  # a killed member leaves the group sooner
    events = card_events(3000, seed=63, n_cards=200, run_id="kill")
    w = worker_factory(s)
    with Collector(s.kafka.bootstrap, [s.topics.predictions]) as seen:
        producer = PacedProducer(s.kafka.bootstrap, s.topics.events, good(events), rate=80).start()
        try:
            progress = 0
            for kill in range(3):
                target = progress + 300
                seen.wait_for(
                    lambda c, t=target: c.count(s.topics.predictions) >= t,
                    90,
                    f"{target} predictions",
                    alive=w.alive,
                )
                assert not producer.finished, "the stream ended before the kills"
                w.kill()
                w = worker_factory(s, name=f"restarted-{kill}")
                progress = seen.count(s.topics.predictions)
            assert producer.join(120), "producer did not finish"
        finally:
            producer.stop()
    assert producer.error is None, producer.error
    out = outputs_for(s, producer.produced(), 180, w)

    assert_no_loss(out, producer.produced(), w)


def test_sigstop_past_the_session_timeout_keeps_windows_exact(
    fault_settings: Settings, worker_factory
) -> None:
    """A is frozen between reading its batch's states and writing them; B takes over and
    moves those entities on; A wakes up and finishes its batch. A blind write of A's stale
    states would lose B's updates (the windows would no longer match the events)."""
    from stream.features import offline, plan, windows
    from stream.features import state as codec

    s = with_session_timeout(fault_settings, "6s")
    t = s.topics
    events = card_events(6000, seed=64, n_cards=20, run_id="stop")
    a = worker_factory(s, name="a")
    b = worker_factory(s, name="b")
    a.wait_for_log(ASSIGNED_LINE, 60, occurrences=2)  # rebalanced: A and B share the partitions
    sent: list[Sent] = []
    with Collector(s.kafka.bootstrap, [t.predictions]) as seen:
        progress = Outputs(t.events, t.predictions, t.dlq)

        def all_predicted(c: Collector) -> bool:
            progress.feed(c.records(t.predictions))
            return not progress.lost(sent)

        def paced(batch: list[dict], rate: float) -> PacedProducer:
            return PacedProducer(s.kafka.bootstrap, t.events, good(batch), rate).start()

        both = lambda: a.alive() and b.alive()  # noqa: E731
        warmup = paced(events[:1000], 250)
        assert warmup.join(60)
        sent += warmup.produced()
        seen.wait_for(all_predicted, 90, "warm-up predicted", alive=both)
        # a backlog all at once: A works on big batches, and is frozen in one of them
        b_assigned = b.log_text().count(ASSIGNED_LINE)
        a_assigned = a.log_text().count(ASSIGNED_LINE)
        caught: list[bool] = []
        watcher = threading.Thread(target=lambda: caught.append(pause_mid_batch(a, s.redis.url)))
        watcher.start()
        try:
            sent += produce_all(s, good(events[1000:4500]))
            watcher.join(20)
            assert caught, "A was not paused"
            hold(8, [b])  # longer than the session timeout
            b.wait_for_log(ASSIGNED_LINE, 60, occurrences=b_assigned + 1)  # B took over
            # B processed A's partitions (A's frozen batch included) before A goes on
            seen.wait_for(all_predicted, 90, "burst predicted by B", alive=b.alive)
        finally:
            watcher.join(20)
            a.resume()
        a.wait_for_log(ASSIGNED_LINE, 60, occurrences=a_assigned + 1)  # A rejoined
        tail = paced(events[4500:], 500)
        assert tail.join(60)
        sent += tail.produced()
    out = outputs_for(s, sent, 180, a, b)

    assert_no_loss(out, sent, a, b)
    windowed = [f for f in s.features if f.windows]
    inputs = [
        windows.FeatureInput(
            e["event_id"], e["entity_id"], e["ts"], {"amount": e["features"]["amount"]}
        )
        for e in events
    ]
    expected = {r.entity_id: r for r in offline.recompute_offline(inputs, windowed, s.windows)}
    client = sync_redis.Redis.from_url(s.redis.url)
    try:
        wrong = {}
        for entity, want in expected.items():
            raw = client.get(f"{s.redis.prefix}:fw:{entity}")
            state = codec.decode_state(raw)
            got = windows.window_aggregates(state, want.ts_ms, windowed, s.windows)
            for name, value in want.enriched.items():
                if name == plan.SINCE_LAST:
                    continue
                if got.get(name) != pytest.approx(value, rel=1e-9, abs=1e-9):
                    wrong.setdefault(entity, []).append((name, got.get(name), value))
    finally:
        client.close()
    assert not wrong, (
        f"{len(wrong)} of {len(expected)} entities differ from the offline recomputation "
        f"(name, redis, offline): {list(wrong.items())[:3]}"
    )


# --- concurrent writers, without Kafka ---------------------------------------------------


def _first_read_waits(
    mget: Callable[..., Awaitable[Any]], barrier: asyncio.Barrier
) -> Callable[..., Awaitable[Any]]:
    """``mget`` whose first call returns only once ``barrier`` is full."""
    calls = 0

    async def read(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        found = await mget(*args, **kwargs)
        if calls == 1:
            await asyncio.wait_for(barrier.wait(), 30)
        return found

    return read


async def test_concurrent_processors_lose_no_window_update(redis_url: str, uid: str) -> None:
    from stream.features import state as codec
    from stream.features import windows
    from stream.ingest.scoring import EventProcessor
    from stream.model.online import create_model
    from stream.records import Incoming
    from stream.service.metrics import Metrics

    amount = FeatureSpec(name="amount", impute=0.0, windows=("1h",))  # longer than the span
    s = Settings(
        redis=RedisSettings(url=redis_url, prefix=f"test-lu-{uid}"),
        worker=WorkerSettings(metrics_address="127.0.0.1:0"),
        features=[amount],
    )
    t0, n_batches, per_batch = 1_763_800_000_000, 50, 20
    total = 2 * n_batches * per_batch
    events = [
        {
            "event_id": f"lu-{i}",
            "entity_id": "hot",
            "ts": t0 + 10 * i,
            "features": {"amount": float(i % 97)},
        }
        for i in range(total)
    ]

    def batches(parity: int) -> list[list[Incoming]]:
        mine = [e for i, e in enumerate(events) if i % 2 == parity]  # interleaved in time
        return [
            [
                Incoming("events", parity, k * per_batch + j, b"hot", orjson.dumps(e))
                for j, e in enumerate(mine[k * per_batch : (k + 1) * per_batch])
            ]
            for k in range(n_batches)
        ]

    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    # Both processors read their first batch's state before either writes it, whatever
    # the machine's timing: one of the two writes conflicts (on a slow machine the two
    # once fell into lock-step, each reading after the other's write, and none did).
    both_read = asyncio.Barrier(2)
    for client in clients:
        client.mget = _first_read_waits(client.mget, both_read)  # type: ignore[method-assign]
    metrics = [Metrics(), Metrics()]
    model = create_model(s.model, s.features)
    processors = [
        EventProcessor(s, c, lambda: model, m) for c, m in zip(clients, metrics, strict=True)
    ]

    async def run(p: EventProcessor, work: list[list[Incoming]]) -> None:
        for batch in work:
            await p.process(batch)

    try:
        await asyncio.gather(run(processors[0], batches(0)), run(processors[1], batches(1)))
        raw = await clients[0].get(f"{s.redis.prefix}:fw:hot")
    finally:
        for c in clients:
            await c.aclose()
    state = codec.decode_state(raw)
    got = windows.window_aggregates(state, events[-1]["ts"], [amount], s.windows)
    assert got["amount_count_1h"] == total, got
    assert got["amount_sum_1h"] == pytest.approx(sum(e["features"]["amount"] for e in events))
    assert all(hasattr(m, "state_conflicts") for m in metrics), "Metrics.state_conflicts missing"
    conflicts = sum(
        sample.value
        for m in metrics
        for metric in m.registry.collect()
        if metric.name == "driftwatch_state_write_conflicts"
        for sample in metric.samples
        if sample.name == "driftwatch_state_write_conflicts_total"
    )
    assert conflicts > 0


# --- start-up checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "setting"),
    [("wrong-password", "password"), ("rediss-on-plaintext", "url")],
)
def test_worker_refuses_to_start_with_bad_redis_settings(
    fault_settings: Settings, tmp_path: Path, case: str, setting: str
) -> None:
    s = fault_settings
    env = {**settings_env(s), "DRIFTWATCH_SNAPSHOT_KEY": KEY}
    if case == "wrong-password":
        env["DRIFTWATCH_REDIS_PASSWORD"] = "wrong"  # noqa: S105 - the point
    else:
        tls = s.redis.model_copy(update={"url": s.redis.url.replace("redis://", "rediss://", 1)})
        env = {**settings_env(s.model_copy(update={"redis": tls})), "DRIFTWATCH_SNAPSHOT_KEY": KEY}
    events = card_events(20, seed=24, n_cards=5, run_id="start")
    produce_all(s, good(events))  # something it could consume, if it started anyway

    stdout, stderr = tmp_path / "stdout.log", tmp_path / "stderr.log"
    t0 = time.monotonic()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream.service.cli", "worker"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            rc: int | None = proc.wait(45)
        except subprocess.TimeoutExpired:
            rc = None
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    elapsed = time.monotonic() - t0
    text = stderr.read_text(errors="replace")
    committed = asyncio.run(committed_offsets(s.kafka.bootstrap, ingest_group(s), s.topics.events))
    predictions = asyncio.run(
        consume_until(s.kafka.bootstrap, [s.topics.predictions], lambda r: len(r) > 0, 5)
    )

    assert rc is not None, f"the worker started (still running after 45 s):\n{text[-1500:]}"
    assert rc != 0 and elapsed < 35, (rc, elapsed)
    lines = [line for line in text.splitlines() if line.startswith("driftwatch: cannot start:")]
    assert len(lines) == 1, text[-3000:]
    assert "redis" in lines[0].lower() and setting in lines[0].lower(), lines[0]
    assert not [o for o in committed.values() if o >= 0], committed
    assert not predictions


# --- tampered snapshots ------------------------------------------------------------------


def test_a_tampered_current_version_is_not_served(fault_settings: Settings, worker_factory) -> None:
    # a version after every learned batch: 600 examples (at most 500 a batch) give two
    s = fault_settings.model_copy(
        update={"model": fault_settings.model.model_copy(update={"publish_every": 1})}
    )
    w = worker_factory(s)
    produce_all(s, good(labelled(600, seed=71, n_cards=100, run_id="tv")))
    wait_snapshots(
        s,
        lambda cur, vs, n: n is not None and n >= 600 and cur is not None and len(vs) >= 2,
        120,
        "600 learned and 2 versions",
    )
    w.stop()
    current, _, _ = asyncio.run(snapshot_state(s))
    client = sync_redis.Redis.from_url(s.redis.url)
    try:
        key = f"{s.redis.prefix}:model:{s.model.name}:v:{current}"
        assert client.hset(key, "sig", "ab" * 32) == 0  # the field existed: overwritten
    finally:
        client.close()
    _, versions, _ = asyncio.run(snapshot_state(s))
    valid = max(v.version for v in versions if v.valid)
    assert current is not None and 1 <= valid < current, (current, versions)

    w2 = worker_factory(s, name="restarted")
    fresh = card_events(200, seed=72, n_cards=100, run_id="tv-after")
    sent = produce_all(s, good(fresh))
    out = outputs_for(s, sent, 120, w2)
    alerts = wait_alert(s, "model_health", "firing", 60)

    assert_no_loss(out, sent, w2)
    served = Counter(p["model_version"] for e in fresh for p in out.predictions[e["event_id"]])
    assert set(served) == {valid}, f"served {served}; newest valid {valid}, tampered {current}"
    assert any(a["kind"] == "model_health" and a["status"] == "firing" for a in alerts), alerts


def test_a_tampered_checkpoint_does_not_stop_learning(
    fault_settings: Settings, worker_factory
) -> None:
    s = fault_settings
    w = worker_factory(s)
    produce_all(s, good(labelled(400, seed=73, n_cards=100, run_id="tc")))
    wait_snapshots(
        s, lambda cur, vs, n: n is not None and n >= 400 and len(vs) >= 1, 120, "400 learned"
    )
    w.stop()
    _, versions, _ = asyncio.run(snapshot_state(s))
    newest = max(v.version for v in versions)
    client = sync_redis.Redis.from_url(s.redis.url)
    try:
        assert (
            client.hset(f"{s.redis.prefix}:model:{s.model.name}:checkpoint", "sig", "cd" * 32) == 0
        )
    finally:
        client.close()

    w2 = worker_factory(s, name="restarted")
    sent = produce_all(s, good(labelled(400, seed=74, n_cards=100, run_id="tc-after")))
    out = outputs_for(s, sent, 120, w2)
    try:
        wait_snapshots(
            s,
            lambda cur, vs, n: any(v.valid and v.version > newest for v in vs),
            90,
            f"version after {newest}",
        )
        published = None
    except TimeoutError as exc:
        published = str(exc)
    alerts = wait_alert(s, "model_health", "firing", 30)

    assert_no_loss(out, sent, w2)
    tracebacks = w2.log_text().count("Traceback (most recent call last)")
    assert tracebacks <= 1, f"{tracebacks} tracebacks:\n{w2.tail(60)}"
    assert any(a["kind"] == "model_health" and a["status"] == "firing" for a in alerts), alerts
    assert published is None, f"{published}\n{w2.tail(40)}"
