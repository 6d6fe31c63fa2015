"""``driftwatch tail``: a readable live view of the predictions, alerts or dead-letter topic."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from stream.service.config import Settings
from stream.service.kafka_security import client_options


def _time(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def format_line(what: str, value: dict[str, Any]) -> str:
    """One line per message.

    >>> format_line("predictions", {"ts": 0, "event_id": "e1", "entity_id": "c1",
    ...     "model": "fraud", "model_version": 3, "prediction": 1, "score": 0.912})
    '00:00:00.000 e1 c1 fraud v3 -> 1 (score 0.912)'
    """
    if what == "predictions":
        return (
            f"{_time(value.get('ts'))} {value.get('event_id')} {value.get('entity_id')} "
            f"{value.get('model')} v{value.get('model_version')} -> {value.get('prediction')} "
            f"(score {float(value.get('score', 0.0)):.3f})"
        )
    if what == "alerts":
        stat = value.get("statistic")
        stat_text = f"{stat:.4g}" if isinstance(stat, int | float) else "-"
        return (
            f"{_time(value.get('ts'))} {str(value.get('status', '')).upper():8} "
            f"{value.get('kind')} {value.get('subject')}/{value.get('detector')} "
            f"stat={stat_text} threshold={value.get('threshold')}: {value.get('message')}"
        )
    payload = str(value.get("payload", ""))
    short = payload if len(payload) <= 60 else payload[:57] + "..."
    return (
        f"{_time(value.get('ts'))} {value.get('topic')}[{value.get('partition')}]@"
        f"{value.get('offset')} {value.get('stage')}: {value.get('error')} | {short}"
    )


def run_tail(settings: Settings, what: str, from_beginning: bool, limit: int | None) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_tail(settings, what, from_beginning, limit))
    return 0


async def _tail(settings: Settings, what: str, from_beginning: bool, limit: int | None) -> None:
    topic: str = getattr(settings.topics, what)  # the CLI allows predictions|alerts|dlq
    consumer = AIOKafkaConsumer(
        topic,
        **client_options(settings),
        group_id=f"driftwatch-tail-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    shown = 0
    try:
        async for record in consumer:
            try:
                value = orjson.loads(record.value or b"null")
            except orjson.JSONDecodeError:
                value = {"error": "not JSON", "payload": repr(record.value)}
            print(format_line(what, value if isinstance(value, dict) else {}), flush=True)
            shown += 1
            if limit is not None and shown >= limit:
                break
    finally:
        await consumer.stop()
