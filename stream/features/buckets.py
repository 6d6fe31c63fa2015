"""The buckets of one feature window and the statistics of a range of them.

A bucket is ``(index, count, sum, M2, min, max)`` of the values whose event time falls in
it; a window's buckets are a list sorted by index (see :mod:`stream.features.windows` for
what the indexes mean). Values are added with Welford's update, and the ``std`` of several
buckets is merged exactly from their (count, sum, M2) with the pairwise formula of Chan,
Golub and LeVeque (1979), "Updating formulae and a pairwise algorithm for computing sample
variances": ``M2 = sum(M2_i + n_i * (mean_i - mean)^2)``, which stays accurate when the
values are large relative to their spread, unlike a sum-of-squares form
(``tests/stream/test_features.py`` checks it against numpy at an offset of 1e9).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

Aggregates = tuple[float, float, float, float, float, float]
"""``(count, sum, mean, min, max, std)`` of the values in a range of buckets."""

EMPTY: Aggregates = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
"""The aggregates of no values."""


def add_to_bucket(buckets: list[Sequence[Any]], idx: int, v: float) -> None:
    """Add the value ``v`` to bucket ``idx`` of the non-empty, sorted list ``buckets``.

    Buckets are replaced, never modified in place, so a copy of the list is independent.

    >>> buckets = [(5, 1, 2.0, 0.0, 2.0, 2.0)]
    >>> add_to_bucket(buckets, 5, 4.0)
    >>> add_to_bucket(buckets, 3, 1.0)
    >>> buckets
    [(3, 1, 1.0, 0.0, 1.0, 1.0), (5, 2, 6.0, 2.0, 2.0, 4.0)]
    """
    pos = len(buckets) - 1
    if buckets[pos][0] < idx:
        buckets.append((idx, 1, v, 0.0, v, v))
        return
    if buckets[pos][0] > idx:  # out of order: the lists are short and sorted
        pos = bisect_left(buckets, idx, key=_index)
        if buckets[pos][0] != idx:
            buckets.insert(pos, (idx, 1, v, 0.0, v, v))
            return
    # Welford (1962), with the mean kept as sum / count
    _, n, s, m2, lowest, highest = buckets[pos]
    delta = v - s / n
    s += v
    m2 += delta * (v - s / (n + 1))
    buckets[pos] = (idx, n + 1, s, m2, v if v < lowest else lowest, v if v > highest else highest)


def _index(bucket: Sequence[Any]) -> int:
    return int(bucket[0])


def aggregate_buckets(buckets: list[Sequence[Any]] | None, lo: int, hi: int) -> Aggregates:
    """The aggregates of the values in the buckets with index in ``(lo, hi]``.

    ``std`` is the population standard deviation, 0.0 below two values.

    >>> buckets = [(3, 1, 1.0, 0.0, 1.0, 1.0), (5, 2, 6.0, 2.0, 2.0, 4.0)]
    >>> aggregate_buckets(buckets, 2, 5)
    (3.0, 7.0, 2.3333333333333335, 1.0, 4.0, 1.247219128924647)
    >>> aggregate_buckets(buckets, 3, 4) == EMPTY
    True
    """
    if not buckets:
        return EMPTY
    if not (buckets[0][0] > lo and buckets[-1][0] <= hi):
        buckets = [b for b in buckets if lo < b[0] <= hi]
        if not buckets:
            return EMPTY
    _, n, s, m2, lowest, highest = buckets[0]
    if len(buckets) > 1:
        for _, bn, bs, _, blow, bhigh in buckets[1:]:
            n += bn
            s += bs
            if blow < lowest:
                lowest = blow
            if bhigh > highest:
                highest = bhigh
        mean = s / n
        # Chan, Golub and LeVeque (1979): exact merge of the buckets' M2 around the common mean
        m2 = 0.0
        for _, bn, bs, bm2, _, _ in buckets:
            delta = bs / bn - mean
            m2 += bm2 + bn * delta * delta
    std = math.sqrt(m2 / n) if n > 1 and m2 > 0.0 else 0.0
    return (float(n), s, s / n, lowest, highest, std)
