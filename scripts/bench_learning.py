#!/usr/bin/env python3
"""Learning fidelity: driftwatch's live accuracy against River's own progressive validation.

Streams that River ships go through one real worker (``driftwatch worker``, default
settings but for the features) on the real broker and Redis, at a steady rate:

- **phishing**: ``river.datasets.Phishing`` (1,250 rows, bundled with River);
- **sea-drift**: ``ConceptDriftStream`` of two ``SEA`` concepts (thresholds 8 then 7), the
  drift centred on the middle of the stream;
- **agrawal**: ``Agrawal`` (classification function 6: balanced classes, learnable by a
  linear model).

Each stream runs in two regimes: **immediate** (the label carried on the event, learned
right after scoring) and **delayed** (the label sent on the labels topic ``--delay`` events
later). Every event has its own entity, so the enriched features add nothing
(``seconds_since_last`` is -1 for all and scales to 0): the worker's model sees the rows.

Printed per stream and regime:

- **driftwatch**: progressive accuracy, each event's first prediction against its label;
- **river**: River's progressive validation of the same pipeline
  (:func:`stream.model.online.create_model` from the same settings) in process, on the same
  rows in the same order, with the same label delay: predict row *i*, then learn the row
  whose label has arrived (*i* itself, or *i - delay*);
- **gap**: river minus driftwatch, overall and per fifth of the stream;
- **lag**: how far the served version was behind. *behind*: examples River's schedule had
  learned before scoring the row minus examples in the version driftwatch scored it with
  (p50 / p99 / max over the rows); *gauge*: the worker's ``driftwatch_model_lag_examples``
  sampled every 100 ms (p50 / max).

Acceptance (issue 14): at the default settings, every |gap| at most 0.02 overall and 0.05
in every fifth. The services are started if they are not running, and stopped at the end.

    python scripts/bench_learning.py [--rate 500] [--events 10000] [--delay 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from river import datasets
from river.datasets import synth

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_pipeline import _free_port, _services, _topics  # noqa: E402

from stream.model.online import create_model  # noqa: E402
from stream.model.snapshots import SnapshotStore  # noqa: E402
from stream.service.config import Settings  # noqa: E402
from stream.service.kafka_security import client_options  # noqa: E402
from stream.service.topics import ensure_topics, train_topic_name  # noqa: E402
from tests.integration.worker_process import WorkerProcess  # noqa: E402

SNAPSHOT_KEY = "bench"
FIFTHS = 5
MAX_GAP, MAX_FIFTH_GAP = 0.02, 0.05
SETTLE_S = 1.0  # after the worker's consumers are assigned, before the first event
Rows = list[tuple[dict[str, Any], int]]


def phishing(n: int) -> Rows:
    return [(dict(x), int(y)) for x, y in datasets.Phishing()][:n]


def sea_drift(n: int) -> Rows:
    stream = synth.ConceptDriftStream(
        stream=synth.SEA(variant=0, seed=7),
        drift_stream=synth.SEA(variant=2, seed=8),
        position=n // 2,
        width=max(1, n // 20),
        seed=9,
    )
    return [({f"x{k}": v for k, v in x.items()}, int(y)) for x, y in stream.take(n)]


def agrawal(n: int) -> Rows:
    stream = synth.Agrawal(classification_function=6, seed=42)
    return [(dict(x), int(y)) for x, y in stream.take(n)]


STREAMS: dict[str, Callable[[int], Rows]] = {
    "phishing": phishing,
    "sea-drift": sea_drift,
    "agrawal": agrawal,
}


@dataclass
class Outcome:
    """One stream in one regime: what each side predicted, row by row."""

    stream: str
    regime: str
    ys: list[int]
    live: list[int]  # driftwatch's first prediction of each row
    versions: list[int]  # the version that made it
    river: list[int]
    behind: list[int]  # examples River had learned minus those of the serving version
    gauge: list[float] = field(default_factory=list)


def river_progressive(rows: Rows, settings: Settings, delay: int) -> list[int]:
    """River's progressive validation with the label of row i learned after row i + delay."""
    model = create_model(settings.model, settings.features)
    out = []
    for i, (x, _) in enumerate(rows):
        out.append(int(model.predict(x).prediction or 0))
        if i >= delay:
            model.learn(*rows[i - delay])
    return out


def run_settings(uid: str, bootstrap: str, redis_url: str, names: Iterable[str]) -> Settings:
    """Default settings, on this run's topics, Redis prefix, group and metrics port."""
    return Settings.model_validate(
        {
            "kafka": {"bootstrap": bootstrap},
            "topics": _topics(uid),
            "redis": {"url": redis_url, "prefix": f"bench-{uid}"},
            "worker": {"app_id": f"bench-{uid}", "metrics_address": f"127.0.0.1:{_free_port()}"},
            "features": [{"name": name} for name in names],
        }
    )


async def produce(s: Settings, name: str, rows: Rows, rate: float, delay: int | None) -> None:
    """Events at ``rate``; each label on its event (``delay`` None) or ``delay`` events later."""
    producer = AIOKafkaProducer(linger_ms=2, acks="all", **client_options(s))
    await producer.start()

    async def label(j: int) -> None:
        body = {"event_id": f"{name}-{j}", "label": rows[j][1], "ts": int(time.time() * 1000)}
        await producer.send(s.topics.labels, orjson.dumps(body), key=f"{name}-{j}".encode())

    try:
        t0 = time.monotonic()
        for i, (x, y) in enumerate(rows):
            event: dict[str, Any] = {"event_id": f"{name}-{i}", "entity_id": f"{name}-{i}"}
            event |= {"ts": int(time.time() * 1000), "features": x}
            if delay is None:
                event["label"] = y
            await producer.send(s.topics.events, orjson.dumps(event), key=f"{name}-{i}".encode())
            if delay is not None and i >= delay:
                await label(i - delay)
            ahead = (i + 1) / rate - (time.monotonic() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
        for j in range(max(0, len(rows) - (delay or 0)), len(rows)) if delay else ():
            await label(j)
        await producer.flush()
    finally:
        await producer.stop()


async def first_predictions(s: Settings, n: int, wait_s: float) -> dict[str, tuple[int, int]]:
    """event_id -> (prediction, model_version) of its first prediction, for ``n`` events."""
    consumer = AIOKafkaConsumer(
        s.topics.predictions,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **client_options(s),
    )
    await consumer.start()
    got: dict[str, tuple[int, int]] = {}
    try:
        deadline = time.monotonic() + wait_s
        while len(got) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for rec in records:
                    p = orjson.loads(rec.value or b"{}")
                    got.setdefault(p["event_id"], (int(p["prediction"]), int(p["model_version"])))
    finally:
        await consumer.stop()
    if len(got) < n:
        raise RuntimeError(f"only {len(got)}/{n} predictions in {wait_s:.0f} s")
    return got


async def watch_versions(s: Settings, learned: dict[int, int], stop: asyncio.Event) -> None:
    """Record each published version's examples before it is pruned (``keep_versions``)."""
    client = aioredis.Redis.from_url(s.redis.url)
    store = SnapshotStore(client, s.redis.prefix, s.model.name, SNAPSHOT_KEY.encode())
    try:
        while True:
            for info in await store.versions():
                learned.setdefault(info.version, info.n_learned)
            if stop.is_set():
                return
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


async def sample_gauge(s: Settings, samples: list[float], stop: asyncio.Event) -> None:
    url = f"http://{s.worker.metrics_address}/metrics"
    while not stop.is_set():
        value = await asyncio.to_thread(_metric, url, "driftwatch_model_lag_examples")
        if value is not None:
            samples.append(value)
        await asyncio.sleep(0.1)


def _metric(url: str, name: str) -> float | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - 127.0.0.1
            text = response.read().decode()
    except OSError:
        return None
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    return sum(values) if values else None


async def stream_through(
    s: Settings, name: str, rows: Rows, rate: float, delay: int | None
) -> tuple[dict[str, tuple[int, int]], dict[int, int], list[float]]:
    learned: dict[int, int] = {0: 0}
    samples: list[float] = []
    stop = asyncio.Event()
    watchers = [
        asyncio.create_task(watch_versions(s, learned, stop)),
        asyncio.create_task(sample_gauge(s, samples, stop)),
    ]
    reader = asyncio.create_task(first_predictions(s, len(rows), len(rows) / rate + 120))
    try:
        await produce(s, name, rows, rate, delay)
        got = await reader
    finally:
        stop.set()
        await asyncio.gather(*watchers)
    return got, learned, samples


def run_one(name: str, rows: Rows, regime: str, args: argparse.Namespace, workdir: Path) -> Outcome:
    uid = uuid.uuid4().hex[:8]
    s = run_settings(uid, args.bootstrap, args.redis, rows[0][0])
    delay = args.delay if regime == "delayed" else None
    asyncio.run(ensure_topics(s))
    worker = WorkerProcess(s, workdir / uid, {"DRIFTWATCH_SNAPSHOT_KEY": SNAPSHOT_KEY})
    worker.start()
    time.sleep(SETTLE_S)  # its consumers have fetched their first positions: steady state
    try:
        got, learned, samples = asyncio.run(stream_through(s, name, rows, args.rate, delay))
    finally:
        worker.stop()
        asyncio.run(clean_up(s))
    live = [got[f"{name}-{i}"] for i in range(len(rows))]
    # rows scored by a version pruned before it was seen (keep_versions) are left out
    behind = [
        max(0, i - (delay or 0)) - learned[version]
        for i, (_, version) in enumerate(live)
        if version in learned
    ]
    return Outcome(
        stream=name,
        regime=regime,
        ys=[y for _, y in rows],
        live=[p for p, _ in live],
        versions=[v for _, v in live],
        river=river_progressive(rows, s, delay or 0),
        behind=behind,
        gauge=samples,
    )


async def clean_up(s: Settings) -> None:
    """Delete the run's topics and Redis keys (a benchmark leaves nothing behind)."""
    t = s.topics
    names = [t.events, t.labels, t.predictions, t.alerts, t.dlq, t.monitor, train_topic_name(s)]
    admin = AIOKafkaAdminClient(**client_options(s))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        await admin.delete_topics([name for name in names if name in existing])
    finally:
        await admin.close()
    client = aioredis.Redis.from_url(s.redis.url)
    try:
        keys = [k async for k in client.scan_iter(f"{s.redis.prefix}:*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i : i + 1000])
    finally:
        await client.aclose()


def accuracy(pred: list[int], ys: list[int]) -> float:
    return sum(p == y for p, y in zip(pred, ys, strict=True)) / max(1, len(ys))


def fifths(values: list[int]) -> list[slice]:
    n = len(values)
    return [slice(k * n // FIFTHS, (k + 1) * n // FIFTHS) for k in range(FIFTHS)]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def report(outcomes: list[Outcome]) -> bool:
    """Print the table; True when every gap is within the acceptance bounds."""
    print(
        f"\n{'stream':<11}{'regime':<10}{'rows':>6}{'driftwatch':>11}{'river':>7}{'gap':>8}"
        f"   {'gap (river - driftwatch) per fifth':<34}   {'behind p50/p99/max':>18}"
        f"   {'gauge p50/max':>13}   versions"
    )
    ok = True
    for o in outcomes:
        dw, rv = accuracy(o.live, o.ys), accuracy(o.river, o.ys)
        parts = [accuracy(o.river[f], o.ys[f]) - accuracy(o.live[f], o.ys[f]) for f in fifths(o.ys)]
        within = abs(rv - dw) <= MAX_GAP and all(abs(g) <= MAX_FIFTH_GAP for g in parts)
        ok &= within
        behind = [float(b) for b in o.behind]
        lag = f"{pct(behind, 0.5):.0f}/{pct(behind, 0.99):.0f}/{max(behind, default=0):.0f}"
        gauge = f"{pct(o.gauge, 0.5):.0f}/{max(o.gauge, default=float('nan')):.0f}"
        print(
            f"{o.stream:<11}{o.regime:<10}{len(o.ys):>6}{dw:>11.3f}{rv:>7.3f}{rv - dw:>+8.3f}"
            f"   {' '.join(f'{g:+.3f}' for g in parts):<34}   {lag:>18}   {gauge:>13}"
            f"   {len(set(o.versions)):>8}{'' if within else '  OUT OF BOUNDS'}"
        )
    print(
        f"\nacceptance: |gap| <= {MAX_GAP} overall and <= {MAX_FIFTH_GAP} in every fifth: "
        + ("met" if ok else "NOT met")
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--events", type=int, default=10_000, help="rows of synthetic streams")
    parser.add_argument("--delay", type=int, default=100, help="events before a delayed label")
    parser.add_argument("--streams", default=",".join(STREAMS), help="comma-separated")
    parser.add_argument("--regimes", default="immediate,delayed", help="comma-separated")
    parser.add_argument(
        "--bootstrap", default=os.environ.get("DRIFTWATCH_TEST_KAFKA", "127.0.0.1:9092")
    )
    parser.add_argument(
        "--redis", default=os.environ.get("DRIFTWATCH_TEST_REDIS", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    streams = args.streams.split(",")
    regimes = args.regimes.split(",")
    unknown = sorted({*streams} - set(STREAMS)) + sorted({*regimes} - {"immediate", "delayed"})
    if unknown:
        parser.error(f"unknown streams or regimes: {unknown}")
    if args.rate <= 0 or args.events < 100 or args.delay < 1:
        parser.error("--rate must be positive, --events at least 100, --delay at least 1")
    outcomes = []
    with _services(args.bootstrap, args.redis), tempfile.TemporaryDirectory() as tmp:
        for name in streams:
            rows = STREAMS[name](args.events)
            for regime in regimes:
                print(f"{name}, {regime} labels: {len(rows)} rows at {args.rate:.0f}/s", flush=True)
                outcomes.append(run_one(name, rows, regime, args, Path(tmp)))
    return 0 if report(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
