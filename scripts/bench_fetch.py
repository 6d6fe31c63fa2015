#!/usr/bin/env python3
"""Fetch stalls of the worker's events-and-labels consumer, with and without its setting.

aiokafka keeps one fetch request in flight per broker and does not refetch a partition
while records of it are still buffered. A worker reads the events and the labels topics
with one consumer: while a backlog's events are buffered, the next request asks only for
the labels partitions, which are empty, and the broker holds it for ``fetch_max_wait_ms``.
When the buffered events run out the worker waits for that request to come back.
``stream/service/batches.py`` sets ``FETCH_MAX_WAIT_MS`` for it; this script measures both.

A backlog of card events is produced to a 4-partition events topic next to an empty labels
topic, then read twice in the same run by the worker's batching (``fetch_balanced``, batches
of 500), each record costing ``--cpu-us`` of busy CPU like the worker's own work: once with
Kafka's default ``fetch_max_wait_ms`` (500 ms), once with the worker's. Printed per reader:
events/s, time spent waiting for records (µs per event), the waits longer than 50 ms and
the longest.

    python scripts/bench_fetch.py [--events 60000] [--cpu-us 100]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_pipeline import _services, card_events, produce, sample_settings  # noqa: E402

from stream.service.batches import FETCH_MAX_WAIT_MS, fetch_balanced  # noqa: E402
from stream.service.config import Settings  # noqa: E402
from stream.service.kafka_security import client_options  # noqa: E402
from stream.service.topics import ensure_topics  # noqa: E402

KAFKA_DEFAULT_MS = 500
STALL_S = 0.05


async def read(s: Settings, n: int, cpu_us: float, fetch_max_wait_ms: int) -> str:
    """Read the backlog as the worker batches it, spending ``cpu_us`` per record."""
    consumer = AIOKafkaConsumer(
        group_id=f"bench-fetch-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
        fetch_max_wait_ms=fetch_max_wait_ms,
        **client_options(s),
    )
    consumer.subscribe([s.topics.events, s.topics.labels])
    await consumer.start()
    try:
        seen, waits, started = 0, [], 0.0
        deadline = time.monotonic() + 600
        while seen < n and time.monotonic() < deadline:
            asked = time.perf_counter()
            got = await fetch_balanced(consumer, 500)
            waited = time.perf_counter() - asked
            k = sum(len(records) for records in got.values())
            if not k:
                continue
            if seen:  # the first batch waits for the group to form: not counted
                waits.append(waited)
            else:
                started = time.perf_counter()
            seen += k
            busy_until = time.perf_counter() + k * cpu_us / 1e6
            while time.perf_counter() < busy_until:
                pass
            await asyncio.sleep(0)
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    stalls = [w for w in waits if w > STALL_S]
    return (
        f"{seen / elapsed:>10,.0f}{sum(waits) / seen * 1e6:>12.1f}{len(stalls):>10}"
        f"{max(waits, default=0.0) * 1000:>12.0f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000, help="backlog")
    parser.add_argument("--cpu-us", type=float, default=100.0, help="work per record (µs)")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if args.events < 1000 or args.cpu_us < 0:
        parser.error("--events must be at least 1000 and --cpu-us not negative")
    with _services(args.bootstrap, args.redis):
        s = sample_settings(f"f{uuid.uuid4().hex[:8]}", args.bootstrap, args.redis, 500, False)
        asyncio.run(ensure_topics(s))
        asyncio.run(produce(s, card_events(1000), args.events))
        print(f"\n{args.events:,} events of backlog, {args.cpu_us:g} us of work per event, "
              "an empty labels topic")  # fmt: skip
        print(f"{'fetch_max_wait_ms':<28}{'events/s':>10}{'wait us/ev':>12}"
              f"{'stalls':>10}{'longest ms':>12}")  # fmt: skip
        for name, wait in (
            (f"Kafka's default ({KAFKA_DEFAULT_MS})", KAFKA_DEFAULT_MS),
            (f"the worker's ({FETCH_MAX_WAIT_MS})", FETCH_MAX_WAIT_MS),
        ):
            print(f"{name:<28}{asyncio.run(read(s, args.events, args.cpu_us, wait))}")
        print(f"stalls: waits for records longer than {STALL_S * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
