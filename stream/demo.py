"""``driftwatch demo``: push a synthetic stream through a running worker and show the output."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.config import Settings

CATEGORIES = ("grocery", "fuel", "travel", "online", "restaurant")


def demo_event(rng: random.Random, i: int, ts_ms: int) -> dict[str, object]:
    """One synthetic card transaction."""
    return {
        "event_id": f"e-{i:06d}",
        "entity_id": f"card-{rng.randrange(50)}",
        "ts": ts_ms,
        "features": {
            "amount": round(rng.lognormvariate(3.0, 1.0), 2),
            "merchant_category": rng.choice(CATEGORIES),
            "hour": rng.randrange(24),
        },
    }


def run_demo(settings: Settings, events: int, timeout: float) -> int:
    return asyncio.run(_demo(settings, events, timeout))


async def _demo(settings: Settings, n: int, wait_s: float) -> int:
    rng = random.Random(7)  # noqa: S311 - synthetic data, not security
    run_id = uuid.uuid4().hex[:8]
    consumer = AIOKafkaConsumer(
        settings.topics.predictions,
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=f"driftwatch-demo-{run_id}",
        auto_offset_reset="latest",
    )
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    await producer.start()
    try:
        await _wait_assigned(consumer, wait_s)
        sent = {}
        now = int(time.time() * 1000)
        for i in range(n):
            event = demo_event(rng, i, now + i)
            event["event_id"] = f"{run_id}-{i:06d}"
            sent[event["event_id"]] = event
            await producer.send(
                settings.topics.events, orjson.dumps(event), key=str(event["entity_id"]).encode()
            )
        await producer.flush()
        print(f"sent {n} events to '{settings.topics.events}'")
        seen: set[object] = set()
        deadline = time.monotonic() + wait_s
        while len(seen) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for rec in records:
                    out = orjson.loads(rec.value or b"{}")
                    if out.get("event_id") in sent and out["event_id"] not in seen:
                        seen.add(out["event_id"])
                        text = rec.value.decode() if rec.value else ""
                        print(f"{settings.topics.predictions}: {text}")
        print(f"received {len(seen)}/{n} outputs")
        return 0 if len(seen) == n else 1
    finally:
        await producer.stop()
        await consumer.stop()


async def _wait_assigned(consumer: AIOKafkaConsumer, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not consumer.assignment():
        if time.monotonic() > deadline:
            raise TimeoutError("demo consumer got no partition assignment")
        await consumer.getmany(timeout_ms=200)
