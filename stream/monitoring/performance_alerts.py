"""The messages of the alerts of :class:`~stream.monitoring.performance.PerformanceMonitor`.

The monitor decides when an alert fires or resolves and what evidence it carries; these
functions only say it in words, from the numbers in that evidence.
"""

from __future__ import annotations

from stream.monitoring.alerts import AlertStatus, fmt
from stream.monitoring.performance_math import TINY
from stream.monitoring.performance_metrics import ERROR_METRICS

ERROR_SUBJECT = "error_rate"
"""The subject of the ``concept_drift`` alerts."""


def performance_message(
    name: str,
    status: AlertStatus,
    ref: float,
    now: float,
    margin: float,
    se: float,
    n: int,
    n_ref: int,
) -> str:
    """The message of a ``performance`` alert on metric ``name``.

    ``ref`` is the reference value over ``n_ref`` labels, ``now`` the value over the last
    ``n`` labels and ``se`` the standard error of the change (relative for error metrics).

    >>> performance_message("accuracy", "firing", 0.9, 0.75, 0.05, 0.02, 500, 1000)
    'accuracy dropped from 0.9 (reference, 1000 labels) to 0.75 over the last 500 labels: \
-0.150 (margin 0.05, SE 0.020)'
    >>> performance_message("mae", "resolved", 2.0, 2.1, 0.1, 0.03, 500, 1000)
    'mae back to 2.1 over the last 500 labels vs reference 2: +5% (margin 10%, SE 3.0%)'
    """
    if name in ERROR_METRICS:
        change = f"{(now - ref) / max(ref, TINY):+.0%} (margin {margin:.0%}, SE {se:.1%})"
    else:
        change = f"{now - ref:+.3f} (margin {margin:.3g}, SE {se:.3f})"
    if status == "firing":
        verb = "rose" if name in ERROR_METRICS else "dropped"
        return (f"{name} {verb} from {fmt(ref)} (reference, {n_ref} labels) to {fmt(now)} over "
                f"the last {n} labels: {change}")  # fmt: skip
    return f"{name} back to {fmt(now)} over the last {n} labels vs reference {fmt(ref)}: {change}"


def concept_message(
    status: AlertStatus,
    regression: bool,
    before: float,
    now: float,
    n: int,
    ref: float,
    n_ref: int,
) -> str:
    """The message of a ``concept_drift`` alert on the error rate (the MAE of a regression).

    Firing: ADWIN saw the rate go from ``before`` to ``now`` over its last ``n`` labels.
    Resolved: the rate is back to ``now`` over the last ``n`` labels. ``ref`` is the
    reference rate over ``n_ref`` labels.

    >>> concept_message("firing", False, 0.2, 0.45, 180, 0.21, 1000)
    'error_rate: ADWIN detected a change in the error rate: 0.2 -> 0.45 over the last 180 \
labels (reference 0.21 over 1000 labels)'
    >>> concept_message("resolved", True, 1.5, 1.1, 250, 1.0, 1000)
    'error_rate: mean absolute error back to 1.1 over the last 250 labels (reference 1); \
concept drift resolved'
    """
    what = "mean absolute error" if regression else "error rate"
    if status == "firing":
        return (
            f"{ERROR_SUBJECT}: ADWIN detected a change in the {what}: {fmt(before)} -> "
            f"{fmt(now)} over the last {n} labels (reference {fmt(ref)} over {n_ref} labels)"
        )
    return (
        f"{ERROR_SUBJECT}: {what} back to {fmt(now)} over the last {n} labels (reference "
        f"{fmt(ref)}); concept drift resolved"
    )
