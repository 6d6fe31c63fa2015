"""Message contracts of the topics (DESIGN.md): Event, Label, Prediction, Alert, DeadLetter.

Inputs are validated at the edge with these models; unknown extra fields are ignored.
Timestamps arrive as epoch milliseconds or ISO-8601 strings and leave as epoch milliseconds.
"""

from __future__ import annotations

import base64
import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
)

from stream.alerts import AlertKind, AlertStatus


def now_ms() -> int:
    """The wall clock as epoch milliseconds."""
    return time.time_ns() // 1_000_000


def to_epoch_ms(value: Any) -> int:
    """Event time as epoch milliseconds from an integer or an ISO-8601 string.

    >>> to_epoch_ms(1763800000000), to_epoch_ms("2025-11-22T08:26:40Z")
    (1763800000000, 1763800000000)
    """
    if isinstance(value, bool):
        raise ValueError("expected epoch milliseconds or an ISO-8601 string, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"epoch milliseconds must be >= 0, got {value}")
        return value
    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 timestamp") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    raise ValueError(f"expected epoch milliseconds or an ISO-8601 string, got {value!r}")


EpochMs = Annotated[int, BeforeValidator(to_epoch_ms)]
NonEmpty = Annotated[str, Field(min_length=1, max_length=256)]
LabelValue = StrictInt | StrictFloat | str | StrictBool


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)


class Event(_In):
    event_id: NonEmpty
    entity_id: NonEmpty
    ts: EpochMs
    features: dict[str, Any]
    label: LabelValue | None = None


class Label(_In):
    event_id: NonEmpty
    label: LabelValue
    ts: EpochMs | None = None


class Prediction(BaseModel):
    event_id: str
    entity_id: str
    ts: int
    model: str
    model_version: int
    prediction: int | float | str
    proba: dict[str, float] | None
    score: float
    features: dict[str, float | str]
    processed_at: int


class Window(BaseModel):
    n: int
    from_ts: int | None
    to_ts: int | None


class Alert(BaseModel):
    alert_id: str
    kind: AlertKind
    status: AlertStatus
    subject: str
    detector: str
    statistic: float | None
    p_value: float | None
    threshold: float | None
    reference: Window
    window: Window
    model: str
    model_version: int | None
    ts: int
    message: str
    evidence: dict[str, Any] = {}


class DeadLetter(BaseModel):
    error: str
    stage: str
    topic: str
    partition: int | None
    offset: int | None
    key: str | None
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    ts: int


def dead_letter(
    error: str,
    stage: str,
    topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    payload: bytes,
    now_ms: int,
) -> bytes:
    """The DeadLetter JSON for a rejected input; non-UTF-8 bytes travel as base64.

    >>> orjson.loads(dead_letter("not JSON", "decode", "events", 0, 7, b"k", b"\\xff", 1))
    ... # doctest: +NORMALIZE_WHITESPACE
    {'error': 'not JSON', 'stage': 'decode', 'topic': 'events', 'partition': 0, 'offset': 7,
     'key': 'k', 'payload': '/w==', 'payload_encoding': 'base64', 'ts': 1}
    """
    text, encoding = _text(payload)
    key_text = None if key is None else _text(key)[0]
    return orjson.dumps(
        {
            "error": error,
            "stage": stage,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": key_text,
            "payload": text,
            "payload_encoding": encoding,
            "ts": now_ms,
        }
    )


def _text(raw: bytes) -> tuple[str, Literal["utf-8", "base64"]]:
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"
