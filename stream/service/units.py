"""Durations and instants as the configuration writes them: ``"5m"``, ``"2000-01-01T00:00:00Z"``.

A setting keeps the text it was given (so the effective configuration logs as written) and is
validated when loaded; the settings models convert it with :func:`parse_duration` or
:func:`parse_instant` where it is used.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from stream.timestamps import to_epoch_ms

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Parse ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"`` or ``"7d"`` into seconds.

    >>> parse_duration("90s"), parse_duration("1h"), parse_duration("250ms")
    (90.0, 3600.0, 0.25)
    """
    for unit in sorted(_DURATION_UNITS, key=len, reverse=True):
        number = text.strip().removesuffix(unit)
        if number != text.strip():
            try:
                value = float(number)
            except ValueError:
                break
            if value > 0:
                return value * _DURATION_UNITS[unit]
            break
    raise ValueError(f"{text!r} is not a positive duration like '500ms', '30s', '5m', '1h' or '7d'")


Duration = Annotated[str, AfterValidator(lambda v: (parse_duration(v), v)[1])]
"""A setting that is a duration: its text, checked by :func:`parse_duration`."""


def parse_wait(text: str) -> float:
    """A duration that may also be zero (``"0s"``, ``"0ms"``, ``"0"``: no wait), in seconds.

    >>> parse_wait("0s"), parse_wait("0"), parse_wait("20ms")
    (0.0, 0.0, 0.02)
    """
    stripped = text.strip()
    for unit in (*sorted(_DURATION_UNITS, key=len, reverse=True), ""):
        number = stripped.removesuffix(unit)
        if number != stripped or not unit:
            try:
                if float(number) == 0:
                    return 0.0
            except ValueError:
                pass
            break
    try:
        return parse_duration(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration like '0s', '20ms' or '1s'") from None


Wait = Annotated[str, AfterValidator(lambda v: (parse_wait(v), v)[1])]
"""A setting that is a wait, which may be zero: its text, checked by :func:`parse_wait`."""


def parse_instant(text: str) -> int:
    """Parse epoch milliseconds (digits) or an ISO-8601 time into epoch milliseconds.

    >>> parse_instant("946684800000"), parse_instant("2000-01-01T00:00:00Z")
    (946684800000, 946684800000)
    """
    stripped = text.strip()
    # digits alone are epoch ms; fromisoformat would read some of them as a compact date
    is_number = stripped.lstrip("+-").isdigit()
    return to_epoch_ms(int(stripped) if is_number else stripped)


def _instant_text(value: object) -> object:
    # a TOML integer is epoch ms as well; keep the setting a string either way
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Instant = Annotated[
    str, BeforeValidator(_instant_text), AfterValidator(lambda v: (parse_instant(v), v)[1])
]
"""A setting that is an instant: its text (a TOML integer too), checked by
:func:`parse_instant`."""
