"""What an alert shows of a window and its reference: quantiles, or category shares."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from stream.monitoring.alerts import fmt

QUANTILES = (5, 25, 50, 75, 95)
MAX_SHARES = 10  # categories listed in the evidence: enough to see the change, bounded size


def numeric_summary(values: Sequence[float]) -> dict[str, float]:
    """The quantiles p5, p25, p50, p75, p95 and the mean, for alert evidence.

    >>> numeric_summary([float(v) for v in range(101)])
    {'p5': 5.0, 'p25': 25.0, 'p50': 50.0, 'p75': 75.0, 'p95': 95.0, 'mean': 50.0}
    """
    if not len(values):
        return {}
    array = np.asarray(values, dtype=np.float64)
    qs = np.percentile(array, QUANTILES)
    out = {f"p{q}": round(float(v), 6) for q, v in zip(QUANTILES, qs, strict=True)}
    out["mean"] = round(float(array.mean()), 6)
    return out


def category_shares(values: Sequence[str], top: int = MAX_SHARES) -> dict[str, float]:
    """Share of each of the ``top`` most frequent categories (the rest as ``"(other)"``).

    >>> category_shares(["a", "a", "b", "c"], top=2)
    {'a': 0.5, 'b': 0.25, '(other)': 0.25}
    """
    counts = Counter(values)
    total = sum(counts.values())
    if not total:
        return {}
    shares = {str(c): round(k / total, 6) for c, k in counts.most_common(top)}
    rest = total - sum(k for _, k in counts.most_common(top))
    if rest:
        shares["(other)"] = round(rest / total, 6)
    return shares


def summary(kind: Literal["numeric", "categorical"], values: Sequence[Any]) -> dict[str, Any]:
    """What a drift alert shows of ``values``: quantiles (numeric) or category shares.

    >>> summary("categorical", ["a", "a", "b", "b"])
    {'shares': {'a': 0.5, 'b': 0.5}}
    """
    if kind == "numeric":
        return numeric_summary(values)
    return {"shares": category_shares(values)}


def contrast(window: dict[str, Any], reference: dict[str, Any]) -> str:
    """The window against the reference in a few words: the means, or the category whose
    share moved most.

    >>> contrast({"shares": {"a": 0.9, "b": 0.1}}, {"shares": {"a": 0.5, "b": 0.4, "c": 0.1}})
    "'a' 90% vs 50% of values"
    """
    if "shares" not in window:
        return f"mean {fmt(window.get('mean'))} vs {fmt(reference.get('mean'))}"
    now, ref = window["shares"], reference["shares"]
    if not now:
        return "no values"
    top = max(set(now) | set(ref), key=lambda c: abs(now.get(c, 0.0) - ref.get(c, 0.0)))
    return f"{top!r} {now.get(top, 0.0):.0%} vs {ref.get(top, 0.0):.0%} of values"


def drift_message(
    head: str,
    status: str,
    statistic: float | None,
    threshold: float,
    n: int,
    reference_n: int,
    contrasted: str,
) -> str:
    """One line for a drift alert, e.g. ``amount: KS 0.21 > 0.08 over the last 1000 values``.

    >>> drift_message("amount: KS", "firing", 0.21, 0.08, 1000, 2000, "mean 3 vs 2")
    'amount: KS 0.21 > 0.08 over the last 1000 values (reference 2000 values); mean 3 vs 2'
    """
    op = ">" if status == "firing" else "<="
    line = (
        f"{head} {fmt(statistic)} {op} {fmt(threshold)} over the last {n} values "
        f"(reference {reference_n} values); {contrasted}"
    )
    return line if status == "firing" else f"{line}; drift resolved"
