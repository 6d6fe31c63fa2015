#!/usr/bin/env python3
"""The baseline of the end-to-end benchmark: a raw aiokafka consume → produce passthrough.

Reads the events topic in batches (``getmany``, up to ``worker.batch_size`` records),
republishes every value unchanged to the predictions topic, and commits once the broker
acknowledged the batch's sends: at-least-once, as the worker, with none of its work. What
this moves per second is the most a Python Kafka client moves here.

Configured like ``driftwatch worker`` (``--config`` file, ``DRIFTWATCH_*`` environment);
``scripts/bench_pipeline.py`` runs it in its own process, as it runs the worker, so that
both are measured alike (the benchmark's producer and reader live in another process).
Stops on SIGTERM or SIGINT.

    python scripts/aiokafka_passthrough.py [--config driftwatch.toml]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.service.config import Settings, load_settings  # noqa: E402
from stream.service.kafka_security import client_options  # noqa: E402

#: Logged once the consumer has its partitions (the benchmark waits for it).
READY = "passthrough partitions assigned"

log = logging.getLogger("passthrough")


async def passthrough(s: Settings, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        group_id=f"{s.worker.app_id}-passthrough",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=s.worker.batch_size,
        **client_options(s),
    )
    producer = AIOKafkaProducer(linger_ms=5, acks="all", **client_options(s))
    consumer.subscribe([s.topics.events], listener=_Ready())
    await consumer.start()
    await producer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=s.worker.batch_size)
            futures = [
                await producer.send(s.topics.predictions, rec.value, key=rec.key)
                for records in batches.values()
                for rec in records
            ]
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


class _Ready(ConsumerRebalanceListener):
    async def on_partitions_revoked(self, revoked: object) -> None:
        pass

    async def on_partitions_assigned(self, assigned: object) -> None:
        log.info(READY)


async def run(s: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await passthrough(s, stop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="TOML file (default: none)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run(load_settings(args.config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
