"""Message contracts of the topics (DESIGN.md): Event, Label, Prediction, Alert, DeadLetter.

Inputs are validated at the edge with these models; unknown extra fields are ignored.
Timestamps arrive as epoch milliseconds or ISO-8601 strings and leave as epoch milliseconds.
A dead letter always fits a producer request: its payload, error and key are capped
(``DLQ_MAX_*``) and it carries the size and SHA-256 of the full original payload.
"""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import UTC, datetime, timedelta
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

from stream.monitoring.alerts import AlertKind, AlertStatus


def now_ms() -> int:
    """The wall clock as epoch milliseconds."""
    return time.time_ns() // 1_000_000


#: 9999-12-31T23:59:59.999Z, the last instant ``datetime`` can name: a larger "timestamp"
#: is garbage, and bounding it here keeps giant integers (a float like 1e300 is integral)
#: out of everything downstream.
MAX_EPOCH_MS = 253_402_300_799_999
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TimestampRangeError(ValueError):
    """A well-formed timestamp outside what epoch milliseconds can hold (1970 to 9999)."""


def to_epoch_ms(value: Any) -> int:
    """Event time as epoch milliseconds from an integer or an ISO-8601 string.

    Raises
    ------
    TimestampRangeError
        A number or date before 1970 or after 9999 (a ValueError).
    ValueError
        Anything else that is not a timestamp.

    >>> to_epoch_ms(1763800000000), to_epoch_ms("2025-11-22T08:26:40Z")
    (1763800000000, 1763800000000)
    >>> to_epoch_ms(1e300)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    stream.messages.TimestampRangeError: epoch milliseconds must be <= ... got 1e+300
    """
    if isinstance(value, bool):
        raise ValueError("expected epoch milliseconds or an ISO-8601 string, got a boolean")
    if isinstance(value, float) and value.is_integer():  # False for nan and inf
        return _in_range(int(value), value)
    if isinstance(value, int):
        return _in_range(value, value)
    if isinstance(value, str):
        return _in_range(_iso_ms(value), value)
    raise ValueError(f"expected epoch milliseconds or an ISO-8601 string, got {value!r}")


def _iso_ms(text: str) -> int:
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:  # also years beyond 9999: datetime cannot hold them
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise ValueError(f"{shown!r} is not an ISO-8601 timestamp") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # exact integer arithmetic: a float timestamp would round sub-millisecond digits
    return (parsed - _EPOCH) // timedelta(milliseconds=1)


def _in_range(ms: int, given: object) -> int:
    if 0 <= ms <= MAX_EPOCH_MS:
        return ms
    # str() of an int with thousands of digits raises; a float shows compactly
    shown = "a huge integer" if isinstance(given, int) and ms.bit_length() > 128 else repr(given)
    if ms < 0:
        raise TimestampRangeError(f"epoch milliseconds must be >= 0, got {shown}")
    raise TimestampRangeError(
        f"epoch milliseconds must be <= {MAX_EPOCH_MS} (year 9999), got {shown}"
    )


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


#: Payload bytes a dead letter keeps: even when JSON escapes every one of them to six bytes
#: (``\u0001``), the dead letter stays near 420 kB, within Kafka's default 1 MB request.
DLQ_MAX_PAYLOAD_BYTES = 65_536
DLQ_MAX_ERROR_CHARS = 2_000
DLQ_MAX_KEY_BYTES = 1_024


class DeadLetter(BaseModel):
    """A rejected input, and what identifies its payload when it had to be cut.

    ``payload`` holds at most DLQ_MAX_PAYLOAD_BYTES of the original input; ``payload_bytes``
    and ``payload_sha256`` describe the whole of it; ``payload_truncated`` says whether
    bytes were cut.
    """

    error: str
    stage: str
    topic: str
    partition: int | None
    offset: int | None
    key: str | None
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    payload_bytes: int
    payload_sha256: str
    payload_truncated: bool
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
    """The DeadLetter JSON for a rejected input, small enough for any producer request.

    The payload is cut to DLQ_MAX_PAYLOAD_BYTES (at a character boundary when it is UTF-8;
    other bytes travel as base64), the error to DLQ_MAX_ERROR_CHARS and the key to
    DLQ_MAX_KEY_BYTES; size and SHA-256 of the full payload identify the original.

    >>> orjson.loads(dead_letter("not JSON", "decode", "events", 0, 7, b"k", b"\\xff", 1))
    ... # doctest: +NORMALIZE_WHITESPACE
    {'error': 'not JSON', 'stage': 'decode', 'topic': 'events', 'partition': 0, 'offset': 7,
     'key': 'k', 'payload': '/w==', 'payload_encoding': 'base64', 'payload_bytes': 1,
     'payload_sha256': 'a8100ae6aa1940d0b663bb31cd466142ebbdbd5187131b92d93818987832eb89',
     'payload_truncated': False, 'ts': 1}
    """
    text, encoding = _text(payload, DLQ_MAX_PAYLOAD_BYTES)
    key_text = None if key is None else _text(key, DLQ_MAX_KEY_BYTES)[0]
    return orjson.dumps(
        {
            "error": _clip(error, DLQ_MAX_ERROR_CHARS),
            "stage": stage,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": key_text,
            "payload": text,
            "payload_encoding": encoding,
            "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "payload_truncated": len(payload) > DLQ_MAX_PAYLOAD_BYTES,
            "ts": now_ms,
        }
    )


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The Kafka key of a dead-letter record: the input's key, capped at DLQ_MAX_KEY_BYTES.

    >>> dead_letter_key(b"card-1"), len(dead_letter_key(b"k" * 5000) or b""), dead_letter_key(None)
    (b'card-1', 1024, None)
    """
    return None if key is None else _head(key, DLQ_MAX_KEY_BYTES)


def _head(raw: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of ``raw``, not cutting a UTF-8 character in two."""
    if len(raw) <= limit:
        return raw
    cut = limit
    # a UTF-8 character is at most 4 bytes: step back over at most 3 continuation bytes
    for _ in range(3):
        if raw[cut] & 0xC0 != 0x80:
            break
        cut -= 1
    return raw[:cut]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(raw: bytes, limit: int) -> tuple[str, Literal["utf-8", "base64"]]:
    """At most ``limit`` bytes of ``raw`` as UTF-8 text, or as base64 if they are not."""
    try:
        return _head(raw, limit).decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw[:limit]).decode("ascii"), "base64"
