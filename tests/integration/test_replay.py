"""``driftwatch replay`` on the real broker and Redis: a labelled card stream, a sub-range of
it replayed through the command, its outputs checked against the stream."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from stream.model.lineup import Lineup, configured
from stream.model.online import create_model
from stream.model.snapshots import SnapshotStore
from stream.service.config import Settings, load_settings
from stream.timestamps import now_ms
from stream.tools.synthetic import CardStream
from tests.integration.kafka_io import consume_until, record_count
from tests.integration.worker_process import settings_env

REPO = Path(__file__).resolve().parents[2]
KEY = "integration-test-key"
N, STEP_MS, LABEL_DELAY = 1200, 1000, 30  # events, event-time step, label delay (events)
FIRST, LAST = 300, 900  # the replayed range: events FIRST..LAST-1
pytestmark = pytest.mark.integration


@pytest.fixture
def cards(settings: Settings) -> Settings:
    """The test's topics and prefix with the sample configuration's features and model, in
    batches of 50 records: the model learns many times over the range."""
    sample = load_settings(REPO / "driftwatch.toml")
    model = sample.model.model_copy(update={"role": "champion"})
    worker = settings.worker.model_copy(update={"batch_size": 50})
    return settings.model_copy(
        update={"features": sample.features, "windows": sample.windows, "model": model,
                "models": (model,), "worker": worker}
    )  # fmt: skip


def labelled_stream(s: Settings, t0: int) -> tuple[list[tuple[int, str, bytes, bytes]], dict]:
    """Events one STEP_MS apart from t0 and their labels LABEL_DELAY events later, each
    stamped with its own time, plus malformed events; and the label of every event id."""
    stream = CardStream(seed=11, n_cards=40, start_ms=t0, step_ms=STEP_MS, run_id="rp")
    records, labels = [], {}
    for i in range(N):
        event, y = stream.event(i)
        key, ts = event["entity_id"].encode(), event["ts"]
        labels[event["event_id"]] = y
        records.append((ts, s.topics.events, key, orjson.dumps(event)))
        label = {"event_id": event["event_id"], "label": y, "ts": ts + LABEL_DELAY * STEP_MS}
        records.append((label["ts"], s.topics.labels, key, orjson.dumps(label)))
    inside = t0 + (FIRST + 10) * STEP_MS + 500
    records += [
        (inside, s.topics.events, b"bad", b"{not json"),  # no ts: its record time is in range
        (inside, s.topics.events, b"bad", b"[1, 2, 3]"),
        (inside, s.topics.events, b"bad", b'{"event_id": "rp-x", "ts": %d}' % inside),
        # a readable ts before the range: not replayed, though stamped inside it
        (inside, s.topics.events, b"bad", b'{"event_id": "rp-y", "ts": %d}' % (t0 - 1)),
    ]
    return sorted(records, key=lambda r: r[0]), labels


async def produce_stamped(s: Settings, records: list[tuple[int, str, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = [await producer.send(t, v, key=k, timestamp_ms=ts) for ts, t, k, v in records]
        await asyncio.wait_for(asyncio.gather(*sent), 60)
    finally:
        await producer.stop()


def roc_auc(predictions: list[dict], labels: dict[str, int]) -> float:
    """P(a fraud scores above a legitimate event), ties counting half (Mann-Whitney)."""
    pos = [p["score"] for p in predictions if labels[p["event_id"]] == 1]
    neg = [p["score"] for p in predictions if labels[p["event_id"]] == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def live_state(client: redis.Redis, prefix: str) -> dict[bytes, bytes | None]:
    return {k: client.dump(k) for k in client.scan_iter(f"{prefix}:*", count=1000)}


def replay(s: Settings, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**settings_env(s), "DRIFTWATCH_SNAPSHOT_KEY": KEY}
    return subprocess.run(
        [sys.executable, "-m", "stream.service.cli", "replay", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def printed(stdout: str, pattern: str) -> str:
    found = re.search(pattern, stdout)
    assert found, f"{pattern!r} not in:\n{stdout}"
    return found.group(1)


@pytest.fixture
def produced(cards: Settings) -> tuple[int, dict[str, int]]:
    """The stream on the test's topics and the live lineup seeded; (t0, labels)."""
    t0 = (now_ms() - 2 * 3600 * 1000) // 1000 * 1000  # well within the topics' retention
    records, labels = labelled_stream(cards, t0)
    asyncio.run(produce_stamped(cards, records))

    async def seed() -> None:
        client = aioredis.Redis.from_url(cards.redis.url)
        await Lineup(client, cards.redis.prefix).seed(configured(cards))
        await client.aclose()

    asyncio.run(seed())
    return t0, labels


def test_replay_scores_the_range_once_into_its_own_topics_and_leaves_live_state_alone(
    cards: Settings, produced: tuple[int, dict[str, int]], tmp_path: Path
) -> None:
    s, (t0, labels) = cards, produced
    client = redis.Redis.from_url(s.redis.url)
    before = live_state(client, s.redis.prefix)
    assert before  # the lineup, at least
    start, end = t0 + FIRST * STEP_MS, t0 + LAST * STEP_MS
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start / 1000))

    t = time.monotonic()
    done = replay(s, tmp_path, "--from", iso, "--to", str(end))
    seconds = time.monotonic() - t
    assert done.returncode == 0, done.stderr

    out = done.stdout
    print(f"replay of {LAST - FIRST} of {N} events took {seconds:.1f} s:\n{out}")
    in_range = {f"rp-{i:07d}" for i in range(FIRST, LAST)}
    predictions_topic, dlq_topic = s.topics.predictions + ".replay", s.topics.dlq + ".replay"
    records = asyncio.run(
        consume_until(s.kafka.bootstrap, [predictions_topic], lambda r: len(r) >= 600, 60, 1)
    )
    predictions = [orjson.loads(r.value) for r in records]
    assert sorted(p["event_id"] for p in predictions) == sorted(in_range)  # each exactly once
    assert {p["model"] for p in predictions} == {s.model.name}
    assert len({round(p["score"], 6) for p in predictions}) > 100  # the model learned
    letters = asyncio.run(
        consume_until(s.kafka.bootstrap, [dlq_topic], lambda r: len(r) >= 3, 30, 1)
    )
    assert sorted(orjson.loads(r.value)["stage"] for r in letters) == [
        "decode",
        "decode",
        "validate",
    ]
    # read from the first record stamped at FROM: the events from FIRST on and the 4 bad ones
    assert printed(out, r"events: (\d+) read") == str(N - FIRST + 4)
    assert printed(out, r"(\d+) in range, ") == str(LAST - FIRST + 3)
    assert printed(out, r"(\d+) scored") == str(LAST - FIRST)
    assert printed(out, r"scored, (\d+) dead-lettered") == "3"
    # labels stamped from FROM on: those of the events from FIRST - LABEL_DELAY on
    assert printed(out, r"labels: (\d+) read") == str(N - FIRST + LABEL_DELAY)
    assert printed(out, r"(\d+) joined") == str(LAST - FIRST)
    assert printed(out, r"learned (\d+) examples") == str(LAST - FIRST)

    hits = [p["prediction"] == labels[p["event_id"]] for p in predictions]
    assert printed(out, r"accuracy ([0-9.]+)") == f"{sum(hits) / len(hits):.4f}"
    assert printed(out, r"roc_auc ([0-9.]+)") == f"{roc_auc(predictions, labels):.4f}"
    assert predictions_topic in out and dlq_topic in out

    partitions = s.topics.partitions
    assert asyncio.run(record_count(s.kafka.bootstrap, s.topics.predictions, partitions)) == 0
    assert asyncio.run(record_count(s.kafka.bootstrap, s.topics.dlq, partitions)) == 0
    assert live_state(client, s.redis.prefix) == before  # the replay's own keys are gone too
    assert int(printed(out, r"(\d+) keys deleted")) > LAST - FIRST
    client.close()


def test_a_stored_version_scores_the_range_frozen_and_its_state_can_be_kept(
    cards: Settings, produced: tuple[int, dict[str, int]], tmp_path: Path
) -> None:
    s, (t0, _) = cards, produced
    model = create_model(s.model, s.features)
    for i in range(500):
        event, y = CardStream(seed=2, n_cards=40).event(i)
        model.learn(event["features"], y)

    async def publish() -> int:
        client = aioredis.Redis.from_url(s.redis.url)
        version = await SnapshotStore(client, s.redis.prefix, s.model.name, KEY.encode()).publish(
            model
        )
        await client.aclose()
        return version

    version = asyncio.run(publish())
    client = redis.Redis.from_url(s.redis.url)
    before = live_state(client, s.redis.prefix)
    prefix = f"backtest-{s.redis.prefix}"
    start, end = str(t0 + FIRST * STEP_MS), str(t0 + (FIRST + 100) * STEP_MS)
    args = ["--from", start, "--to", end, "--version", str(version), "--prefix", prefix,
            "--suffix", ".bt", "--keep-state"]  # fmt: skip

    done = replay(s, tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert f"version {version}, frozen" in done.stdout
    assert printed(done.stdout, r"(\d+) scored") == "100"
    records = asyncio.run(
        consume_until(
            s.kafka.bootstrap, [s.topics.predictions + ".bt"], lambda r: len(r) >= 100, 60, 1
        )
    )
    predictions = [orjson.loads(r.value) for r in records]
    assert len(predictions) == 100
    for p in predictions:  # the stored version, unchanged from the first event to the last
        assert (p["model"], p["model_version"]) == (s.model.name, version)
        assert p["score"] == pytest.approx(model.predict(p["features"]).score, abs=1e-9)
    kept = live_state(client, prefix)
    assert kept and f"kept under {prefix}:*" in done.stdout
    assert live_state(client, s.redis.prefix) == before

    again = replay(s, tmp_path, *args)  # never mixes with the state of another run
    assert again.returncode == 1
    assert f"--prefix {prefix}: keys exist there already" in again.stderr
    assert live_state(client, prefix) == kept
    client.delete(*kept)
    client.close()


@pytest.mark.parametrize(
    ("setting", "value", "error"),
    [
        ("KAFKA__BOOTSTRAP", "127.0.0.1:1", "driftwatch: KafkaConnectionError"),
        ("REDIS__URL", "redis://127.0.0.1:1/0", "driftwatch: ConnectionError"),
    ],
)
def test_a_service_out_of_reach_is_one_error_line_and_exit_1(
    cards: Settings, tmp_path: Path, setting: str, value: str, error: str
) -> None:
    env = {**settings_env(cards), f"DRIFTWATCH_{setting}": value}
    done = subprocess.run(
        [sys.executable, "-m", "stream.service.cli", "replay", "--from", "0", "--to", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    ours = [line for line in done.stderr.splitlines() if line.startswith("driftwatch:")]
    assert len(ours) == 1 and ours[0].startswith(error), done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_model_is_named_with_the_known_ones(cards: Settings, tmp_path: Path) -> None:
    done = replay(cards, tmp_path, "--from", "0", "--to", "1", "--model", "nope")
    assert done.returncode == 1
    assert "--model 'nope': no such model; expected one of ['fraud']" in done.stderr
