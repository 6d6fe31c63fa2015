"""Event time and the wall clock, as epoch milliseconds (the unit of every message).

Timestamps arrive as epoch milliseconds or ISO-8601 strings and leave as epoch milliseconds.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any


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
    stream.timestamps.TimestampRangeError: epoch milliseconds must be <= ... got 1e+300
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
