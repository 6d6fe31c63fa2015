#!/usr/bin/env python3
"""End-to-end benchmark: one driftwatch worker against a raw aiokafka passthrough.

Both run on the same local broker in the same run (start it with
``python3 scripts/services.py start``). The model is LogReg on 10 numeric features, three
of them with 1m/1h/24h windows (18 enriched features each).

- Faust floor: ``scripts/faust_echo.py``, the worker's Faust app republishing the raw
  events, is the most a Faust-based worker can move here.
- throughput: N events are produced first, then the consumer starts; events/s is N over
  the time from the first output to the last.
- latency: events produced at a fixed rate; latency is output consumed minus event produced,
  reported as p50/p99.

    python scripts/bench_pipeline.py [--events 20000] [--rate 500] [--batch-size 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stream.service.config import Settings  # noqa: E402
from stream.service.topics import ensure_topics, wait_consumed  # noqa: E402
from tests.integration.worker_process import WorkerProcess  # noqa: E402

N_FEATURES = 10
WINDOWED = 3


def bench_settings(
    uid: str, bootstrap: str, redis_url: str, batch_size: int, **extra: object
) -> Settings:
    features = [
        {"name": f"f{i}", "impute": 0.0, "windows": ["1m", "1h", "24h"] if i < WINDOWED else []}
        for i in range(N_FEATURES)
    ]
    return Settings.model_validate(
        {
            "kafka": {"bootstrap": bootstrap},
            "topics": {
                "events": f"bench-events-{uid}",
                "labels": f"bench-labels-{uid}",
                "predictions": f"bench-predictions-{uid}",
                "alerts": f"bench-alerts-{uid}",
                "dlq": f"bench-dlq-{uid}",
                "monitor": f"bench-monitor-{uid}",
                "partitions": 4,
            },
            "redis": {"url": redis_url, "prefix": f"bench-{uid}"},
            "worker": {
                "app_id": f"bench-{uid}",
                "batch_size": batch_size,
                "metrics_address": "127.0.0.1:0",
            },
            "features": features,
            "model": {"name": "bench"},
            **extra,
        }
    )


def event(i: int, ts: int) -> tuple[bytes, bytes]:
    entity = f"card-{i % 1000}"
    feats = {f"f{j}": float((i * (j + 3)) % 97) / 7.0 for j in range(N_FEATURES)}
    body = {"event_id": f"e-{i}", "entity_id": entity, "ts": ts, "features": feats}
    return entity.encode(), orjson.dumps(body)


async def produce(bootstrap: str, topic: str, n: int, rate: float = 0.0, offset: int = 0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        t0 = time.monotonic()
        for i in range(n):
            key, value = event(offset + i, int(time.time() * 1000))
            await producer.send(topic, value, key=key)
            if rate > 0:
                ahead = (i + 1) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()


async def drain(
    bootstrap: str, topic: str, n: int, wait_s: float, first_id: int = 0
) -> tuple[float, list[float]]:
    """Read n records; returns (seconds from first to last, latencies in ms of the records
    whose event number is at least ``first_id``)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-reader-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    latencies: list[float] = []
    seen = 0
    first = last = 0.0
    try:
        deadline = time.monotonic() + wait_s
        while seen < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            now_ms = time.time() * 1000
            for records in batches.values():
                for rec in records:
                    body = orjson.loads(rec.value or b"{}")
                    seen += 1
                    if int(body["event_id"][2:]) >= first_id:
                        latencies.append(now_ms - body["ts"])
            if seen and not first:
                first = time.monotonic()
            last = time.monotonic()
    finally:
        await consumer.stop()
    if seen < n:
        raise RuntimeError(f"only {seen}/{n} outputs from {topic} within {wait_s}s")
    return max(last - first, 1e-9), latencies


async def passthrough(bootstrap: str, src: str, dst: str, stop: asyncio.Event) -> None:
    """The baseline: consume, produce the value unchanged, commit after the sends are acked."""
    consumer = AIOKafkaConsumer(
        src,
        bootstrap_servers=bootstrap,
        group_id=f"bench-pass-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await consumer.start()
    await producer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            futures = [
                await producer.send(dst, rec.value, key=rec.key)
                for records in batches.values()
                for rec in records
            ]
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


async def paced_latencies(s: Settings, n: int, rate: float) -> list[float]:
    """After a backlog of ``n``: produce 5 s of events at ``rate``; their latencies in ms."""
    m = max(200, int(rate * 5))
    reader = asyncio.create_task(drain(s.kafka.bootstrap, s.topics.predictions, n + m, 600, n))
    await produce(s.kafka.bootstrap, s.topics.events, m, rate, offset=n)
    return (await reader)[1]


async def run_passthrough(s: Settings, n: int, rate: float) -> tuple[float, list[float]]:
    await ensure_topics(s)
    await produce(s.kafka.bootstrap, s.topics.events, n)
    stop = asyncio.Event()
    task = asyncio.create_task(
        passthrough(s.kafka.bootstrap, s.topics.events, s.topics.predictions, stop)
    )
    secs, _ = await drain(s.kafka.bootstrap, s.topics.predictions, n, 600)
    lat = await paced_latencies(s, n, rate)
    stop.set()
    await task
    return n / secs, lat


def run_worker(
    s: Settings, n: int, rate: float, workdir: Path, command: Sequence[str] | None = None
) -> tuple[float, list[float]]:
    asyncio.run(ensure_topics(s))
    asyncio.run(produce(s.kafka.bootstrap, s.topics.events, n))
    worker = WorkerProcess(s, workdir, {"DRIFTWATCH_SNAPSHOT_KEY": "bench"}, command)
    worker.start()
    try:
        secs, _ = asyncio.run(drain(s.kafka.bootstrap, s.topics.predictions, n, 600))
        if command is None and s.monitoring.enabled:
            # the monitors consume their own topic behind the scorer; they calibrate their
            # detectors once, when the reference is complete
            t0 = time.monotonic()
            group, topic = s.worker.app_id, s.topics.monitor
            asyncio.run(wait_consumed(s.kafka.bootstrap, group, topic, 600))
            print(
                f"monitors: the monitor topic was consumed {time.monotonic() - t0:.1f} s after "
                f"the last prediction of the backlog (offsets are committed every few seconds)"
            )
        lat = asyncio.run(paced_latencies(s, n, rate))
    finally:
        worker.stop()
    return n / secs, lat


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=500.0, help="events/s for the latency phase")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument(
        "--bootstrap", default=os.environ.get("DRIFTWATCH_TEST_KAFKA", "127.0.0.1:9092")
    )
    parser.add_argument(
        "--redis", default=os.environ.get("DRIFTWATCH_TEST_REDIS", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    uid = uuid.uuid4().hex[:8]
    base = bench_settings(f"p{uid}", args.bootstrap, args.redis, args.batch_size)
    pass_eps, pass_lat = asyncio.run(run_passthrough(base, args.events, args.rate))
    rows = [("aiokafka passthrough", pass_eps, pass_lat)]
    with tempfile.TemporaryDirectory() as tmp:
        s = bench_settings(f"f{uid}", args.bootstrap, args.redis, args.batch_size)
        echo = [sys.executable, str(REPO / "scripts" / "faust_echo.py")]
        rows.append(("faust echo (floor)", *run_worker(s, args.events, args.rate, Path(tmp), echo)))
    for label, enabled in (("worker, monitoring on", True), ("worker, monitoring off", False)):
        with tempfile.TemporaryDirectory() as tmp:
            s = bench_settings(
                f"w{int(enabled)}{uid}",
                args.bootstrap,
                args.redis,
                args.batch_size,
                monitoring={"enabled": enabled},
            )
            eps, lat = run_worker(s, args.events, args.rate, Path(tmp))
        rows.append((label, eps, lat))
    print(f"end-to-end, {args.events} events backlog, latency at {args.rate:.0f} events/s")
    floor_eps = rows[1][1]
    header = f"{'events/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'vs passthrough':>16}{'vs floor':>10}"
    print(f"{'':24}{header}")
    for name, eps, lat in rows:
        figures = f"{eps:>10.0f}{pct(lat, 50):>10.1f}{pct(lat, 99):>10.1f}"
        print(f"{name:24}{figures}{eps / pass_eps:>16.3f}{eps / floor_eps:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
