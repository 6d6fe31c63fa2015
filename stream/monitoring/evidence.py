"""What an alert shows of a window and its reference: quantiles, or category shares."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

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
