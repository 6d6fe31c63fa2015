"""Data-quality rates per feature and of the dead-letter queue: :class:`QualityMonitor`.

Pure decision logic, no I/O.  The scoring side counts, per batch and feature, the accepted
events and their problems (:func:`quality_counts`: missing/imputed, out of range, unseen
category) and the rejected messages (pseudo-feature ``"dlq"``, kind ``rejected``, out of
all messages consumed).  The monitor keeps the last ``quality_window`` events per feature
and raises a ``data_quality`` alert when a rate exceeds its configured maximum.

Window
    The counts arrive per batch, without the order of the problems inside a batch, so the
    window is made of whole batches: the newest batches holding at least ``quality_window``
    events (at most one batch more).  Rates are exact integer ratios over those events.
Alerts (subject = feature, detector = ``"{kind}_rate"``, e.g. ``"missing_rate"``)
    Fire when the rate exceeds its maximum and the window holds at least ``quality_window / 2``
    events (a few early events are no evidence); resolve when the rate falls to half the
    maximum or below (hysteresis).  One ``firing`` and one ``resolved`` per episode.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.messages import MonitorBatch, QualityBatch
from stream.monitoring.alerts import EMPTY_SPAN, AlertStatus, Span, fmt, make_alert
from stream.monitoring.base import Reading, Reference
from stream.records import ScoredEvent
from stream.service.config import MonitoringSettings

DLQ = "dlq"
REJECTED = "rejected"
_LIMITS = {
    "missing": "max_missing_rate",
    "out_of_range": "max_out_of_range_rate",
    "unseen_category": "max_unseen_rate",
    REJECTED: "max_dlq_rate",
}


@dataclass
class _Ring:
    """The newest batches of one feature holding at least ``quality_window`` events."""

    batches: deque[tuple[int, dict[str, int], int, int]] = field(default_factory=deque)
    n: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    kinds: set[str] = field(default_factory=set)  # every kind ever reported

    def add(self, n: int, counts: Mapping[str, int], ts: tuple[int, int], size: int) -> None:
        self.batches.append((n, dict(counts), ts[0], ts[1]))
        self.n += n
        self.counts.update(counts)
        self.kinds.update(counts)
        while self.batches and self.n - self.batches[0][0] >= size:
            old_n, old_counts, _, _ = self.batches.popleft()
            self.n -= old_n
            self.counts.subtract(old_counts)

    def rate(self, kind: str) -> float:
        return self.counts[kind] / self.n if self.n else 0.0

    def span(self) -> Span:
        if not self.batches:
            return EMPTY_SPAN
        return Span(self.n, min(b[2] for b in self.batches), max(b[3] for b in self.batches))


class QualityMonitor:
    """Rolling data-quality rates and their alerts (see the module docstring).

    Parameters
    ----------
    settings
        ``quality_window`` and the maximum rates.
    model
        Model name for the alerts.

    Examples
    --------
    >>> mon = QualityMonitor(MonitoringSettings(quality_window=100), "fraud")
    >>> mon.update("amount", 60, {"missing": 3}, (0, 59))
    []
    >>> [(a["status"], a["detector"], a["statistic"])
    ...  for a in mon.update("amount", 40, {"missing": 7}, (60, 99))]
    [('firing', 'missing_rate', 0.1)]
    >>> mon.rates()
    {('amount', 'missing'): 0.1}
    """

    def __init__(self, settings: MonitoringSettings, model: str) -> None:
        self.settings = settings
        self.model = model
        self._reset()

    def _reset(self) -> None:
        self._rings: dict[str, _Ring] = {}
        self._open: dict[tuple[str, str], int] = {}  # (feature, kind) -> episode start ts

    def update(
        self, feature: str, n: int, counts: Mapping[str, int], ts_range: tuple[int, int]
    ) -> list[dict[str, Any]]:
        """Add ``n`` events of ``feature`` with ``counts`` problems per kind; return alerts."""
        if n <= 0:
            return []
        ring = self._rings.setdefault(feature, _Ring())
        ring.add(n, counts, (int(ts_range[0]), int(ts_range[1])), self.settings.quality_window)
        alerts = []
        for kind in sorted(ring.kinds):
            alert = self._judge(feature, kind, ring, int(ts_range[1]))
            if alert is not None:
                alerts.append(alert)
        return alerts

    def apply(self, batch: MonitorBatch) -> list[dict[str, Any]]:
        """:class:`~stream.monitoring.base.Monitor`: consume a :class:`QualityBatch`."""
        if not isinstance(batch, QualityBatch):
            raise TypeError(f"quality monitor got a {type(batch).__name__}")
        return self.update(batch.feature, batch.n, batch.counts, batch.ts)

    def readings(self) -> list[Reading]:
        """The rolling rate of every (feature, kind) seen."""
        return [Reading("quality_rate", key, rate) for key, rate in self.rates().items()]

    def repin(self, reference: Reference | None) -> list[dict[str, Any]]:
        """Rates have no reference: nothing to do."""
        return []

    def rates(self) -> dict[tuple[str, str], float]:
        """(feature, kind) -> rate over the feature's window, for every kind ever reported."""
        return {
            (feature, kind): ring.rate(kind)
            for feature, ring in self._rings.items()
            for kind in sorted(ring.kinds)
        }

    def _limit(self, kind: str) -> float | None:
        name = _LIMITS.get(kind)
        return None if name is None else float(getattr(self.settings, name))

    def _judge(self, feature: str, kind: str, ring: _Ring, ts: int) -> dict[str, Any] | None:
        limit = self._limit(kind)
        if limit is None:
            return None
        rate, key = ring.rate(kind), (feature, kind)
        if key not in self._open:
            if ring.n * 2 >= self.settings.quality_window and rate > limit:
                self._open[key] = ts
                return self._alert(feature, kind, "firing", ring, ts, limit)
        elif rate <= limit / 2:
            return self._alert(feature, kind, "resolved", ring, ts, limit)
        return None

    def _alert(
        self, feature: str, kind: str, status: AlertStatus, ring: _Ring, ts: int, limit: float
    ) -> dict[str, Any]:
        key = (feature, kind)
        start = self._open[key] if status == "firing" else self._open.pop(key)
        rate, count = ring.rate(kind), ring.counts[kind]
        what = "messages rejected to the DLQ" if kind == REJECTED else f"{kind} values"
        verb = ">" if status == "firing" else "<="
        bound = limit if status == "firing" else limit / 2
        message = (
            f"{feature}: {rate:.1%} {what} ({count} of the last {ring.n}) {verb} {fmt(bound)}"
            + ("" if status == "firing" else "; resolved")
        )
        return make_alert(
            "data_quality",
            status,
            feature,
            f"{kind}_rate" if kind != REJECTED else "dlq_rate",
            statistic=rate,
            p_value=None,
            threshold=limit,
            reference=EMPTY_SPAN,
            window=ring.span(),
            model=self.model,
            model_version=None,
            ts=ts,
            message=message,
            evidence={"count": count, "n": ring.n, "kind": kind, "max_rate": limit},
            episode_start_ts=start,
        )


def quality_counts(scored: Sequence[ScoredEvent]) -> dict[str, tuple[int, dict[str, int]]]:
    """Per feature: (events in the batch, problems per kind) from ``ValidEvent.quality``.

    Every feature of the batch is listed, with ``missing`` always counted (0 included) so
    that a rate falls again when the problems stop; other kinds appear when they occur.

    Examples
    --------
    >>> from stream.records import QualityIssue, ScoredEvent, ValidEvent
    >>> def scored(values, issues):
    ...     ev = ValidEvent("e", "c", 0, values, None, tuple(QualityIssue(f, k) for f, k in issues),
    ...                     frozenset(f for f, k in issues if k == "missing"))
    ...     return ScoredEvent(ev, values, 0, None, 0.1, 1)
    >>> quality_counts([scored({"amount": 5.0, "kind": "x"}, [("kind", "unseen_category")]),
    ...                 scored({"kind": "a"}, [("amount", "missing")])])
    {'amount': (2, {'missing': 1}), 'kind': (2, {'missing': 0, 'unseen_category': 1})}
    """
    features: dict[str, dict[str, int]] = {}
    for s in scored:
        for name in s.event.values:
            features.setdefault(name, {"missing": 0})
        for issue in s.event.quality:
            counts = features.setdefault(issue.feature, {"missing": 0})
            counts[issue.kind] = counts.get(issue.kind, 0) + 1
    n = len(scored)
    return {name: (n, counts) for name, counts in sorted(features.items())}
