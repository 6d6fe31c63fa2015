"""Alerts as docs/contracts.md fixes them: one JSON object per episode start (``firing``) and end.

Pure construction, no I/O: the monitors (:mod:`stream.monitoring.drift`,
:mod:`stream.monitoring.performance`, :mod:`stream.monitoring.quality`) decide *when*; this
module decides *what* an alert looks like.

Identity
--------
``alert_id`` is ``"{kind}:{subject}:{detector}:{episode_start_ts}"`` with the event time at
which the episode started.  The ``firing`` and the ``resolved`` alert of one episode share it,
and replaying the same values after a restart yields the same id, so a consumer can
de-duplicate alerts on ``(alert_id, status)`` even though publishing is at-least-once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from stream.messages import Alert, AlertKind, AlertStatus, Window


@dataclass(frozen=True)
class Span:
    """How many values a reference or window holds and the event-time range they cover."""

    n: int
    from_ts: int | None
    to_ts: int | None

    def as_dict(self) -> dict[str, int | None]:
        return {"n": self.n, "from_ts": self.from_ts, "to_ts": self.to_ts}

    def window(self) -> Window:
        """The span as the ``reference``/``window`` field of an Alert message."""
        return Window(n=int(self.n), from_ts=self.from_ts, to_ts=self.to_ts)


EMPTY_SPAN = Span(0, None, None)


def make_alert(
    kind: AlertKind,
    status: AlertStatus,
    subject: str,
    detector: str,
    *,
    statistic: float | None,
    p_value: float | None,
    threshold: float | None,
    reference: Span,
    window: Span,
    model: str,
    model_version: int | None,
    ts: int,
    message: str,
    evidence: dict[str, Any],
    episode_start_ts: int | None = None,
) -> dict[str, Any]:
    """Build the Alert JSON dict of docs/contracts.md.

    Parameters
    ----------
    kind, status, subject, detector
        What the alert is about; ``detector`` names the method (``"ks"``, ``"adwin"``...).
    statistic, p_value, threshold
        The decision's numbers; non-finite values become ``None`` (JSON has no NaN).
    reference, window
        Sizes and event-time ranges of the reference and of the window judged.
    model, model_version
        The model whose inputs or outputs are monitored.
    ts
        Event time of the decision, epoch milliseconds.
    message
        One human-readable line.
    evidence
        Extra JSON-serialisable facts (quantiles, category shares...).
    episode_start_ts
        Event time at which the episode started; defaults to ``ts`` (right for ``firing``).
        A ``resolved`` alert must pass the start of the episode it closes.

    Examples
    --------
    >>> a = make_alert("data_drift", "firing", "amount", "ks", statistic=0.21, p_value=1e-9,
    ...                threshold=0.08, reference=Span(2000, 1, 2), window=Span(1000, 3, 4),
    ...                model="fraud", model_version=7, ts=4, message="amount: KS 0.21 > 0.08",
    ...                evidence={})
    >>> a["alert_id"], a["window"], alert_key(a)
    ('data_drift:amount:ks:4', {'n': 1000, 'from_ts': 3, 'to_ts': 4}, b'data_drift:amount')
    """
    start = ts if episode_start_ts is None else episode_start_ts
    alert = Alert(
        alert_id=f"{kind}:{subject}:{detector}:{start}",
        kind=kind,
        status=status,
        subject=subject,
        detector=detector,
        statistic=finite_or_none(statistic),
        p_value=finite_or_none(p_value),
        threshold=finite_or_none(threshold),
        reference=reference.window(),
        window=window.window(),
        model=model,
        model_version=model_version,
        ts=int(ts),
        message=message,
        evidence=evidence,
    )
    return alert.model_dump()


def alert_key(alert: dict[str, Any]) -> bytes:
    """The Kafka key of an alert: its kind and subject (docs/contracts.md topic table).

    >>> alert_key({"kind": "data_quality", "subject": "amount"})
    b'data_quality:amount'
    """
    return f"{alert['kind']}:{alert['subject']}".encode()


def finite_or_none(value: float | None) -> float | None:
    """``float(value)``, or ``None`` for ``None``, NaN and infinities.

    >>> finite_or_none(0.5), finite_or_none(float("nan")), finite_or_none(None)
    (0.5, None, None)
    """
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def fmt(value: float | None) -> str:
    """A number for a message: 3 significant digits, ``-`` for none.

    >>> fmt(0.214159), fmt(61.234), fmt(12345.6), fmt(None)
    ('0.214', '61.2', '1.23e+04', '-')
    """
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.3g}"


def model_health_alert(
    status: AlertStatus,
    model: str,
    detector: str,
    *,
    version: int | None,
    message: str,
    ts: int,
    episode_start_ts: int | None = None,
) -> dict[str, Any]:
    """A ``model_health`` alert: a version or checkpoint refused, or a model gone non-finite.

    ``subject`` is the model name; ``detector`` says what found it (``signature``,
    ``checkpoint``, ``probe``); ``ts`` is the wall clock, as no event time applies.

    >>> a = model_health_alert("firing", "fraud", "signature", version=7, ts=5,
    ...                        message="version 7 failed its signature check")
    >>> a["alert_id"], a["kind"], a["model_version"]
    ('model_health:fraud:signature:5', 'model_health', 7)
    """
    return make_alert(
        "model_health",
        status,
        model,
        detector,
        statistic=None,
        p_value=None,
        threshold=None,
        reference=EMPTY_SPAN,
        window=EMPTY_SPAN,
        model=model,
        model_version=version,
        ts=ts,
        message=message,
        evidence={},
        episode_start_ts=episode_start_ts,
    )
