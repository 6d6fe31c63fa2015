"""What every monitor a worker owns can do: :class:`Monitor`.

Two kinds implement it: :class:`stream.monitoring.drift.SubjectMonitor` (drift of one
subject, fed :class:`~stream.messages.SubjectBatch`) and
:class:`stream.monitoring.quality.QualityMonitor` (data-quality rates of one feature, fed
:class:`~stream.messages.QualityBatch`). The hub routes each monitor-topic batch to its
monitor and sets the gauges the monitor reads out; it never needs to know which kind it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from stream.messages import MonitorBatch

Gauge = Literal[
    "drift_statistic",
    "drift_threshold",
    "drift_active",
    "quality_rate",
    "monitor_phase",
    "monitor_late_values",
    "monitor_buffered_values",
    "monitor_watermark_delay",
]
"""The :class:`~stream.service.metrics.Metrics` attribute a reading sets."""


@dataclass(frozen=True)
class Reading:
    """One gauge value a monitor exports: ``metrics.<gauge>.labels(*labels).set(value)``."""

    gauge: Gauge
    labels: tuple[str, ...]
    value: float


@dataclass(frozen=True)
class Reference:
    """A pinned reference: values with their event times."""

    values: Sequence[Any]
    ts: Sequence[int]


class Monitor(Protocol):
    """A monitor of one monitor-topic key (a subject, or ``quality:{feature}``)."""

    def apply(self, batch: MonitorBatch) -> list[dict[str, Any]]:
        """Consume one batch of its kind; return the alerts it raised."""
        ...

    def readings(self) -> list[Reading]:
        """The gauge values to export after a batch."""
        ...

    def repin(self, reference: Reference | None) -> list[dict[str, Any]]:
        """Judge against ``reference`` from now on (``None``: collect a fresh one)."""
        ...
