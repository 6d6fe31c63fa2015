"""Pinned drift references: taken from a file or a time range of the predictions topic.

By default each subject's monitor takes as its reference the first
``monitoring.reference_size`` values it sees. ``driftwatch reference pin`` replaces that
with values chosen by an operator: every subject's values from Prediction messages (the
features as scored, the score and the predicted class), read from a JSON-lines file or from
the predictions topic between two event times. They are stored in Redis and every owning
monitor refits on them; ``driftwatch reference unpin`` returns to the default.

Keys: ``{prefix}:reference:pinned`` (hash subject -> orjson ``{"values", "ts"}``) and
``{prefix}:reference:generation`` (a counter the monitors poll once per batch).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from stream.exceptions import DriftwatchError
from stream.messages import SubjectKind
from stream.monitoring.subjects import value_of
from stream.service.config import Settings
from stream.service.kafka_security import client_options
from stream.service.topics import partitions_of
from stream.timestamps import to_epoch_ms


def pinned_key(prefix: str) -> str:
    return f"{prefix}:reference:pinned"


def generation_key(prefix: str) -> str:
    return f"{prefix}:reference:generation"


def reference_values(
    predictions: Iterable[Mapping[str, Any]], subjects: Mapping[str, SubjectKind], limit: int
) -> dict[str, tuple[list[Any], list[int]]]:
    """Each subject's values (and event times) from Prediction messages, at most ``limit``.

    >>> preds = [{"ts": 5, "features": {"amount": 3.5}, "score": 0.2, "prediction": 0}]
    >>> reference_values(preds, {"amount": "numeric", "prediction.class": "categorical"}, 10)
    {'amount': ([3.5], [5]), 'prediction.class': (['0'], [5])}
    """
    out: dict[str, tuple[list[Any], list[int]]] = {s: ([], []) for s in subjects}
    for p in predictions:
        features = p.get("features") or {}
        for subject, kind in subjects.items():
            # an imputed value cannot be told apart here: Predictions do not mark it
            value = value_of(
                subject, kind, score=p.get("score"), prediction=p.get("prediction"),
                features=features,
            )  # fmt: skip
            if value is None or len(out[subject][0]) >= limit:
                continue
            out[subject][0].append(value)
            out[subject][1].append(int(p.get("ts", 0)))
    return {s: v for s, v in out.items() if v[0]}


def read_file(path: Path) -> list[dict[str, Any]]:
    """Prediction messages from a JSON-lines file; a bad line is an error naming it."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DriftwatchError(f"{path}:{n}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise DriftwatchError(f"{path}:{n}: expected a Prediction JSON object")
        rows.append(row)
    return rows


async def read_topic(settings: Settings, start: str, end: str) -> list[dict[str, Any]]:
    """Predictions whose event time lies in [start, end] (epoch ms or ISO-8601)."""
    lo, hi = to_epoch_ms(_number(start)), to_epoch_ms(_number(end))
    if hi < lo:
        raise DriftwatchError(f"reference range ends ({end}) before it starts ({start})")
    topic = settings.topics.predictions
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=f"driftwatch-reference-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = await partitions_of(settings, [topic])
        tps = [TopicPartition(topic, p) for p in partitions[topic]]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        # record time (when a worker published) >= event time: start at the first record
        # published at or after ``lo``
        starts = await consumer.offsets_for_times({tp: lo for tp in tps})
        for tp in tps:
            found = starts.get(tp)
            consumer.seek(tp, found.offset if found else ends[tp])
        return await _read_until(consumer, ends, lo, hi)
    finally:
        await consumer.stop()


async def _read_until(
    consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int], lo: int, hi: int
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        positions = [await consumer.position(tp) for tp in ends]
        if all(pos >= end for pos, end in zip(positions, ends.values(), strict=True)):
            break
        for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
            for rec in records:
                row = orjson.loads(rec.value or b"{}")
                if isinstance(row, dict) and lo <= int(row.get("ts", -1)) <= hi:
                    rows.append(row)
    return rows


def _number(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text


async def pin(
    redis: aioredis.Redis, prefix: str, values: Mapping[str, tuple[list[Any], list[int]]]
) -> int:
    """Store pinned references; returns the new generation the monitors will pick up."""
    if not values:
        raise DriftwatchError("no values for any monitored subject: nothing pinned")
    pipe = redis.pipeline(transaction=True)
    pipe.delete(pinned_key(prefix))
    pipe.hset(
        pinned_key(prefix),
        mapping={s: orjson.dumps({"values": v, "ts": t}) for s, (v, t) in values.items()},
    )
    pipe.incr(generation_key(prefix))
    return int((await pipe.execute())[-1])


async def unpin(redis: aioredis.Redis, prefix: str) -> int:
    pipe = redis.pipeline(transaction=True)
    pipe.delete(pinned_key(prefix))
    pipe.incr(generation_key(prefix))
    return int((await pipe.execute())[-1])


async def load_pinned(redis: aioredis.Redis, prefix: str) -> dict[str, tuple[list[Any], list[int]]]:
    raw = await redis.hgetall(pinned_key(prefix))
    out = {}
    for subject, blob in raw.items():
        body = orjson.loads(blob)
        name = subject.decode() if isinstance(subject, bytes) else str(subject)
        out[name] = (body["values"], body["ts"])
    return out
